"""Start-up and throughput of ``procpool._core`` against ``multiprocessing.Pool(2)``, in
the same run. Build the extension with ``maturin develop --release`` first.

    .venv/bin/python crates/procpool-bench/python_core.py
"""

import multiprocessing as mp
import os
import signal
import time

from procpool import _core


def double(x):
    return x * 2


def ms(t):
    return f"{t * 1000:.1f} ms"


def median(xs):
    return sorted(xs)[len(xs) // 2]


def main():
    t = time.perf_counter()
    e = _core.Engine(2)
    print("first pool of the process (template start included):", ms(time.perf_counter() - t))
    e.terminate()
    later = []
    for _ in range(5):
        t = time.perf_counter()
        e = _core.Engine(2)
        later.append(time.perf_counter() - t)
        e.terminate()
    print("a later pool (median of 5):", ms(median(later)))
    e = _core.Engine(2)
    list(e.run(double, range(10)))
    repl = []
    for _ in range(5):
        before = set(e.pids())
        victim = min(before)
        t = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        while True:
            now = set(e.pids())
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.0002)
        list(e.run(double, [1, 2], chunksize=1))
        repl.append(time.perf_counter() - t)
    print("killed worker replaced and serving (median of 5):", ms(median(repl)))
    n, m = 200_000, 20_000
    for _ in range(2):
        t = time.perf_counter()
        r = [v for _, _, v in e.run(double, range(n))]
        d = time.perf_counter() - t
        print(f"x*2 over {n}, automatic chunks, iterated: {n / d:,.0f} items/s")
    for _ in range(2):
        t = time.perf_counter()
        r, fails = e.run(double, range(n)).collect()
        d = time.perf_counter() - t
        assert r[-1] == 2 * (n - 1) and not fails
        print(f"x*2 over {n}, automatic chunks, Run.collect(): {n / d:,.0f} items/s")
    t = time.perf_counter()
    list(e.run(double, range(m), chunksize=1))
    d = time.perf_counter() - t
    print(f"x*2 over {m}, chunksize=1: {m / d:,.0f} tasks/s")
    e.terminate()
    for method in ("fork", "forkserver", "spawn"):
        ctx = mp.get_context(method)
        t = time.perf_counter()
        p = ctx.Pool(2)
        p.apply(double, (1,))
        d0 = time.perf_counter() - t
        t = time.perf_counter()
        p.map(double, range(n))
        d = time.perf_counter() - t
        t = time.perf_counter()
        p.map(double, range(m), chunksize=1)
        d1 = time.perf_counter() - t
        p.terminate()
        p.join()
        print(
            f"multiprocessing.Pool(2), {method}: start + one task {ms(d0)}; "
            f"map {n / d:,.0f} items/s; chunksize=1 {m / d1:,.0f} tasks/s"
        )


if __name__ == "__main__":
    main()
