"""Attacks on the Python front over MPI (``python -m procpool.mpi``): results that cannot
be pickled and exceptions that cannot be rebuilt on rank 0 (that task alone fails, with
an error), tasks raising ``SystemExit``/``KeyboardInterrupt`` on an agent, and Ctrl-C (a
SIGINT to the job's whole process group, as a terminal sends it) in the middle of a map:
the job ends within seconds and leaves no process behind. Each job runs under a hard time
limit (see ``test_mpi.run_job``). The program's exit code is the job's (see also
``test_attack3_mpi_exit.py``)."""

import os
import queue
import signal
import subprocess
import threading
import time

import pytest

import proctools
from test_mpi import (
    HARD_LIMIT,
    _pids,
    check_scenario,
    run_job,
    start_job,
)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scripts", "attack3_mpi.py")


@pytest.mark.limit(HARD_LIMIT + 10)
def test_unpicklable_results_and_unrebuildable_errors_fail_their_task_alone(monkeypatch):
    import test_mpi

    monkeypatch.setattr(test_mpi, "SCENARIOS", SCRIPT)
    check_scenario("bad_results")


def _reset_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.limit(45)
def test_ctrl_c_to_the_job_mid_map_ends_it_and_leaves_nothing():
    p = start_job(["-m", "procpool.mpi", SCRIPT, "ctrl_c"], preexec_fn=_reset_sigint)
    idents = []
    try:
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in p.stdout], daemon=True).start()
        out = ""
        deadline = time.monotonic() + 30
        while "READY" not in out and time.monotonic() < deadline:
            try:
                out += lines.get(timeout=1)
            except queue.Empty:
                pass
        assert "READY" in out, (out, p.poll())
        time.sleep(0.3)  # the long map runs
        below = set(proctools.descendants(p.pid)) | set(proctools.session_members(p.pid))
        below |= set(_pids(out))
        idents = [i for i in map(proctools.identity, sorted(below)) if i]
        os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("the MPI job was still running 15 s after Ctrl-C")
        assert p.returncode != 0, p.returncode
        left = proctools.wait_gone(idents, 5)
        assert not left, f"still running 5 s after the job ended: {left}"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        for ident in idents:
            if proctools.alive(ident):
                os.kill(ident[0], signal.SIGKILL)
        p.stderr.close()


def _check_job(args, want_code, limit=30.0, **kw):
    code, out, err = run_job(args, limit=limit, **kw)
    assert code == want_code, f"{args}: exit code {code}\n{out}\n{err[-3000:]}"
    pids = _pids(out)
    left = proctools.wait_gone([i for i in map(proctools.identity, pids) if i], 5)
    assert not left, f"workers left running after the job: {left}"


@pytest.mark.limit(HARD_LIMIT + 10)
def test_the_programs_exit_code_is_the_jobs_with_its_pool_left_open():
    _check_job(["-m", "procpool.mpi", SCRIPT, "exit_code"], 3)
    _check_job(["-m", "procpool.mpi", SCRIPT, "no_pool"], 0)


@pytest.mark.limit(HARD_LIMIT + 10)
def test_shared_memory_and_locks_are_refused_by_an_mpi_pool():
    _check_job(["-m", "procpool.mpi", SCRIPT, "local_objects", "sync"], 0)


@pytest.mark.limit(HARD_LIMIT + 10)
def test_queues_and_pipes_are_refused_by_an_mpi_pool():
    _check_job(["-m", "procpool.mpi", SCRIPT, "local_objects", "channels"], 0)
