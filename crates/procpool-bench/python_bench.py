"""Python's multiprocessing.Pool on the workloads of procpool-bench.

Run by the Rust benchmark (procpool-bench), which merges what this prints: one JSON
object on stdout. Progress goes to stderr. Standard library only.

    python3 python_bench.py [--quick]
"""

import json
import math
import multiprocessing as mp
import platform
import sys
import time

WORKERS = 2
CROSSOVER_T_US = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
SEED_TASKS = 8
SEED_TASK_S = 0.010
BLOB_BYTES = 32 << 20
BLOBS = 16

QUICK = "--quick" in sys.argv[1:]
WORKLOADS = {"seed", "tiny", "bulk", "startup", "latency", "crossover"}
if "--workloads" in sys.argv[1:-1]:
    WORKLOADS &= set(sys.argv[sys.argv.index("--workloads") + 1].split(","))
if QUICK:
    SEED_REPS, BULK_REPS, STARTUP_RUNS = 2, 1, 5
    LAT_RUNS, LAT_WARMUP = 300, 50
    TINY = dict(target=0.15, reps=1, start=200, max=2_000_000)
    TINY1 = dict(target=0.15, reps=1, start=200, max=20_000)
    CROSS = dict(target=0.035, reps=1, start=16, max=50_000)
else:
    SEED_REPS, BULK_REPS, STARTUP_RUNS = 7, 2, 20
    LAT_RUNS, LAT_WARMUP = 2000, 200
    TINY = dict(target=0.4, reps=3, start=500, max=20_000_000)
    TINY1 = dict(target=0.4, reps=2, start=500, max=100_000)
    CROSS = dict(target=0.12, reps=2, start=16, max=200_000)


def compute(n):
    s = 0.0
    sqrt = math.sqrt
    for i in range(1, n + 1):
        s += sqrt(i)
    return s


def double(x):
    return x * 2


def trivial(x):
    return x + 1


def spin(ns):
    clock = time.perf_counter_ns
    end = clock() + ns
    looks = 1
    while clock() < end:
        looks += 1
    return looks


def log(*args):
    print("python:", *args, file=sys.stderr, flush=True)


def median(xs):
    return percentile(xs, 50)


def percentile(xs, p):
    xs = sorted(xs)
    rank = math.ceil(p / 100 * len(xs))
    return xs[min(max(rank, 1), len(xs)) - 1]


def throughput(sizing, run):
    """Items per second of run(n) -> seconds, as the Rust side measures it."""
    n = min(max(sizing["start"], 1), sizing["max"])
    while True:
        d = max(run(n), 1e-9)
        if d >= sizing["target"] / 8 or n >= sizing["max"]:
            rate = n / d
            break
        n = min(n * 8, sizing["max"])
    n = min(max(int(rate * sizing["target"]), 1), sizing["max"])
    rates = [n / max(run(n), 1e-9) for _ in range(sizing["reps"])]
    return max(rates), n


def timed(f, *args):
    t = time.perf_counter()
    out = f(*args)
    return time.perf_counter() - t, out


def calibrate_seed():
    n = 10_000
    while True:
        d, _ = timed(compute, n)
        if d >= 0.002:
            n2 = max(int(n * SEED_TASK_S / d), 1)
            d2, _ = timed(compute, n2)
            return max(int(n2 * SEED_TASK_S / d2), 1)
        n *= 4


def check_doubles(v, n):
    if len(v) != n or any(x != 2 * i for i, x in enumerate(v)):
        raise RuntimeError("wrong tiny results")


def bench(out):
    errors = out["errors"]

    def step(name, f):
        if name.split()[-1] not in WORKLOADS and name.split()[0] not in WORKLOADS:
            return
        try:
            f()
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            errors.append(f"{name}: {e!r}")
            log(name, "failed:", repr(e))

    seed_n = calibrate_seed()
    inputs = [seed_n] * SEED_TASKS
    expected = [compute(n) for n in inputs]

    def seq_tiny():
        def run(n):
            d, v = timed(lambda: [double(x) for x in range(n)])
            return d

        rate, n = throughput(TINY, run)
        out["tiny_seq"] = {"rate": rate, "n": n}

    seq_cross = {}

    def seq_crossover():
        for t in CROSSOVER_T_US:
            ns = round(t * 1000)

            def run(n):
                return timed(lambda: [spin(ns) for _ in range(n)])[0]

            rate, n = throughput(CROSS, run)
            seq_cross[t] = (1e6 / rate, n)

    step("sequential tiny", seq_tiny)
    step("sequential crossover", seq_crossover)
    log("sequential done")

    with mp.Pool(WORKERS) as pool:
        for i in range(20):
            pool.apply(trivial, (i,))

        def pool_seed():
            # Sequential and pool runs alternate, so that both see the same conditions
            # (CPython's speed varies by some 10% from one process to the next).
            pool.map(compute, inputs, chunksize=1)
            seq, par = [], []
            for _ in range(SEED_REPS):
                seq.append(timed(lambda: [compute(n) for n in inputs])[0])
                d, v = timed(pool.map, compute, inputs, 1)
                if v != expected:
                    raise RuntimeError("seed results differ")
                par.append(d)
            out["seed"] = {"n": seed_n, "seq_ms": min(seq) * 1e3, "pool_ms": min(par) * 1e3}
            out["seed"]["speedup"] = min(seq) / min(par)

        def tiny1():
            def run(n):
                d, v = timed(pool.map, double, range(n), 1)
                check_doubles(v, n)
                return d

            rate, n = throughput(TINY1, run)
            out["tiny_chunk1"] = {"rate": rate, "n": n}

        def tiny_auto():
            def run(n):
                d, v = timed(pool.map, double, range(n))
                check_doubles(v, n)
                return d

            rate, n = throughput(TINY, run)
            out["tiny_auto"] = {"rate": rate, "n": n}

        def bulk():
            pool.map(len, [bytes([1]) * BLOB_BYTES] * 2, 1)
            rates = []
            for _ in range(BULK_REPS):
                blobs = [bytes([i % 251 + 1]) * BLOB_BYTES for i in range(BLOBS)]
                d, v = timed(pool.map, len, blobs, 1)
                del blobs
                if v != [BLOB_BYTES] * BLOBS:
                    raise RuntimeError("bulk lengths differ")
                rates.append(BLOBS * BLOB_BYTES / 1e6 / d)
            out["bulk_mb_s"] = max(rates)

        def latency():
            for i in range(LAT_WARMUP):
                pool.apply(trivial, (i,))
            us = []
            for i in range(LAT_RUNS):
                t = time.perf_counter()
                r = pool.apply(trivial, (i,))
                us.append((time.perf_counter() - t) * 1e6)
                if r != i + 1:
                    raise RuntimeError("wrong latency result")
            out["latency_us"] = {"median": median(us), "p99": percentile(us, 99)}

        def crossover():
            points = []
            for t in CROSSOVER_T_US:
                ns = round(t * 1000)

                def run(n):
                    d, v = timed(pool.map, spin, [ns] * n, 1)
                    if len(v) != n:
                        raise RuntimeError("wrong spin results")
                    return d

                rate, n = throughput(CROSS, run)
                seq = seq_cross.get(t, (None, None))
                points.append(
                    {
                        "t_us": t,
                        "pool_us": 1e6 / rate,
                        "pool_n": n,
                        "seq_us": seq[0],
                        "seq_n": seq[1],
                    }
                )
            out["crossover"] = points

        for name, f in [
            ("seed", pool_seed),
            ("tiny chunk1", tiny1),
            ("tiny auto", tiny_auto),
            ("bulk", bulk),
            ("latency", latency),
            ("crossover", crossover),
        ]:
            step(name, f)
            log(name, "done")

    def startup():
        def once():
            t0 = time.perf_counter()
            p = mp.Pool(WORKERS)
            t1 = time.perf_counter()
            if p.apply(trivial, (1,)) != 2:
                raise RuntimeError("wrong startup result")
            t2 = time.perf_counter()
            p.close()
            p.join()
            t3 = time.perf_counter()
            return [t1 - t0, t2 - t1, t3 - t2]

        once()
        runs = [once() for _ in range(STARTUP_RUNS)]
        out["startup_ms"] = {
            "total": median([sum(r) for r in runs]) * 1e3,
            "create": median([r[0] for r in runs]) * 1e3,
            "first_task": median([r[1] for r in runs]) * 1e3,
            "shutdown": median([r[2] for r in runs]) * 1e3,
        }

    step("startup", startup)
    log("startup done")


def main():
    out = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "start_method": mp.get_start_method(),
        "workers": WORKERS,
        "quick": QUICK,
        "errors": [],
    }
    t = time.perf_counter()
    bench(out)
    out["seconds"] = time.perf_counter() - t
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
