"""The Python front's start-up, Process and Queue figures against multiprocessing
(issue 19's targets), on one machine, medians. Run by procpool-bench
(``--workloads pyproc``), or alone:

    python crates/procpool-bench/python_processes.py [--quick]

Prints one line per figure on stderr and a JSON object on stdout:

* ``import procpool`` over a bare interpreter;
* a whole script (first pool + one task), and one whose task imports NumPy, against
  ``multiprocessing`` with fork and forkserver;
* ``Process(target=f).start(); join()`` against the stdlib's fork ``Process``;
* ``Queue`` put→get between two processes, small objects and 1 MiB ``bytes``;
* a later pool, and a killed worker replaced, with NumPy already imported by the caller.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PY = sys.executable

SCRIPT_POOL = """
import sys, {mod} as mp
{ctx}
def f(x):
    {task}
if __name__ == "__main__":
    with {pool}(2) as p:
        p.apply(f, (-1,))
"""


def run_ms(args, runs, env=None):
    xs = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL)
        xs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(xs)


def whole_script(kinds, task, runs, tmp):
    """``{kind: median ms}`` of the whole script run with each of ``kinds``, the kinds
    taking turns (so that a burst of load on a busy machine weighs on all of them)."""
    paths = {}
    for kind in kinds:
        if kind == "procpool":
            src = SCRIPT_POOL.format(mod="procpool", ctx="", task=task, pool="mp.Pool")
        else:
            src = SCRIPT_POOL.format(
                mod="multiprocessing", ctx=f"ctx = mp.get_context('{kind}')", task=task,
                pool="ctx.Pool",
            )
        paths[kind] = os.path.join(tmp, f"script_{kind}.py")
        with open(paths[kind], "w") as f:
            f.write(src)
    xs = {kind: [] for kind in kinds}
    for _ in range(runs):
        for kind in kinds:
            xs[kind].append(run_ms([PY, paths[kind]], 1))
    return {kind: statistics.median(v) for kind, v in xs.items()}


def f():
    pass


def producer(q, n, payload):
    for _ in range(n):
        q.put(payload)


def process_ms(make, runs):
    make(target=f).start()  # warm (procpool: the template)
    xs = []
    for _ in range(runs):
        t = time.perf_counter()
        p = make(target=f)
        p.start()
        p.join()
        xs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(xs)


def queue_us(Queue, Process, n, payload, runs):
    xs = []
    for _ in range(runs):
        q = Queue()
        p = Process(target=producer, args=(q, n, payload))
        t = time.perf_counter()
        p.start()
        for _ in range(n):
            q.get()
        xs.append((time.perf_counter() - t) * 1e6 / n)
        p.join()
    return statistics.median(xs)


def getpid(_=None):
    return os.getpid()


def uses_numpy(x):
    import numpy

    return float(numpy.float64(x))


def later_pool_ms(runs):
    import numpy  # noqa: F401 - the caller has NumPy loaded

    import procpool

    with procpool.Pool(1) as p:
        p.apply(uses_numpy, (1,))
    xs = []
    for _ in range(runs):
        t = time.perf_counter()
        with procpool.Pool(1) as p:
            p.apply(uses_numpy, (1,))
        xs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(xs)


def replace_ms(runs):
    import numpy  # noqa: F401

    import procpool

    with procpool.Pool(1) as p:
        p.apply(uses_numpy, (1,))
        warm = statistics.median(
            [(lambda t: (p.apply(getpid), time.perf_counter() - t)[1])(time.perf_counter())
             for _ in range(20)]
        )
        xs = []
        for _ in range(runs):
            pid = p.apply(getpid)
            t = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while True:
                try:
                    new = p.apply(getpid)
                except procpool.WorkerDied:
                    continue
                if new != pid:
                    break
            xs.append((time.perf_counter() - t - warm) * 1e3)
    return statistics.median(xs)


def main():
    quick = "--quick" in sys.argv
    runs = 3 if quick else 7
    out = {"python": sys.version.split()[0]}
    import multiprocessing as mp

    import procpool

    # An installed package has its bytecode compiled (pip does it at install); a
    # development install run with PYTHONDONTWRITEBYTECODE=1 would compile procpool's
    # sources again in every process measured, unlike the stdlib's.
    import compileall

    compileall.compile_dir(os.path.dirname(procpool.__file__), quiet=1)
    bare, imp = [], []
    for _ in range(runs):  # taking turns, as whole_script
        bare.append(run_ms([PY, "-c", "pass"], 1))
        imp.append(run_ms([PY, "-c", "import procpool"], 1))
    out["import_over_bare_ms"] = statistics.median(imp) - statistics.median(bare)
    with tempfile.TemporaryDirectory() as tmp:
        for task, label in (("return abs(x)", "script"), ("import numpy; return abs(x)", "numpy")):
            ms = whole_script(("procpool", "fork", "forkserver"), task, runs, tmp)
            for kind, v in ms.items():
                out[f"{label}_{kind}_ms"] = v
            out[f"{label}_ratio_fork"] = out[f"{label}_procpool_ms"] / out[f"{label}_fork_ms"]
    fork = mp.get_context("fork")
    ours, theirs = [], []
    for _ in range(3):  # taking turns
        ours.append(process_ms(procpool.Process, runs))
        theirs.append(process_ms(fork.Process, runs))
    out["process_procpool_ms"] = statistics.median(ours)
    out["process_fork_ms"] = statistics.median(theirs)
    out["process_ratio"] = out["process_procpool_ms"] / out["process_fork_ms"]
    for label, n, payload in (("small", 20000, 1), ("1mib", 200, b"x" * (1 << 20))):
        if quick:
            n //= 4
        a, b = [], []
        for _ in range(3):  # taking turns
            a.append(queue_us(procpool.Queue, procpool.Process, n, payload, 1))
            b.append(queue_us(fork.Queue, fork.Process, n, payload, 1))
        ours, theirs = statistics.median(a), statistics.median(b)
        out[f"queue_{label}_procpool_us"] = ours
        out[f"queue_{label}_mp_us"] = theirs
        out[f"queue_{label}_speedup"] = theirs / ours
    out["later_pool_numpy_ms"] = later_pool_ms(runs)
    out["replace_numpy_ms"] = replace_ms(runs)
    for k, v in out.items():
        print(f"{k:28} {v:.2f}" if isinstance(v, float) else f"{k:28} {v}", file=sys.stderr)
    out["targets"] = [
        {"target": t, "value": out[k], "holds": ok(out[k])}
        for t, k, ok in TARGETS
        if k in out
    ]
    print(json.dumps(out))


#: Issue 19's targets: (text, figure, test).
TARGETS = [
    ("import procpool <= +15 ms over a bare interpreter", "import_over_bare_ms", lambda v: v <= 15),
    ("whole script (first pool + 1 task) <= 1.3x multiprocessing fork", "script_ratio_fork", lambda v: v <= 1.3),
    ("whole script with a NumPy task <= 1.3x fork", "numpy_ratio_fork", lambda v: v <= 1.3),
    ("Process start + join <= 1.5x the stdlib's fork Process", "process_ratio", lambda v: v <= 1.5),
    ("Queue put->get, small objects >= 3x multiprocessing.Queue", "queue_small_speedup", lambda v: v >= 3),
    ("Queue put->get, 1 MiB bytes >= 5x multiprocessing.Queue", "queue_1mib_speedup", lambda v: v >= 5),
    ("later pool with NumPy imported by the caller <= 5 ms", "later_pool_numpy_ms", lambda v: v <= 5),
    ("killed worker replaced with NumPy imported <= 5 ms", "replace_numpy_ms", lambda v: v <= 5),
]


if __name__ == "__main__":
    main()
