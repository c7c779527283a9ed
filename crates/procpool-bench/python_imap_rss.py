"""Peak memory of the calling process during a long ``imap``: procpool against
``multiprocessing.Pool``.

    python crates/procpool-bench/python_imap_rss.py [--items 2000000] [--size 1024] [--chunksize 1000]
                                    [--task echo|length] [--only procpool|multiprocessing]

Each implementation runs in a fresh interpreter: ``imap(task, items, chunksize)`` over a
generator of ``--items`` byte strings of ``--size`` bytes, the results dropped as they come;
the script prints that interpreter's peak RSS (``ru_maxrss``), its RSS before the pool, and
the time taken. ``echo`` returns each item (results as large as the input), ``length`` its
length.
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
    for r in pool.imap(func, gen(), chunksize=chunksize):
        n += 1
dt = time.perf_counter() - t
assert n == items, n
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"impl": impl, "peak_kib": peak, "before_kib": before, "seconds": dt}))
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
    a = ap.parse_args()
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "bench_tasks.py"), "w") as f:
            f.write(TASKS)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([d, os.environ.get("PYTHONPATH", "")]))
        rows = []
        for impl in ["procpool", "multiprocessing"]:
            if a.only and impl != a.only:
                continue
            out = subprocess.run(
                [sys.executable, "-c", CHILD, impl, str(a.items), str(a.size), str(a.chunksize), a.task],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in rows:
        print(
            f"{r['impl']:16} peak RSS {r['peak_kib'] / 1024:7.1f} MiB "
            f"(before the pool {r['before_kib'] / 1024:5.1f} MiB)  {r['seconds']:6.1f} s"
        )
    if len(rows) == 2:
        print(f"ratio procpool / multiprocessing: {rows[0]['peak_kib'] / rows[1]['peak_kib']:.2f}")


if __name__ == "__main__":
    main()
