"""Starts a pool, prints its worker pids as `READY <json list>`, then maps long tasks.

    python long_map.py

The test interrupts or kills this process while the map runs; the map never ends by itself.
LONG_MAP_POOL=multiprocessing runs it on the standard library's pool instead (to see the
tests fail where the standard library fails).
"""

import json
import os
import sys
import time

if os.environ.get("LONG_MAP_POOL") == "multiprocessing":
    from multiprocessing import Pool
else:
    from procpool import Pool


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


if __name__ == "__main__":
    with Pool(2) as pool:
        pids = set()
        for _ in range(20):
            pids.update(pool.map(pid_after, [0.2] * 4, chunksize=1))
            if len(pids) >= 2:
                break
        print("READY", json.dumps(sorted(pids)), flush=True)
        pool.map(time.sleep, [120] * 8, chunksize=1)
    print("the map ended by itself", file=sys.stderr)
    sys.exit(9)
