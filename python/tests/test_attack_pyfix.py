"""Attacks on the Python front's caller-side promises: Ctrl-C to the process group during
``map``, ``imap``, ``imap_unordered``, ``apply``, ``apply_async().get()``,
``Executor.submit().result()`` and ``Executor.map`` (KeyboardInterrupt within 1 s, no
process of the program left), and values that must never come back as another kind
(results and arguments: sockets, locks, generators, mmaps, memoryviews of odd buffers,
files of every layer)."""

import multiprocessing
import os
import select
import signal
import subprocess
import sys
import time

import pytest

import procpool
import proctools

import attack_kinds

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = r"""
import sys, time, concurrent.futures
import procpool

def slow(x):
    time.sleep(30)
    return x

def busy(x):
    return [(x, j, str(j)) for j in range(20000)]

if __name__ == "__main__":
    how = sys.argv[1]
    if how.startswith("ex_"):
        with procpool.ProcessPoolExecutor(2) as ex:
            list(ex.map(busy, range(2)))
            print("READY", flush=True)
            if how == "ex_submit":
                ex.submit(slow, 1).result()
            elif how == "ex_map":
                list(ex.map(slow, range(8)))
            elif how == "ex_map_busy":
                while True:
                    list(ex.map(busy, range(64)))
    else:
        with procpool.Pool(2) as pool:
            pool.map(busy, range(2))
            print("READY", flush=True)
            if how == "map":
                pool.map(slow, range(8))
            elif how == "imap":
                for _ in pool.imap(slow, range(8)):
                    pass
            elif how == "imap_unordered_busy":
                while True:
                    for _ in pool.imap_unordered(busy, range(64)):
                        pass
            elif how == "apply":
                pool.apply(slow, (1,))
            elif how == "apply_async":
                pool.apply_async(slow, (1,)).get()
            elif how == "starmap_async":
                pool.starmap_async(slow, [(1,)] * 4).get()
    print("ended without an interrupt", file=sys.stderr)
    sys.exit(9)
"""


@pytest.mark.limit(25)
@pytest.mark.parametrize(
    "how",
    [
        "map",
        "imap",
        "imap_unordered_busy",
        "apply",
        "apply_async",
        "starmap_async",
        "ex_submit",
        "ex_map",
        "ex_map_busy",
    ],
)
def test_ctrl_c_to_the_group(tmp_path, how):
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), how],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    idents = []
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("READY"), (line, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        time.sleep(0.5)
        below = set(proctools.descendants(proc.pid)) | set(proctools.session_members(proc.pid))
        idents = [i for i in map(proctools.identity, sorted(below)) if i]
        t = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{how}: still running 5 s after SIGINT")
        took = time.monotonic() - t
        err = proc.stderr.read()
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert last == "KeyboardInterrupt", f"{how}: {err[-2000:]}"
        assert took < 1.0, f"{how}: KeyboardInterrupt came {took:.2f} s after SIGINT"
        left = proctools.wait_gone(idents, 5)
        assert not left, f"{how}: still running 5 s after exit: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for ident in idents:
            if proctools.alive(ident):
                os.kill(ident[0], signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()


EXIT_SCRIPT = r"""
import os, signal, sys, time
import procpool

def die_soon(x):
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)

def fail_soon(x):
    time.sleep(0.5)
    raise ValueError(x)

def report(f):
    e = f.exception()
    print("settled", type(e).__name__, type(e.__cause__).__module__, flush=True)

if __name__ == "__main__":
    ex = procpool.ProcessPoolExecutor(2)
    ex.submit(die_soon, 1).add_done_callback(report)
    ex.submit(fail_soon, 2).add_done_callback(report)
    sys.exit(0)  # Python shuts down while both calls run; the executor finishes them
"""


@pytest.mark.limit(25)
def test_executor_failures_settled_while_python_shuts_down(tmp_path):
    # Futures failed by a worker's death or by the call's exception while the interpreter
    # is shutting down (the main thread has left, as after Ctrl-C) are settled with their
    # usual kinds. The results thread once imported those kinds then, which Python refuses
    # after shutdown has begun: the thread died, its future was never settled.
    script = tmp_path / "prog.py"
    script.write_text(EXIT_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=20
    )
    assert "Exception in thread" not in out.stderr, out.stderr[-2000:]
    assert sorted(out.stdout.splitlines()) == [
        "settled ExecutorWorkerDied builtins",
        "settled ValueError concurrent.futures.process",
    ], (out.stdout, out.stderr[-2000:])
    assert out.returncode == 0, out.stderr[-2000:]


RESULT_KINDS = [
    "socket", "lock", "rlock", "generator", "mmap", "mv_bytes", "mv_array", "mv_ctypes",
    "mv_mmap", "mv_cast", "file_text", "file_bin", "file_raw", "devnull", "frame",
    "event", "condition", "thread", "ctypes_ptr", "stringio", "bytesio",
]


def _kind_of(v):
    return type(v).__name__


@pytest.mark.limit(25)
def test_results_never_come_back_as_another_kind():
    ctx = multiprocessing.get_context("spawn")
    want = {}
    with ctx.Pool(1) as p:
        for k in RESULT_KINDS:
            try:
                want[k] = _kind_of(p.apply(attack_kinds.make, (k,)))
            except Exception:
                want[k] = None
    wrong = {}
    with procpool.Pool(2) as p, procpool.ProcessPoolExecutor(1) as ex:
        for k in RESULT_KINDS:
            for where, call in (
                ("apply", lambda: p.apply(attack_kinds.make, (k,))),
                ("map", lambda: p.map(attack_kinds.make, [k] * 3, chunksize=3)[1]),
                ("submit", lambda: ex.submit(attack_kinds.make, k).result(timeout=20)),
            ):
                try:
                    got = _kind_of(call())
                except Exception:
                    continue  # refused: never another kind
                if got != want[k] and got != k:
                    wrong[(k, where)] = (got, want[k])
    assert not wrong, f"(kind, call): (procpool gave, stdlib gave): {wrong}"


@pytest.mark.limit(25)
def test_arguments_never_arrive_as_another_kind():
    wrong = {}
    with procpool.Pool(2) as p:
        for k in RESULT_KINDS:
            try:
                obj = attack_kinds.make(k)
            except Exception:
                continue
            want = _kind_of(obj)
            for where, call in (
                ("apply", lambda: p.apply(attack_kinds.identity_kind, (obj,))),
                ("map", lambda: p.map(attack_kinds.identity_kind, [obj] * 3, chunksize=3)[0]),
            ):
                try:
                    got = call()
                except Exception:
                    continue
                if got != want:
                    wrong[(k, where)] = (got, want)
    assert not wrong, f"(kind, call): (arrived as, sent): {wrong}"


MIB = 1 << 20


def _outcomes(it, n):
    out = []
    for _ in range(n):
        try:
            out.append(it.next(timeout=20))
        except Exception as e:
            out.append(type(e).__name__)
    return out


@pytest.mark.limit(25)
@pytest.mark.parametrize("chunksize", [4, None])
def test_max_message_size_is_per_item_results(chunksize):
    """Each result is under the limit; together a chunk's are over it: none may fail.
    One result over it fails alone."""
    with procpool.Pool(2, max_message_size=MIB) as p:
        sizes = [300_000] * 12
        got = _outcomes(p.imap(attack_kinds.sized, sizes, chunksize=chunksize), 12)
        shown = [g if isinstance(g, str) else len(g) for g in got]
        assert shown == [300_000] * 12, shown
        sizes = [10, 2 * MIB, 10, MIB - 1000]
        got = _outcomes(p.imap(attack_kinds.sized, sizes, chunksize=chunksize), 4)
        shown = [g if isinstance(g, str) else len(g) for g in got]
        assert shown == [10, "MessageTooLarge", 10, MIB - 1000], shown


@pytest.mark.limit(25)
@pytest.mark.parametrize("chunksize", [4, None])
def test_max_message_size_is_per_item_arguments(chunksize):
    with procpool.Pool(2, max_message_size=MIB) as p:
        items = [b"a" * 300_000] * 12
        got = _outcomes(p.imap(attack_kinds.length, items, chunksize=chunksize), 12)
        assert got == [300_000] * 12, got
        items = [b"a", b"b" * (2 * MIB), b"c", b"d" * (MIB - 1000)]
        got = _outcomes(p.imap(attack_kinds.length, items, chunksize=chunksize), 4)
        assert got == [1, "MessageTooLarge", 1, MIB - 1000], got
