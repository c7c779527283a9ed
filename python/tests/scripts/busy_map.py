"""Maps short tasks whose results take the parent time to unpickle, forever; prints
`READY` once the first map is done.

    python busy_map.py

The test sends SIGINT to this process's group (as a terminal's Ctrl-C does) while the
parent is most likely unpickling a result: the map must raise KeyboardInterrupt at once.
BUSY_MAP_POOL=multiprocessing runs it on the standard library's pool instead.
"""

import os
import sys

if os.environ.get("BUSY_MAP_POOL") == "multiprocessing":
    from multiprocessing import Pool
else:
    from procpool import Pool


def rows(i):
    # ~20k small objects: cheap to make, slow (for its size) to unpickle.
    return [(i, j, str(j)) for j in range(20_000)]


if __name__ == "__main__":
    with Pool(2) as pool:
        pool.map(rows, range(4))
        print("READY", flush=True)
        while True:
            pool.map(rows, range(64), chunksize=1)
    print("the map ended by itself", file=sys.stderr)
    sys.exit(9)
