"""Ctrl-C in the caller is the caller's (issue 17 item 4): a SIGINT to a program's
process group, as a terminal sends it, raises KeyboardInterrupt out of ``Pool.map`` at
once, even when it lands while the parent unpickles a result, and no worker is left.
Never is it taken for a task's bad result."""

import os
import random
import select
import signal
import subprocess
import sys
import time

import pytest

import proctools

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
TRIALS = 8


def _trial(tmp_path, delay):
    proc = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, "busy_map.py")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    idents = []
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("READY"), (line, proc.poll())
        time.sleep(delay)
        below = set(proctools.descendants(proc.pid)) | set(proctools.session_members(proc.pid))
        idents = [i for i in map(proctools.identity, sorted(below)) if i]
        t = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail("the program was still running 5 s after SIGINT")
        took = time.monotonic() - t
        err = proc.stderr.read()
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert last == "KeyboardInterrupt", err[-2000:]
        assert "cannot be read" not in err, err[-2000:]
        assert took < 1.0, f"KeyboardInterrupt came {took:.2f} s after SIGINT"
        left = proctools.wait_gone(idents, 5)
        assert not left, f"still running 5 s after exit: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for ident in idents:
            if proctools.alive(ident):
                os.kill(ident[0], signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.procpool_only
@pytest.mark.limit(120)
def test_ctrl_c_to_the_group_during_map_with_slow_results(pp, tmp_path):
    rng = random.Random(17)
    for _ in range(TRIALS):
        _trial(tmp_path, rng.uniform(0.2, 0.8))


_INTERRUPTS = {"left": 0}


def _rebuild(value):
    """Unpickles a result in the parent: the first times, as if Ctrl-C came right then."""
    if _INTERRUPTS["left"] > 0:
        _INTERRUPTS["left"] -= 1
        raise KeyboardInterrupt
    return value


class InterruptedWhenRead:
    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return (_rebuild, (self.value,))


def interrupted_when_read(x):
    return InterruptedWhenRead(x) if x == 3 else x


@pytest.mark.procpool_only
@pytest.mark.parametrize("ordered", [True, False])
def test_ctrl_c_while_a_result_is_read_loses_no_result(pp, ordered):
    """A KeyboardInterrupt raised while the parent unpickles a result reaches the caller
    (never a task error); iterating again reads that result again: nothing is lost."""
    _INTERRUPTS["left"] = 2
    with pp.Pool(2) as pool:
        method = pool.imap if ordered else pool.imap_unordered
        it = method(interrupted_when_read, range(8), chunksize=1)
        got, interrupts = [], 0
        while True:
            try:
                got.append(next(it))
            except KeyboardInterrupt:
                interrupts += 1
            except StopIteration:
                break
        assert interrupts == 2
        assert sorted(got) == list(range(8))
        if ordered:
            assert got == list(range(8))
        _INTERRUPTS["left"] = 1
        with pytest.raises(KeyboardInterrupt):
            pool.map(interrupted_when_read, range(8), chunksize=1)
        assert pool.map(abs, [-1, -2]) == [1, 2]  # the pool goes on
