"""The FUSE daemon: serves a :class:`pvfs.nodes.Dir` tree read-only with pyfuse3 + trio."""
