"""The kernel's mounts and our records of them: the mount table and mount syscalls, the publication
records (what is mounted where, for which pod) and reconciling the two at start and after a view
dies. It knows directories and digests, never how a view or the store is built."""
