"""procpool's Python front over MPI against mpi4py.futures, on the same `mpirun -n N`.

    python crates/procpool-bench/python_mpi.py [--quick] [--ranks N] [--rounds R] [--mpirun PATH] [--json FILE]

Run with the interpreter of a virtual environment holding procpool, its MPI extension
(`scripts/build-mpi-python`) and mpi4py built against the same MPI
(`pip install mpi4py` with that MPI's `mpicc` on PATH). It starts two jobs:
`mpirun -n N python -m procpool.mpi python_mpi.py --role procpool` and
`mpirun -n N python -m mpi4py.futures python_mpi.py --role mpi4py`, where rank 0 measures
and the other ranks serve (procpool: one agent per rank, one worker each, so both
systems have N-1 workers), R times alternating (default 3), then prints each figure's
median over the rounds, with the issue's targets, on stdout.

Figures (x * 2 over ints; each system's round trip is one call's, warm):
  chunk 1        items/s with one item per task (procpool: Pool.map chunksize=1;
                 mpi4py: MPIPoolExecutor.map chunksize=1)
  automatic      procpool's default chunking (Pool.map) against mpi4py's best of
                 chunksizes 1, 10, 100, 1000 and 10000
  CPU per item   for the automatic row: the CPU time all the job's processes (rank 0,
                 agents, workers) spent per item, which the machine's load cannot skew
                 as it skews items/s (a rank spinning in MPI gets more CPU than one
                 that naps); the target shown is the items/s one
  round trip     median of one call (procpool: Pool.apply and executor submit+result;
                 mpi4py: submit+result)
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time


def double(x):
    return x * 2


def trivial(x):
    return x + 1


def where(_):
    time.sleep(0.05)  # long enough that every worker takes one
    return os.getpid(), os.getppid()


def cpu_seconds(pids):
    """User + system CPU time of these processes (this host's), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                v = f.read().rsplit(")", 1)[1].split()
            total += int(v[11]) + int(v[12])
        except OSError:
            pass
    return total / tick


def cpu_per_item(pids, n, f):
    """Items/s of ``f`` and the CPU time (ns) all the job's processes spent per item:
    what the machine's load cannot skew (a loaded machine gives each system the CPU it
    asks for in different shares: a rank that spins in MPI takes more than one that
    naps)."""
    c = cpu_seconds(pids)
    r = rate(n, f)
    return r, (cpu_seconds(pids) - c) / n * 1e9


def result(name, value):
    print(f"RESULT {name} {value}", flush=True)


def rate(n, f):
    t = time.perf_counter()
    out = f()
    d = time.perf_counter() - t
    assert len(out) == n and out[-1] == 2 * (n - 1), "wrong results"
    return n / d


def best(n, f, repeat):
    return max(rate(n, f) for _ in range(repeat))


def medians(call, n):
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    return statistics.median(lat) * 1e6


def role_procpool(quick):
    import procpool

    repeat = 2 if quick else 3
    with procpool.Pool(1, mpi=True) as pool:
        pool.map(trivial, range(64), chunksize=1)  # every worker answered once
        n1 = 20_000 if quick else 100_000
        result("chunk1_items_s", best(n1, lambda: pool.map(double, range(n1), chunksize=1), repeat))
        na = 1_000_000 if quick else 4_000_000
        result("auto_items_s", best(na, lambda: pool.map(double, range(na)), repeat))
        # Rank 0, the agents (the workers' parents) and the workers.
        pids = {os.getpid()} | {p for pair in pool.map(where, range(8), chunksize=1) for p in pair}
        _, ns = cpu_per_item(pids, na, lambda: pool.map(double, range(na)))
        result("auto_cpu_ns_item", ns)
        rounds = 300 if quick else 2000
        result("rtt_apply_us", medians(lambda: pool.apply(trivial, (1,)), rounds))
    with procpool.ProcessPoolExecutor(1, mpi=True) as ex:
        ex.submit(trivial, 1).result()
        result("rtt_submit_us", medians(lambda: ex.submit(trivial, 1).result(), rounds))


def role_mpi4py(quick):
    from mpi4py.futures import MPIPoolExecutor

    repeat = 2 if quick else 3
    with MPIPoolExecutor() as ex:
        list(ex.map(trivial, range(64)))
        n1 = 5_000 if quick else 20_000
        result(
            "chunk1_items_s",
            best(n1, lambda: list(ex.map(double, range(n1), chunksize=1)), repeat),
        )
        na = 200_000 if quick else 1_000_000
        found = {}
        for c in (1, 10, 100, 1000, 10_000):
            n = min(na, n1 * c)
            found[c] = best(n, lambda: list(ex.map(double, range(n), chunksize=c)), repeat)
            result(f"chunk{c}_items_s", found[c])
        # Rank 0 and the worker ranks, at mpi4py's best chunk size of this run.
        pids = {os.getpid()} | {p for p, _ in ex.map(where, range(8))}
        c = max((1, 10, 100, 1000, 10_000), key=lambda c: found[c])
        n = min(na, n1 * c)
        _, ns = cpu_per_item(pids, n, lambda: list(ex.map(double, range(n), chunksize=c)))
        result("best_cpu_ns_item", ns)
        rounds = 300 if quick else 2000
        result("rtt_submit_us", medians(lambda: ex.submit(trivial, 1).result(), rounds))


def run_job(mpirun, ranks, launcher, quick, limit):
    here = os.path.abspath(__file__)
    cmd = [mpirun, "-n", str(ranks), sys.executable, "-m", launcher, here, "--role"]
    cmd += ["procpool" if launcher == "procpool.mpi" else "mpi4py"]
    cmd += ["--quick"] if quick else []
    env = dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",  # Open MPI 4: more ranks than cores
        PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",  # Open MPI 5
    )
    print(f"python_mpi: {' '.join(cmd)}", file=sys.stderr, flush=True)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
    if p.returncode != 0:
        raise RuntimeError(f"{launcher} job failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-3000:]}")
    out = {}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            _, name, value = line.split()
            out[name] = float(value)
    return out


def load():
    """The other processes' share of the CPUs over a second (from /proc/stat)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]

    a = snap()
    time.sleep(1)
    b = snap()
    total = b[0] - a[0]
    return 1 - (b[1] - a[1]) / total if total else 0.0


def drive(args):
    mpirun = args.mpirun
    if mpirun is None:
        import procpool.mpi

        mpirun = procpool.mpi.mpirun() or shutil.which("mpirun")
    if not mpirun:
        sys.exit("python_mpi: no mpirun (--mpirun PATH)")
    busy = load()
    # Alternating jobs, each figure the median of its rounds: on a shared machine the
    # load moves between two jobs, and a single pair can differ by 2x either way.
    pps, m4s = [], []
    for _ in range(args.rounds):
        pps.append(run_job(mpirun, args.ranks, "procpool.mpi", args.quick, 600))
        m4s.append(run_job(mpirun, args.ranks, "mpi4py.futures", args.quick, 600))
    pp = {k: statistics.median(r[k] for r in pps) for k in pps[0]}
    m4 = {k: statistics.median(r[k] for r in m4s) for k in m4s[0]}
    busy = max(busy, load())
    m4_best_c = max((k for k in m4 if k.startswith("chunk") and k.endswith("_items_s")), key=lambda k: m4[k])
    m4_best = m4[m4_best_c]
    rows = [
        ("x*2 items/s, chunk 1", pp["chunk1_items_s"], m4["chunk1_items_s"], 20, ">="),
        (
            f"x*2 items/s, automatic (mpi4py best: {m4_best_c[5:-8]})",
            pp["auto_items_s"],
            m4_best,
            3,
            ">=",
        ),
        (
            "CPU ns per item, automatic (mpi4py: its best)",
            pp["auto_cpu_ns_item"],
            m4["best_cpu_ns_item"],
            None,
            "<=",
        ),
        ("round trip us, median (Pool.apply)", pp["rtt_apply_us"], m4["rtt_submit_us"], 1, "<="),
        ("round trip us, median (executor)", pp["rtt_submit_us"], m4["rtt_submit_us"], 1, "<="),
    ]
    print(
        f"mpirun -n {args.ranks} ({args.ranks - 1} workers each), median of {args.rounds} "
        f"alternating rounds; CPUs busy (all processes, before/after): {busy:.0%}"
    )
    # ratio: how many times procpool is better (faster rate, or shorter round trip).
    print(f"{'figure':<46} {'procpool':>12} {'mpi4py':>12} {'ratio':>8}  target")
    for name, a, b, target, sense in rows:
        ratio = a / b if sense == ">=" else b / a
        if target is None:
            verdict = "(no target)"
        else:
            verdict = f"ratio >= {target}: {'met' if ratio >= target else 'MISSED'}"
        print(f"{name:<46} {a:>12,.0f} {b:>12,.0f} {ratio:>7.1f}x  {verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"procpool": pps, "mpi4py": m4s, "ranks": args.ranks, "load": busy}, f, indent=1
            )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer items and rounds")
    ap.add_argument("--ranks", type=int, default=3, help="the job's ranks, rank 0 included (3)")
    ap.add_argument("--mpirun", help="the mpirun to use (default: the MPI extension's)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating jobs of each system (3)")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--role", choices=["procpool", "mpi4py"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "procpool":
        role_procpool(args.quick)
    elif args.role == "mpi4py":
        role_mpi4py(args.quick)
    else:
        drive(args)


if __name__ == "__main__":
    main()
