"""The MPI benchmark's workloads on mpi4py.futures, for comparison with procpool's MPI pools.

Run by `mpi_bench` as `mpirun -n N python -m mpi4py.futures mpi4py_bench.py QUICK`:
rank 0 runs this script, the other ranks are mpi4py's workers. Prints one line per figure:
`RESULT <name> <value>`, as the Rust side does.
"""

import math
import statistics
import sys
import time

from mpi4py.futures import MPIPoolExecutor


def compute(n):
    return sum(math.sqrt(i) for i in range(1, n + 1))


def double(x):
    return x * 2


def trivial(x):
    return x + 1


def calibrate(per_task):
    """The n for which compute(n) takes about per_task seconds in this interpreter."""
    n = 1000
    while True:
        t = time.perf_counter()
        compute(n)
        d = time.perf_counter() - t
        if d >= 0.005:
            return max(1, int(n * per_task / d))
        n *= 4


def main():
    quick = sys.argv[1] == "1"
    seed_n = calibrate(0.010)
    items = 10_000
    with MPIPoolExecutor() as ex:
        # Warm up: every worker answered once.
        list(ex.map(trivial, range(64)))
        tasks = 32
        t = time.perf_counter()
        for _ in range(tasks):
            compute(seed_n)
        print(f"RESULT seed_sequential_s {time.perf_counter() - t}")
        t = time.perf_counter()
        list(ex.map(compute, [seed_n] * tasks))
        print(f"RESULT seed_wall_s {time.perf_counter() - t}")
        for chunk in (1, 100, 1000):
            t = time.perf_counter()
            out = list(ex.map(double, range(items), chunksize=chunk))
            d = time.perf_counter() - t
            assert out[-1] == 2 * (items - 1)
            print(f"RESULT double_c{chunk}_items_s {items / d}")
        t = time.perf_counter()
        list(ex.map(double, range(items), chunksize=1000, unordered=True))
        print(f"RESULT double_c1000u_items_s {items / (time.perf_counter() - t)}")
        lat = []
        for _ in range(50 if quick else 300):
            t = time.perf_counter()
            ex.submit(trivial, 1).result()
            lat.append(time.perf_counter() - t)
        print(f"RESULT apply_latency_us {statistics.median(lat) * 1e6}")


if __name__ == "__main__":
    main()
