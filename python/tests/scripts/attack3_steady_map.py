"""A long ``Pool.map`` whose results come back steadily (10 ms tasks, one per job), for
``test_attack3_waits``: prints ``READY`` once the pool runs, then maps until the test
sends SIGINT to its process group."""

import time

import procpool


def nap(x):
    time.sleep(0.01)
    return x


if __name__ == "__main__":
    pool = procpool.Pool(2)
    pool.map(nap, range(4))
    print("READY", flush=True)
    pool.map(nap, range(100_000), chunksize=1)
    raise AssertionError("not interrupted")
