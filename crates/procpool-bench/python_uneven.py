"""Python's multiprocessing.Pool on the uneven-work section of procpool-bench.

Run by the Rust benchmark, which writes the plan (the same task lists as its own runs) to
a JSON file and reads what this prints: one JSON object on stdout. Progress goes to
stderr. Standard library only.

    python3 python_uneven.py --spec uneven_spec.json

A task is one integer: index << 40 | microseconds << 1 | spin. It sleeps (time.sleep) or
spins on time.perf_counter() for its microseconds and returns itself, so every result
names its item.
"""

import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time

US_MASK = (1 << 39) - 1


def task(x):
    us = (x >> 1) & US_MASK
    if x & 1:
        clock = time.perf_counter
        end = clock() + us / 1e6
        while clock() < end:
            pass
    elif us:
        time.sleep(us / 1e6)
    return x


def double(x):
    return x * 2


def trivial(x):
    return x + 1


def hold(path, limit_ms):
    """The cross-call blocker: waits until `path` exists, at most limit_ms."""
    t = time.perf_counter()
    while time.perf_counter() - t < limit_ms / 1e3 and not os.path.exists(path):
        time.sleep(0.001)
    return 1


def forever(_):
    while True:
        time.sleep(1)


def log(*args):
    print("python-mp: uneven", *args, file=sys.stderr, flush=True)


def call(pool, api, items, chunk1):
    """Runs the tasks with the call named `api`; chunk1 False = the call's default."""
    kw = {"chunksize": 1} if chunk1 else {}
    if api == "map":
        return pool.map(task, items, **kw)
    if api == "imap":
        return list(pool.imap(task, items, **kw))
    return list(pool.imap_unordered(task, items, **kw))


def check(items, got, unordered):
    if unordered:
        got = sorted(got)
        items = sorted(items)
    if got != items:
        raise RuntimeError(f"wrong results ({len(got)} for {len(items)} items)")


def run_batch(pool, workers, b):
    times = []
    for items in b["runs"]:
        if b["fresh"]:
            t = time.perf_counter()
            p = mp.Pool(workers)
            got = call(p, b["api"], items, b["chunk1"])
            d = time.perf_counter() - t
            p.terminate()
            p.join()
        else:
            t = time.perf_counter()
            got = call(pool, b["api"], items, b["chunk1"])
            d = time.perf_counter() - t
        check(items, got, b["api"] == "imap_unordered")
        times.append(d * 1e3)
    return times


def cross_once(pool, spec, key):
    """The time (ms) of one call while a blocker holds a worker."""
    path = os.path.join(tempfile.gettempdir(), f"procpool-bench-hold-py-{os.getpid()}")
    if os.path.exists(path):
        os.remove(path)
    blocker = pool.apply_async(hold, (path, spec["hold_ms"]))
    time.sleep(spec["delay_s"])
    rest = []
    try:
        t = time.perf_counter()
        if key.endswith("map2"):
            got = pool.map(double, range(2))
            d = time.perf_counter() - t
            if got != [0, 2]:
                raise RuntimeError(f"map(double, range(2)) gave {got}")
        else:
            kw = {"chunksize": 1} if key.endswith(".one") else {}
            it = pool.imap_unordered(double, range(spec["items"]), **kw)
            first = [next(it), next(it)]
            d = time.perf_counter() - t
            rest = list(it)  # drains the pool: Python cannot drop queued tasks
            if sorted(first + rest) != [2 * i for i in range(spec["items"])]:
                raise RuntimeError("wrong imap_unordered results")
    finally:
        with open(path, "w"):
            pass
        blocker.get()
        os.remove(path)
    return d * 1e3


def detached(workers, spec):
    """An endless task, waited for 100 ms and dropped; then imap over the items."""
    with mp.Pool(workers) as p:  # leaving the block terminates the endless task
        r = p.apply_async(forever, (0,))
        try:
            r.get(0.1)
            raise RuntimeError("the endless task ended")
        except mp.TimeoutError:
            pass
        del r
        deadline = spec["deadline_s"]
        t = time.perf_counter()
        it = p.imap(double, range(spec["items"]))
        for i in range(spec["items"]):
            left = deadline - (time.perf_counter() - t)
            try:
                x = it.next(timeout=max(left, 0.001))
            except mp.TimeoutError:
                return {"dnf": deadline}
            if x != 2 * i:
                raise RuntimeError(f"item {i}: got {x}")
        return [(time.perf_counter() - t) * 1e3]


def main():
    spec_path = sys.argv[sys.argv.index("--spec") + 1]
    with open(spec_path) as f:
        spec = json.load(f)
    workers = spec["workers"]
    out = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "start_method": mp.get_start_method(),
        "results": {},
        "errors": [],
    }
    res = out["results"]

    def step(key, f):
        try:
            res[key] = f()
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            res[key] = {"error": repr(e)}
            out["errors"].append(f"{key}: {e!r}")
        log(key, res[key] if not isinstance(res[key], list) else
            " ".join(f"{x:.0f}" for x in res[key]) + " ms")

    t = time.perf_counter()
    with mp.Pool(workers) as pool:
        for i in range(20):
            pool.apply(trivial, (i,))
        for b in spec["batches"]:
            step(b["key"], lambda b=b: run_batch(pool, workers, b))
        for key in spec["cross"]["keys"]:
            step(key, lambda key=key: cross_once(pool, spec["cross"], key))
    step(spec["detached"]["key"], lambda: detached(workers, spec["detached"]))
    out["seconds"] = time.perf_counter() - t
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
