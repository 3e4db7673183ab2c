"""The data planes that present a committed digest's tree as a directory: bind (an extracted tree),
fuse (one FUSE server per node, in its own process) and the choice between them. Views read the
store and make their own mounts; they never reach the network."""
