"""Ctrl-C (SIGINT to the program's process group, as a terminal sends it) while the
program blocks in one of procpool's waits: each raises KeyboardInterrupt at once, as the
standard library's do."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

import proctools

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "scripts")


def _reset_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(script, *args, cwd=None):
    p = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, script), *args],
        cwd=cwd or HERE,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_reset_sigint,
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in p.stdout], daemon=True).start()
    return p, lines


def _wait_line(p, lines, prefix, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if p.poll() is not None:
                break
            continue
        if line.startswith(prefix):
            return line
    pytest.fail(f"no {prefix!r} line (exit code {p.poll()}): {p.stderr.read()[-3000:]}")


def _below(pid):
    return set(proctools.descendants(pid)) | set(proctools.session_members(pid))


def _reap(p, idents):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
    for ident in idents:
        if proctools.alive(ident):
            os.kill(ident[0], signal.SIGKILL)


@pytest.mark.procpool_only
@pytest.mark.limit(20)
@pytest.mark.parametrize(
    "kind",
    [
        "queue",
        "qt",
        "simple",
        "pipe",
        "jq",
        "full",
        "lock",
        "sem",
        "cond",
        "barrier",
        "event",
    ],
)
def test_ctrl_c_interrupts_every_blocking_wait(kind):
    """Each blocking call raises KeyboardInterrupt at once on Ctrl-C, as the standard
    library's do: Queue.get (with and without a timeout), SimpleQueue.get,
    Connection.recv, JoinableQueue.join, put on a full Queue, Lock/Semaphore.acquire,
    Condition.wait, Barrier.wait and Event.wait."""
    p, lines = _start("attack3_blocked.py", kind)
    try:
        _wait_line(p, lines, "READY")
        time.sleep(0.3)
        os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{kind}: still blocked 3 s after Ctrl-C")
        err = p.stderr.read()
        assert err.strip().splitlines()[-1] == "KeyboardInterrupt", err[-2000:]
    finally:
        _reap(p, [])


@pytest.mark.procpool_only
@pytest.mark.limit(25)
def test_ctrl_c_during_a_map_with_steady_results_is_prompt():
    """Three trials: each Ctrl-C raises KeyboardInterrupt within a second."""
    for _ in range(3):
        p, lines = _start("attack3_steady_map.py")
        try:
            _wait_line(p, lines, "READY")
            time.sleep(0.3)
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(1.0)
            except subprocess.TimeoutExpired:
                pytest.fail("still mapping 1 s after Ctrl-C")
            err = p.stderr.read()
            assert err.strip().splitlines()[-1] == "KeyboardInterrupt", err[-2000:]
        finally:
            _reap(p, [])
