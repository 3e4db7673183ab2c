"""The gRPC face: the CSI Identity and Node services, the server that hosts them, and the
translation of a request into a volume spec. It drives the steps below it and owns none of their
work: it never parses a manifest, reads a tar or makes a mount syscall itself."""
