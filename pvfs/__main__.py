from .cli import run

if __name__ == "__main__":  # not when a worker process (pvfs/parallel.py) imports it
    run()
