"""procpool's locks and shared values against multiprocessing's, on this machine.

    python crates/procpool-bench/python_sync.py [--n 1000000] [--incs 200000] [--runs 5]

Prints, for each figure, the median of ``--runs`` runs:
- uncontended ``Lock``/``RLock`` acquire+release pairs per second (one process);
- ``Value`` incremented under its own lock (``with v.get_lock(): v.value += 1``) by 2
  processes at once, ``--incs`` each: increments per second (fork processes for both
  libraries, and procpool's through a ``Pool`` of 2 as a third line).
"""

import argparse
import multiprocessing as mp
import statistics
import time

import procpool


def pairs_per_second(lock, n):
    acquire, release = lock.acquire, lock.release
    t = time.perf_counter()
    for _ in range(n):
        acquire()
        release()
    return n / (time.perf_counter() - t)


def with_per_second(lock, n):
    t = time.perf_counter()
    for _ in range(n):
        with lock:
            pass
    return n / (time.perf_counter() - t)


def bump(v, n):
    lock = v.get_lock()
    for _ in range(n):
        with lock:
            v.value += 1


def bump_star(args):
    bump(*args)


def contended(make_value, incs, ctx):
    v = make_value("q", 0)
    ps = [ctx.Process(target=bump, args=(v, incs)) for _ in range(2)]
    t = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    dt = time.perf_counter() - t
    assert v.value == 2 * incs, v.value
    return 2 * incs / dt


def contended_pool(pool, incs):
    v = procpool.Value("q", 0)
    t = time.perf_counter()
    pool.map(bump_star, [(v, incs)] * 2, chunksize=1)
    dt = time.perf_counter() - t
    assert v.value == 2 * incs, v.value
    return 2 * incs / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="acquire/release pairs per run")
    ap.add_argument("--incs", type=int, default=200_000, help="increments per process per run")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    fork = mp.get_context("fork")

    def med(f):
        return statistics.median(f() for _ in range(a.runs))

    rows = []
    for name, pp_lock, mp_lock in [
        ("Lock acquire+release", procpool.Lock, fork.Lock),
        ("RLock acquire+release", procpool.RLock, fork.RLock),
    ]:
        x, y = pp_lock(), mp_lock()
        rows.append((name, med(lambda: pairs_per_second(x, a.n)), med(lambda: pairs_per_second(y, a.n))))
        rows.append(
            (name.split()[0] + " with-block", med(lambda: with_per_second(x, a.n)), med(lambda: with_per_second(y, a.n)))
        )
    rows.append(
        (
            "Value += 1 under its lock, 2 processes",
            med(lambda: contended(procpool.Value, a.incs, fork)),
            med(lambda: contended(fork.Value, a.incs, fork)),
        )
    )
    with procpool.Pool(2) as pool:
        pool.map(abs, [1, 2])
        via_pool = med(lambda: contended_pool(pool, a.incs))
    print(f"{'figure':42} {'procpool /s':>14} {'multiprocessing /s':>19} {'ratio':>6}")
    for name, x, y in rows:
        print(f"{name:42} {x:14,.0f} {y:19,.0f} {x / y:6.2f}")
    print(f"{'Value += 1, 2 procpool Pool workers':42} {via_pool:14,.0f}")


if __name__ == "__main__":
    main()
