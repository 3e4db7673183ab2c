"""The network: containerd hosts.toml, the distribution API client, pull credentials (pod secrets,
docker config files, credential providers) and per-pod authorization of cached private content.
It knows references and digests, never the store, the tree or a mount."""
