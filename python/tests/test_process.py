"""procpool.Process: the stdlib's behaviour, and procpool's guarantees, with real
processes killed for real."""

import os
import signal
import subprocess
import sys
import time

import pytest

import procpool
import proctools

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "scripts")


def _exit_with(code):
    sys.exit(code)


def _raise():
    raise ValueError("boom in the child")


def _segfault():
    import ctypes

    ctypes.string_at(0)


def _put(q, x):
    q.put(x)


def _sleep_with_child(q):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    q.put(child.pid)
    time.sleep(60)


class Sub(procpool.Process):
    def __init__(self, q):
        super().__init__()
        self.q = q

    def run(self):
        self.q.put(("sub", self.name, procpool.current_process().name, os.getppid()))


def test_target_args_and_exit_codes():
    q = procpool.Queue()
    p = procpool.Process(target=_put, args=(q,), kwargs={"x": 42}, name="putter")
    assert p.name == "putter" and not p.is_alive() and p.exitcode is None
    p.start()
    assert q.get(timeout=20) == 42
    p.join(20)
    assert p.exitcode == 0 and not p.is_alive()
    for code in (0, 3, 255):
        p = procpool.Process(target=_exit_with, args=(code,))
        p.start()
        p.join(20)
        assert p.exitcode == code


def test_uncaught_exception_is_printed_and_exit_code_is_1(capfd):
    p = procpool.Process(target=_raise)
    p.start()
    p.join(20)
    assert p.exitcode == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and "ValueError: boom in the child" in err


def test_segfault_is_minus_11():
    p = procpool.Process(target=_segfault)
    p.start()
    p.join(20)
    assert p.exitcode == -signal.SIGSEGV


def test_terminate_kill_sentinel_and_close():
    from multiprocessing.connection import wait

    p = procpool.Process(target=time.sleep, args=(60,), daemon=True)
    p.start()
    assert p.is_alive() and p.pid > 0
    assert wait([p.sentinel], 0.1) == []
    p.terminate()
    assert wait([p.sentinel], 20) == [p.sentinel]
    p.join(20)
    assert p.exitcode == -signal.SIGTERM
    p.close()
    with pytest.raises(ValueError):
        p.is_alive()
    p = procpool.Process(target=time.sleep, args=(60,))
    p.start()
    p.join(0.05)
    assert p.exitcode is None
    p.kill()
    p.join(20)
    assert p.exitcode == -signal.SIGKILL


def test_subclass_run_current_process_and_active_children():
    q = procpool.Queue()
    p = Sub(q)
    p.start()
    kind, name, current, ppid = q.get(timeout=20)
    assert (kind, name, current, ppid) == ("sub", p.name, p.name, os.getpid())
    p.join(20)
    assert p.exitcode == 0
    assert p not in procpool.active_children()


def test_a_process_s_children_die_with_it():
    q = procpool.Queue()
    p = procpool.Process(target=_sleep_with_child, args=(q,))
    p.start()
    grandchild = q.get(timeout=20)
    ident = proctools.identity(grandchild)
    p.kill()
    p.join(20)
    assert proctools.wait_gone([ident], 10) == []


@pytest.mark.limit(60)
def test_parent_sigkilled_leaves_nothing_behind():
    code = (
        "import procpool, time, sys\n"
        "def sleep(q):\n"
        "    q.put(1); time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    q = procpool.Queue()\n"
        "    ps = [procpool.Process(target=sleep, args=(q,)) for _ in range(3)]\n"
        "    for p in ps: p.start()\n"
        "    for p in ps: q.get(timeout=20)\n"
        "    print(' '.join(str(p.pid) for p in ps), flush=True)\n"
        "    time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        line = parent.stdout.readline().decode()
        pids = [int(x) for x in line.split()]
        assert len(pids) == 3
        idents = [proctools.identity(pid) for pid in pids]
        parent.kill()
        parent.wait(20)
        assert proctools.wait_gone(idents, 10) == []
    finally:
        parent.kill()
        parent.wait()


def _run_script(name, timeout=60, nproc=None):
    cmd = [sys.executable, os.path.join(SCRIPTS, name)]
    if nproc is not None:
        cmd = ["prlimit", f"--nproc={nproc}"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=SCRIPTS)


@pytest.mark.limit(90)
def test_a_class_with_a_lock_in_main_goes_by_reference():
    r = _run_script("lock_in_main.py")
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


@pytest.mark.limit(90)
def test_unguarded_pool_is_refused_in_the_worker_and_reported():
    before = len(proctools.descendants())
    r = _run_script("unguarded_pool.py")
    assert r.returncode == 1
    assert "RuntimeError" in r.stderr and "if __name__ == '__main__':" in r.stderr
    assert "RemoteTraceback" in r.stderr  # it came from a worker
    assert len(proctools.descendants()) <= before


@pytest.mark.limit(90)
def test_unguarded_process_is_refused_in_the_child():
    r = _run_script("unguarded_process.py")
    assert r.returncode == 0, r.stderr
    assert "exitcode 1" in r.stdout
    assert "RuntimeError" in r.stderr and "bootstrapping phase" in r.stderr


def test_get_context_and_shims():
    for method in (None, "fork", "spawn", "forkserver"):
        ctx = procpool.get_context(method)
        assert ctx.Process is not None
    with pytest.raises(ValueError):
        procpool.get_context("nope")
    procpool.freeze_support()
    assert procpool.cpu_count() >= 1
    ctx = procpool.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_put, args=(q, 5))
    p.start()
    assert q.get(timeout=20) == 5
    p.join(20)


@pytest.mark.limit(90)
def test_the_engine_refuses_a_pool_in_a_worker_still_starting():
    r = _run_script("unguarded_engine.py", nproc=200)
    assert r.returncode == 0, r.stderr
    # The parent's one task fails with the worker's refusal; no worker started a pool.
    assert "[(0, False, RuntimeError(" in r.stdout and "__main__" in r.stdout
