import sys

from .cli import main

if __name__ == "__main__":  # not when a worker process (pvfs/parallel.py) imports it
    sys.exit(main())
