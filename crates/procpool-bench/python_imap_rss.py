"""Peak memory of the calling process during a long ``imap``: procpool against
``multiprocessing.Pool``.

    python crates/procpool-bench/python_imap_rss.py [--items 2000000] [--size 1024] [--chunksize 1000]
                                    [--task echo|length] [--only procpool|multiprocessing]
                                    [--runs 1]

Each implementation runs in a fresh interpreter: ``imap(task, items, chunksize)`` over a
generator of ``--items`` byte strings of ``--size`` bytes, the results dropped as they come;
the script prints that interpreter's peak RSS (``ru_maxrss``), its RSS before the pool, and
the time taken, and for procpool what the run held at most (its ``Run.stats()``). ``echo``
returns each item (results as large as the input), ``length`` its length. ``--runs``
repeats the pair, alternating, and prints the load average before each pair.

procpool's modules are compiled to bytecode first (``compileall``, as ``pip install``
does): under ``PYTHONDONTWRITEBYTECODE`` they would otherwise be compiled from source in
each run, about 1.4 MiB more of peak memory, where the standard library's come compiled.
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
impl, items, size, chunksize, task = sys.argv[1:6]
items, size, chunksize = int(items), int(size), int(chunksize)
if impl == "procpool":
    import procpool as lib
else:
    import multiprocessing as lib
import bench_tasks
func = getattr(bench_tasks, task)

def gen():
    for _ in range(items):
        yield bytes(size)

def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

before = rss_kib()
t = time.perf_counter()
with lib.Pool(2) as pool:
    n = 0
    it = pool.imap(func, gen(), chunksize=chunksize)
    for r in it:
        n += 1
    run = getattr(it, "_run", None)
    stats = dict(run.stats()) if hasattr(run, "stats") else None
dt = time.perf_counter() - t
assert n == items, n
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"impl": impl, "peak_kib": peak, "before_kib": before, "seconds": dt,
                  "stats": stats}))
"""

TASKS = '''
def echo(x):
    return x

def length(x):
    return len(x)
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2_000_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--chunksize", type=int, default=1000)
    ap.add_argument("--task", choices=["echo", "length"], default="echo")
    ap.add_argument("--only", choices=["procpool", "multiprocessing"])
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args()
    import os
    import tempfile

    if a.only != "multiprocessing":
        compile_procpool()
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "bench_tasks.py"), "w") as f:
            f.write(TASKS)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([d, os.environ.get("PYTHONPATH", "")]))
        for _ in range(a.runs):
            with open("/proc/loadavg") as f:
                print("load average:", " ".join(f.read().split()[:3]))
            rows = []
            for impl in ["procpool", "multiprocessing"]:
                if a.only and impl != a.only:
                    continue
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, impl, str(a.items), str(a.size),
                     str(a.chunksize), a.task],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            report(rows)


def compile_procpool():
    """Writes the bytecode of procpool's modules, as an installation would."""
    import compileall
    import importlib.util
    import os

    spec = importlib.util.find_spec("procpool")
    if spec is not None and spec.origin:
        compileall.compile_dir(os.path.dirname(spec.origin), quiet=1)


def report(rows):
    for r in rows:
        print(
            f"{r['impl']:16} peak RSS {r['peak_kib'] / 1024:7.1f} MiB "
            f"(before the pool {r['before_kib'] / 1024:5.1f} MiB)  {r['seconds']:6.1f} s"
        )
        s = r.get("stats")
        if s:
            print(
                f"{'':16} held at most: {s['peak_jobs']} jobs, "
                f"{s['peak_payload_bytes'] / 1024:.0f} KiB of arguments in flight, "
                f"{s['peak_held_bytes'] / 1024:.0f} KiB of results held for order; "
                f"largest chunk {s['largest_chunk_items']} items, "
                f"{s['largest_chunk_bytes'] / 1024:.0f} KiB"
            )
    if len(rows) == 2:
        print(f"ratio procpool / multiprocessing: {rows[0]['peak_kib'] / rows[1]['peak_kib']:.2f}")


if __name__ == "__main__":
    main()
