"""Signature verification: decides, from the node's policy and the signatures the registry holds
for a resolved digest, whether that digest may be mounted. It only reads (the registry, the policy
and its keys and trust roots); it never writes to the content store and never mounts anything.
"""
