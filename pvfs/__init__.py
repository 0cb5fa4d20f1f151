"""pvfs: read-only recovery of Proxmox VE storage stacks from drive images."""

import os

__version__ = "0.1.0"

# numpy's OpenBLAS starts a thread per core and their buffers when numpy is imported:
# 50-60 ms of a start-up on this 2-core machine (``import numpy`` 0.13-0.16 s against
# 0.08-0.10 s with one thread), for linear algebra pvfs never does.  A value the user set
# is kept; worker processes (pvfs/parallel.py) inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
