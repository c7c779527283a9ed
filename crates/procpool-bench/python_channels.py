"""multiprocessing.Queue and multiprocessing.Pipe between two processes: the Python rows of
procpool-bench's channels section. Prints one JSON object on stdout. Standard library only.

    python3 python_channels.py [--quick]

Each figure: a producer process sends N messages, the parent receives them; the clock runs
from the first message received to the last (process start-up is not counted). Small
messages are ints; large ones are 1 MiB bytes objects. The best of REPS runs is kept.
"""

import json
import multiprocessing as mp
import platform
import sys
import time

QUICK = "--quick" in sys.argv[1:]
SMALL_N = 50_000 if QUICK else 200_000
LARGE_N = 50 if QUICK else 200
REPS = 1 if QUICK else 3
MIB = 1 << 20


def produce_queue(q, n, large):
    item = bytes(MIB) if large else None
    for i in range(n):
        q.put(item if large else i)


def produce_pipe(conn, n, large):
    item = bytes(MIB) if large else None
    for i in range(n):
        conn.send(item if large else i)
    conn.close()


def timed_queue(n, large):
    q = mp.Queue()
    p = mp.Process(target=produce_queue, args=(q, n, large))
    p.start()
    q.get()
    t = time.perf_counter()
    for _ in range(n - 1):
        q.get()
    d = time.perf_counter() - t
    p.join()
    return d


def timed_pipe(n, large):
    rx, tx = mp.Pipe(duplex=False)
    p = mp.Process(target=produce_pipe, args=(tx, n, large))
    p.start()
    tx.close()
    rx.recv()
    t = time.perf_counter()
    for _ in range(n - 1):
        rx.recv()
    d = time.perf_counter() - t
    p.join()
    return d


def best(f, n, large):
    return min(f(n, large) for _ in range(REPS))


def main():
    out = {
        "version": platform.python_version(),
        "start_method": mp.get_start_method(),
    }
    for name, f in (("queue", timed_queue), ("pipe", timed_pipe)):
        small = best(f, SMALL_N, False)
        large = best(f, LARGE_N, True)
        out[name] = {
            "small_per_s": (SMALL_N - 1) / small,
            "large_mb_per_s": (LARGE_N - 1) * MIB / 1e6 / large,
        }
        print(f"python {name}: {out[name]}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
