"""The seed program in Python: sums of square roots on a procpool.Pool.

    python examples/compute.py                      # 8 tasks of n = 10,000,000 on every core
    python examples/compute.py --tasks 4 --n 1000000 --workers 2 --compare

With ``--compare`` it also runs the tasks sequentially and prints the speedup.
"""

import argparse
import time

import procpool


def compute(n):
    return sum(i**0.5 for i in range(1, n + 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="number of tasks (default 8)")
    parser.add_argument("--n", type=int, default=10_000_000, help="n of each task")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: one per core)"
    )
    parser.add_argument(
        "--compare", action="store_true", help="also run sequentially and print the speedup"
    )
    args = parser.parse_args()
    if args.tasks < 0 or args.n < 0:
        parser.error("--tasks and --n must be 0 or more")
    inputs = [args.n] * args.tasks

    start = time.perf_counter()
    with procpool.Pool(args.workers) as pool:  # one worker per core by default
        sums = pool.map(compute, inputs)
        workers = pool._processes
    t_pool = time.perf_counter() - start
    print(sums)

    if args.compare:
        start = time.perf_counter()
        sequential = [compute(n) for n in inputs]
        t_seq = time.perf_counter() - start
        assert sequential == sums, "the pool's results differ from the sequential ones"
        print(
            f"sequential {t_seq:.3f} s, pool of {workers} {t_pool:.3f} s, "
            f"speedup {t_seq / t_pool:.2f}"
        )


if __name__ == "__main__":
    main()
