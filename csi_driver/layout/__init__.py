"""Manifest + layers → tree: manifest parsing and platform choice, the placement rules, the tar
header reader and the tree every view presents. Pure computation over bytes already in the store:
layout never touches the network and never writes a file."""
