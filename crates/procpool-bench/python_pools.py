"""Python process pools on the same workloads: procpool against the standard library and
the best-known third-party pools, in one run, 2 workers each.

    python crates/procpool-bench/python_pools.py [--quick] [--systems LIST] [--workloads LIST] [--json FILE]

Prints one JSON object on stdout (also written to FILE with --json) and a table, the
targets of the Python front and whether each holds, on stderr. Run by procpool-bench
(`--workloads pyfront`), or alone with the interpreter of a virtual environment where
procpool is installed (`maturin develop` or `pip install .`). loky, mpire and pebble are
measured when they can be imported and skipped otherwise.

Systems: procpool.Pool, procpool.ProcessPoolExecutor, multiprocessing.Pool with fork,
spawn and forkserver (forkserver for start-up only), concurrent.futures'
ProcessPoolExecutor, loky, mpire, pebble.

Workloads (each system's own default where "default" is said):
  seed      8 x compute(n), one task about 0.4 s; speedup against a sequential loop
  tiny      x * 2 over 200k ints with default chunking (items/s) and over 20k ints with
            chunksize=1 (tasks/s); fewer items for a system too slow to do them in ~3 s
  bulk      16 x 32 MiB bytes and 16 x 32 MiB NumPy arrays (MB/s of input): tasks that
            return the length, and tasks that return the data itself (echo)
  startup   create + one task + shut down: the first pool of a fresh interpreter
            (imports excluded, reported apart) and later pools of the same program (ms)
  replace   a 1-worker pool whose idle worker is SIGKILLed: time until a new worker
            answers, less one warm round trip (ms); "broken" where the pool cannot go on
  uneven    800 busy-spin tasks of lognormal durations (heavy tail), chunksize=1;
            efficiency = greedy bound / wall time
  latency   one warm apply round trip (us, median and p99): apply_async().get() or
            submit().result(), and a Pool's blocking apply()

The other processes' share of the CPUs is measured around each system (from /proc): a
busy machine shows, and its figures are not to be trusted.
"""

import argparse
import importlib
import json
import math
import multiprocessing as mp
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time

WORKERS = 2
SEED_TASKS = 8
SEED_TASK_S = 0.4
MIB = 1 << 20
BLOB = 32 * MIB
BLOBS = 16
TINY_AUTO_N = 200_000
TINY1_N = 20_000
TINY_BUDGET_S = 3.0
UNEVEN_N = 800
REPLY_LIMIT_S = 10.0

ALL_SYSTEMS = [
    "procpool.Pool",
    "procpool.Executor",
    "mp.Pool-fork",
    "mp.Pool-spawn",
    "mp.Pool-forkserver",
    "cf.ProcessPool",
    "loky",
    "mpire",
    "pebble",
]
# The forkserver pool is measured for start-up only (its steady state is fork's).
STARTUP_ONLY = {"mp.Pool-forkserver"}
ALL_WORKLOADS = ["seed", "tiny", "bulk", "startup", "replace", "uneven", "latency"]


# ---- tasks (this file is imported as a module, so they go by reference) -----------------


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


def getpid(_=None):
    return os.getpid()


def spin_us(us):
    clock = time.perf_counter
    end = clock() + us / 1e6
    while clock() < end:
        pass
    return us


def started_then_sleep(path, seconds):
    """Creates `path` holding its pid (so the caller knows the task runs), then sleeps."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(seconds)
    return seconds


def length(data):
    """The input's length, and two of its bytes (so the data is really there)."""
    if hasattr(data, "nbytes"):
        return data.nbytes, float(data.flat[0]), float(data.flat[-1])
    return len(data), data[0], data[-1]


def echo(data):
    return data


# ---- measuring the machine ---------------------------------------------------------------


def _proc_times(pid):
    """utime + stime + cutime + cstime of `pid` in seconds (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _descendants():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], list(kids.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_mark():
    """(machine busy s, steal s, our tree's CPU s, wall s) now."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = (sum(v[:7]) - v[3] - v[4]) / hz
    steal = (v[7] if len(v) > 7 else 0) / hz
    ours = sum(os.times()[:4]) + sum(_proc_times(p) for p in _descendants())
    return busy, steal, ours, time.monotonic()


def foreign_share(a, b):
    """Shares of all cores (0..1) used by other processes, and stolen by the host."""
    wall = b[3] - a[3]
    if wall <= 0:
        return None, None
    cores = os.cpu_count() or 1
    other = (b[0] - a[0]) - (b[2] - a[2])

    def clamp(x):
        return min(max(x / (wall * cores), 0.0), 1.0)

    return clamp(other), clamp(b[1] - a[1])


def log(*args):
    print("pyfront:", *args, file=sys.stderr, flush=True)


# ---- the systems -------------------------------------------------------------------------


class Skip(Exception):
    """The system cannot be measured here (not installed)."""


class MpLike:
    """A `multiprocessing.Pool`-shaped pool (the standard library's or procpool's)."""

    def __init__(self, make):
        self.pool = make()

    def map(self, f, items, chunksize=None):
        return self.pool.map(f, items, chunksize)

    def apply(self, f, *args):
        return self.pool.apply_async(f, args).get(REPLY_LIMIT_S)

    def call(self, f, *args):
        """The blocking `apply`."""
        return self.pool.apply(f, args)

    def start(self, f, *args):
        self.pool.apply_async(f, args)

    def close(self):
        self.pool.close()
        self.pool.join()

    def kill(self):
        self.pool.terminate()
        self.pool.join()


class ExecutorLike:
    """A `concurrent.futures.Executor` (the standard library's, procpool's, loky's)."""

    def __init__(self, make):
        self.ex = make()

    def map(self, f, items, chunksize=None):
        if chunksize is None:
            return list(self.ex.map(f, items))
        return list(self.ex.map(f, items, chunksize=chunksize))

    def apply(self, f, *args):
        return self.ex.submit(f, *args).result(REPLY_LIMIT_S)

    def start(self, f, *args):
        self.ex.submit(f, *args)

    def close(self):
        self.ex.shutdown(wait=True)

    def kill(self):
        self.ex.shutdown(wait=False, cancel_futures=True)


class Pebble:
    def __init__(self, workers):
        import pebble

        self.pool = pebble.ProcessPool(max_workers=workers)

    def map(self, f, items, chunksize=None):
        return list(self.pool.map(f, items, chunksize=chunksize or 1).result())

    def apply(self, f, *args):
        return self.pool.schedule(f, args=args).result(REPLY_LIMIT_S)

    def start(self, f, *args):
        self.pool.schedule(f, args=args)

    def close(self):
        self.pool.close()
        self.pool.join()

    def kill(self):
        self.pool.stop()
        self.pool.join()


class Mpire:
    def __init__(self, workers):
        import mpire

        self.pool = mpire.WorkerPool(n_jobs=workers, keep_alive=True, start_method="fork")

    def map(self, f, items, chunksize=None):
        return self.pool.map(f, items, chunk_size=chunksize, concatenate_numpy_output=False)

    def apply(self, f, *args):
        return self.pool.apply_async(f, args).get(REPLY_LIMIT_S)

    def start(self, f, *args):
        self.pool.apply_async(f, args)

    def close(self):
        self.pool.stop_and_join()

    def kill(self):
        self.pool.terminate()


def make_system(name, workers=WORKERS):
    """A started pool of `name`; Skip when its package is missing."""

    def need(module):
        try:
            return importlib.import_module(module)
        except ImportError as e:
            raise Skip(f"{module} not installed ({e})") from None

    if name == "procpool.Pool":
        return MpLike(lambda: need("procpool").Pool(workers))
    if name == "procpool.Executor":
        return ExecutorLike(lambda: need("procpool").ProcessPoolExecutor(workers))
    if name.startswith("mp.Pool-"):
        ctx = mp.get_context(name.split("-", 1)[1])
        return MpLike(lambda: ctx.Pool(workers))
    if name == "cf.ProcessPool":
        import concurrent.futures as cf

        return ExecutorLike(lambda: cf.ProcessPoolExecutor(workers))
    if name == "loky":
        loky = need("loky")
        return ExecutorLike(lambda: loky.ProcessPoolExecutor(workers))
    if name == "mpire":
        need("mpire")
        return Mpire(workers)
    if name == "pebble":
        need("pebble")
        return Pebble(workers)
    raise ValueError(f"unknown system {name}")


# ---- workloads ---------------------------------------------------------------------------


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def calibrate_seed():
    """n such that compute(n) takes about SEED_TASK_S here."""
    n = 100_000
    while True:
        d, _ = timed(lambda n=n: compute(n))
        if d > 0.05:
            return max(1, int(n * SEED_TASK_S / d))
        n *= 4


def seed(sys_, ctx):
    n, reps = ctx["seed_n"], ctx["seed_reps"]
    want = ctx["seed_expected"]
    best = math.inf
    for _ in range(reps):
        d, got = timed(lambda: sys_.map(compute, [n] * SEED_TASKS, 1))
        if got != want:
            raise RuntimeError("seed results differ from the sequential ones")
        best = min(best, d)
    return {"seed_ms": best * 1e3, "seed_speedup": ctx["seed_seq_s"] / best}


def sized_rate(run, n_max, budget):
    """Rate (items/s) of `run(n)` at up to n_max items, fewer if the system is too slow to
    do n_max in about `budget` seconds; (rate, n used)."""
    n = max(200, n_max // 100)
    d = run(n)
    rate = n / d
    n_full = int(min(n_max, max(n, rate * budget)))
    if n_full > n:
        n = n_full
        d = run(n)
    return n / d, n


def tiny(sys_, ctx):
    def run(chunksize):
        def once(n):
            items = list(range(n))
            d, got = timed(lambda: sys_.map(double, items, chunksize))
            if got != [2 * x for x in items]:
                raise RuntimeError("x * 2 gave wrong results")
            return d

        return once

    out = {}
    best = (0.0, 0)
    for _ in range(ctx["tiny_reps"]):
        best = max(best, sized_rate(run(None), TINY_AUTO_N, TINY_BUDGET_S))
    out["tiny_auto_items_s"], out["tiny_auto_n"] = best
    best = (0.0, 0)
    for _ in range(ctx["tiny_reps"]):
        best = max(best, sized_rate(run(1), TINY1_N, TINY_BUDGET_S))
    out["tiny1_tasks_s"], out["tiny1_n"] = best
    return out


def bulk(sys_, ctx):
    import_np = ctx.get("numpy")
    out = {}
    kinds = [("bytes", lambda i: bytes([i]) * BLOB)]
    if import_np is not None:
        kinds.append(("numpy", lambda i: import_np.full(BLOB // 8, float(i))))
    else:
        out["numpy_note"] = "numpy not installed"
    for kind, make in kinds:
        for variant, f in (("len", length), ("echo", echo)):
            best = 0.0
            for _ in range(ctx["bulk_reps"]):
                data = [make(i) for i in range(BLOBS)]
                d, got = timed(lambda f=f, data=data: sys_.map(f, data, 1))
                check_bulk(kind, variant, data, got)
                best = max(best, BLOBS * BLOB / 1e6 / d)
                data = got = None  # free the 512 MiB before the next round
            out[f"bulk_{kind}_{variant}_mb_s"] = best
    return out


def check_bulk(kind, variant, data, got):
    if len(got) != len(data):
        raise RuntimeError(f"bulk {kind} {variant}: {len(got)} results for {len(data)}")
    for i, (a, b) in enumerate(zip(data, got)):
        if variant == "len":
            ok = b[0] == BLOB and b[1] == a[0] and b[2] == a[-1]
        elif kind == "numpy":
            ok = b.shape == a.shape and b[0] == a[0] and b[-1] == a[-1]
        else:
            ok = len(b) == len(a) and b[:1] == a[:1] and b[-1:] == a[-1:]
        if not ok:
            raise RuntimeError(f"bulk {kind} {variant}: item {i} came back wrong")


def later_pools(name, runs):
    """Median ms of create + one task + shut down, after a first (warm-up) pool."""
    once(name)
    parts = [once(name) for _ in range(runs)]
    return {
        "later_pool_ms": statistics.median(sum(p) for p in parts),
        "later_pool_parts_ms": [statistics.median(p[i] for p in parts) for i in range(3)],
    }


def once(name):
    """(create, first task, shut down) in ms."""
    t0 = time.perf_counter()
    s = make_system(name)
    t1 = time.perf_counter()
    if s.apply(trivial, 1) != 2:
        raise RuntimeError("trivial(1) != 2")
    t2 = time.perf_counter()
    s.close()
    t3 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3


def first_pool(name, runs):
    """Median over fresh interpreters of their first pool (imports measured apart)."""
    totals, imports = [], []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--first-pool", name],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"first pool: {done.stderr.strip().splitlines()[-1:]}")
        r = json.loads(done.stdout)
        totals.append(sum(r["parts_ms"]))
        imports.append(r["import_ms"])
    return {"first_pool_ms": statistics.median(totals), "import_ms": statistics.median(imports)}


def first_pool_child(name):
    t = time.perf_counter()
    module = {"procpool.Pool": "procpool", "procpool.Executor": "procpool"}.get(name)
    module = module or {"cf.ProcessPool": "concurrent.futures"}.get(name, name.split(".")[0])
    if module not in ("mp",):
        importlib.import_module(module)
    import_ms = (time.perf_counter() - t) * 1e3
    print(json.dumps({"import_ms": import_ms, "parts_ms": once(name)}))


def startup(name, ctx):
    out = first_pool(name, ctx["first_runs"])
    if name not in STARTUP_ONLY:
        out.update(later_pools(name, ctx["later_runs"]))
    return out


def replace(name, ctx):
    """A 1-worker pool: SIGKILL its worker in the middle of a task, then time until a new
    worker answers a call (less one warm round trip). The worker is killed inside a task,
    not idle: an idle standard-library worker may die holding its queue's lock, which
    hangs that pool for good (the task queue and even terminate())."""
    import tempfile

    s = make_system(name, workers=1)
    try:
        rt = []
        for i in range(20):
            d, _ = timed(lambda i=i: s.apply(trivial, i))
            rt.append(d)
        warm = statistics.median(rt)
        times = []
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(ctx["replace_runs"]):
                flag = os.path.join(tmp, str(k))
                s.start(started_then_sleep, flag, 30)
                deadline = time.monotonic() + REPLY_LIMIT_S
                while not os.path.exists(flag) and time.monotonic() < deadline:
                    time.sleep(0.001)
                with open(flag) as f:
                    pid = int(f.read())
                t0 = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                while True:
                    try:
                        new = s.apply(getpid)
                    except Exception as e:  # noqa: BLE001 - a failed task is not the end
                        if type(e).__name__ == "WorkerDied":
                            continue  # procpool: the call reached the dying worker
                        return {"replace": f"broken ({type(e).__name__})"}
                    if new != pid:
                        break
                times.append((time.perf_counter() - t0 - warm) * 1e3)
        return {"replace_ms": statistics.median(times), "replace_max_ms": max(times)}
    finally:
        shut_down(s, kill=True)


HUNG = []


def shut_down(s, kill=False, limit=20.0):
    """Closes (or terminates) `s` within `limit` seconds; notes a pool that hangs there
    (the run then ends with os._exit, since the interpreter's own exit would hang too)."""
    import threading

    errors = []

    def run():
        try:
            (s.kill if kill else s.close)()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        HUNG.append(s)
        for child in mp.active_children():
            child.kill()
        return f"shutting down hung for more than {limit:.0f} s"
    return errors[0] if errors else None


def lognormal_durations(n, total_us, median_us, seed_=8):
    rng = random.Random(seed_)
    raw = [median_us * math.exp(1.8 * rng.gauss(0, 1)) for _ in range(n)]
    k = total_us / sum(raw)
    return [max(1, round(x * k)) for x in raw]


def greedy_bound_us(durations, workers):
    """Makespan when each task, in input order, goes to the first free worker at no cost."""
    free = [0.0] * workers
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    return max(free)


def uneven(sys_, ctx):
    durations = lognormal_durations(UNEVEN_N, ctx["uneven_total_us"], 1000)
    bound = greedy_bound_us(durations, WORKERS)
    best = 0.0
    for _ in range(ctx["uneven_reps"]):
        d, got = timed(lambda: sys_.map(spin_us, durations, 1))
        if got != durations:
            raise RuntimeError("uneven work came back wrong")
        best = max(best, bound / 1e6 / d)
    return {"uneven_efficiency": best, "uneven_bound_ms": bound / 1e3}


def round_trips(call, ctx):
    """Median and p99 of `call(trivial, i)`'s round trip (us), after a warm-up."""
    for i in range(ctx["lat_warmup"]):
        call(trivial, i)
    us = []
    for i in range(ctx["lat_runs"]):
        t = time.perf_counter()
        r = call(trivial, i)
        us.append((time.perf_counter() - t) * 1e6)
        if r != i + 1:
            raise RuntimeError(f"trivial({i}) gave {r}")
    us.sort()
    return statistics.median(us), us[int(0.99 * (len(us) - 1))]


def latency(sys_, ctx):
    med, p99 = round_trips(sys_.apply, ctx)
    fig = {"apply_us_median": med, "apply_us_p99": p99}
    if hasattr(sys_, "call"):  # a Pool's blocking apply as well
        med, p99 = round_trips(sys_.call, ctx)
        fig.update({"apply_sync_us_median": med, "apply_sync_us_p99": p99})
    return fig


STEADY = {"seed": seed, "tiny": tiny, "bulk": bulk, "uneven": uneven, "latency": latency}


def brief(fig, seen):
    """The figures not logged yet, rounded."""
    return " ".join(
        f"{k}={fmt(v)}" for k, v in fig.items() if k not in seen and not isinstance(v, list)
    )


def bench_system(name, workloads, ctx):
    fig, errors, seen = {}, [], set()
    mark = cpu_mark()
    steady = [w for w in ALL_WORKLOADS if w in workloads and w in STEADY]
    if name in STARTUP_ONLY:
        steady = []
    if steady:
        try:
            s = make_system(name)
        except Skip as e:
            return {"skipped": str(e)}
        try:
            for _ in range(10):
                s.apply(trivial, 0)
            for w in steady:
                try:
                    fig.update(STEADY[w](s, ctx))
                except Exception as e:  # noqa: BLE001 - one failed workload, not the run
                    errors.append(f"{w}: {type(e).__name__}: {e}")
                log(name, w, brief(fig, seen))
                seen.update(fig)
        finally:
            err = shut_down(s)
            if err:
                errors.append(f"shutdown: {err}")
    for w, fn in (("startup", startup), ("replace", replace)):
        if w not in workloads or (w == "replace" and name in STARTUP_ONLY):
            continue
        try:
            fig.update(fn(name, ctx))
        except Skip as e:
            return {"skipped": str(e)}
        except Exception as e:  # noqa: BLE001
            errors.append(f"{w}: {type(e).__name__}: {e}")
        log(name, w, brief(fig, seen))
        seen.update(fig)
    other, steal = foreign_share(mark, cpu_mark())
    fig["other_cpu_pct"] = None if other is None else other * 100
    fig["steal_pct"] = None if steal is None else steal * 100
    if errors:
        fig["errors"] = errors
    return fig


# ---- report ------------------------------------------------------------------------------

ROWS = [
    ("seed_speedup", "seed speedup (x)"),
    ("tiny_auto_items_s", "x*2 default chunks (items/s)"),
    ("tiny1_tasks_s", "x*2 chunksize=1 (tasks/s)"),
    ("bulk_bytes_len_mb_s", "32 MiB bytes -> len (MB/s)"),
    ("bulk_bytes_echo_mb_s", "32 MiB bytes -> echo (MB/s)"),
    ("bulk_numpy_len_mb_s", "32 MiB numpy -> len (MB/s)"),
    ("bulk_numpy_echo_mb_s", "32 MiB numpy -> echo (MB/s)"),
    ("first_pool_ms", "first pool: create+task+close (ms)"),
    ("import_ms", "  its imports (ms)"),
    ("later_pool_ms", "later pool: create+task+close (ms)"),
    ("replace_ms", "replace a killed worker (ms)"),
    ("uneven_efficiency", "uneven work efficiency (chunk 1)"),
    ("apply_us_median", "warm apply round trip, median (us)"),
    ("apply_us_p99", "warm apply round trip, p99 (us)"),
    ("apply_sync_us_median", "warm blocking apply, median (us)"),
    ("apply_sync_us_p99", "warm blocking apply, p99 (us)"),
    ("other_cpu_pct", "other processes' CPU (% of cores)"),
]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v.split(" ")[0][:9]
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


SHORT = {
    "procpool.Pool": "pp.Pool",
    "procpool.Executor": "pp.Exec",
    "mp.Pool-fork": "mp.fork",
    "mp.Pool-spawn": "mp.spawn",
    "mp.Pool-forkserver": "mp.fsrv",
    "cf.ProcessPool": "cf.PPE",
}


def table(result):
    systems = [n for n, f in result["systems"].items() if "skipped" not in f]
    head = f"{'':36}" + "".join(f"{SHORT.get(n, n):>10}" for n in systems)
    lines = [head]
    for key, label in ROWS:
        vals = []
        for n in systems:
            f = result["systems"][n]
            v = f.get(key)
            if key == "replace_ms" and v is None:
                v = f.get("replace")
            vals.append(v)
        if all(v is None for v in vals):
            continue
        lines.append(f"{label:36}" + "".join(f"{fmt(v):>10}" for v in vals))
    for n, f in result["systems"].items():
        if "skipped" in f:
            lines.append(f"{n}: skipped ({f['skipped']})")
        for e in f.get("errors", []):
            lines.append(f"{n}: {e}")
    return "\n".join(lines)


def targets(result):
    """Issue 9's targets: (text, value, holds) for each one that could be measured."""
    s = result["systems"]
    pp, ppx = s.get("procpool.Pool", {}), s.get("procpool.Executor", {})
    mpf, fsrv = s.get("mp.Pool-fork", {}), s.get("mp.Pool-forkserver", {})
    out = []

    def ratio(a, b):
        return None if a is None or not b else a / b

    def add(text, value, ok):
        if value is not None:
            out.append({"target": text, "value": value, "holds": bool(ok(value))})

    add("seed speedup >= 1.95", pp.get("seed_speedup"), lambda v: v >= 1.95)
    add(
        "chunksize=1 tasks/s >= 5x multiprocessing.Pool",
        ratio(pp.get("tiny1_tasks_s"), mpf.get("tiny1_tasks_s")),
        lambda v: v >= 5,
    )
    add(
        "default chunking items/s >= 1.5x multiprocessing.Pool",
        ratio(pp.get("tiny_auto_items_s"), mpf.get("tiny_auto_items_s")),
        lambda v: v >= 1.5,
    )
    for kind in ("bytes", "numpy"):
        for variant in ("len", "echo"):
            key = f"bulk_{kind}_{variant}_mb_s"
            add(
                f"bulk {kind} ({variant}) MB/s >= 3x multiprocessing.Pool",
                ratio(pp.get(key), mpf.get(key)),
                lambda v: v >= 3,
            )
    add(
        "first pool no slower than multiprocessing.Pool forkserver (ratio <= 1)",
        ratio(pp.get("first_pool_ms"), fsrv.get("first_pool_ms")),
        lambda v: v <= 1,
    )
    add("later pools <= 5 ms", pp.get("later_pool_ms"), lambda v: v <= 5)
    add("replacement of a killed worker <= 5 ms", pp.get("replace_ms"), lambda v: v <= 5)
    add(
        "uneven work efficiency >= 0.95 (chunksize=1)",
        pp.get("uneven_efficiency"),
        lambda v: v >= 0.95,
    )
    add(
        "Executor: uneven work efficiency >= 0.95",
        ppx.get("uneven_efficiency"),
        lambda v: v >= 0.95,
    )
    return out


# ---- main --------------------------------------------------------------------------------


def settings(quick):
    """Repetitions and sizes of a quick or a full run."""
    if quick:
        return {
            "seed_reps": 1,
            "tiny_reps": 1,
            "bulk_reps": 1,
            "first_runs": 3,
            "later_runs": 5,
            "replace_runs": 5,
            "uneven_reps": 1,
            "uneven_total_us": 1_000_000,
            "lat_runs": 300,
            "lat_warmup": 50,
        }
    return {
        "seed_reps": 3,
        "tiny_reps": 2,
        "bulk_reps": 2,
        "first_runs": 7,
        "later_runs": 20,
        "replace_runs": 15,
        "uneven_reps": 2,
        "uneven_total_us": 4_000_000,
        "lat_runs": 2000,
        "lat_warmup": 200,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer and shorter measurements")
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    ap.add_argument("--workloads", default=",".join(ALL_WORKLOADS))
    ap.add_argument("--json", help="also write the JSON to this file")
    ap.add_argument("--first-pool", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.first_pool:
        return first_pool_child(args.first_pool)
    systems = [x.strip() for x in args.systems.split(",") if x.strip()]
    workloads = {x.strip() for x in args.workloads.split(",") if x.strip()}
    for bad in [x for x in systems if x not in ALL_SYSTEMS] + [
        w for w in workloads if w not in ALL_WORKLOADS
    ]:
        ap.error(f"unknown system or workload {bad!r}")

    ctx = settings(args.quick)
    try:
        import numpy

        ctx["numpy"] = numpy
    except ImportError:
        ctx["numpy"] = None
    run_mark = cpu_mark()
    result = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cores": os.cpu_count(),
        "workers": WORKERS,
        "quick": args.quick,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "systems": {},
    }
    if "seed" in workloads:
        ctx["seed_n"] = calibrate_seed()
        runs = [
            timed(lambda: [compute(ctx["seed_n"]) for _ in range(SEED_TASKS)])
            for _ in range(max(1, ctx["seed_reps"] - 1))
        ]
        d, want = min(runs, key=lambda r: r[0])  # the fastest, as for the pools
        ctx["seed_seq_s"], ctx["seed_expected"] = d, want
        result["seed"] = {"n": ctx["seed_n"], "sequential_ms": d * 1e3}
        log(f"seed n = {ctx['seed_n']}, sequential {d * 1e3:.0f} ms")
    for name in systems:
        t = time.monotonic()
        result["systems"][name] = bench_system(name, workloads, ctx)
        log(f"{name} done in {time.monotonic() - t:.1f} s")
    other, steal = foreign_share(run_mark, cpu_mark())
    result["other_cpu_pct"] = None if other is None else other * 100
    result["steal_pct"] = None if steal is None else steal * 100
    result["targets"] = targets(result)

    print(table(result), file=sys.stderr)
    for t in result["targets"]:
        mark = "holds" if t["holds"] else "MISSED"
        print(f"  {mark:7} {t['target']}: {fmt(t['value'])}", file=sys.stderr)
    if other is not None:
        busy = " - a busy machine: parallel figures are not reliable" if other > 0.05 else ""
        print(
            f"other processes used {other * 100:.0f}% of the cores during the run, "
            f"the host stole {steal * 100:.0f}%{busy}",
            file=sys.stderr,
        )
    text = json.dumps(result, indent=1, default=str)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text, flush=True)
    if HUNG:
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    # Tasks go by reference to this file imported as a module (as a user's own module
    # would), not by value from __main__.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    this = importlib.import_module(os.path.splitext(os.path.basename(__file__))[0])
    sys.exit(this.main())
