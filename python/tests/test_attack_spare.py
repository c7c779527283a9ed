"""Attacks on the spare process the template keeps ready for the next
``procpool.Process`` (``launcher.rs`` ``_request_spare``), through whole programs
(``scripts/attack_spare.py``), with processes killed for real:

* the parent SIGKILLed while a spare waits: nothing left running;
* the template SIGKILLed, with a spare waiting and with a spare asked for and not yet
  reported: every later start works, with its own exit code;
* the spare SIGKILLed before it is used (a fresh process is started instead), and
  stopped then killed while handed a target (that start's exit code says so, the next
  start works);
* a program that starts one process gets no spare (none is forked for nothing);
* 150 starts in a row and 72 from six threads at once: every exit code right, no
  descriptor, zombie or process left over;
* the caller's environment, working directory, ``sys.path`` and imported modules
  changed after the spare was forked: the process sees them as they are at ``start()``.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import proctools
from test_attack3_waits import _below, _reap, _start, _wait_line

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scripts", "attack_spare.py")

pytestmark = pytest.mark.procpool_only


def _run(mode, timeout=25):
    env = dict(os.environ)
    env.pop("PROCPOOL_PROCESS_SPARE", None)
    env.pop("SPARE_VAR", None)
    r = subprocess.run(
        [sys.executable, SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=HERE,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["zombies"] == [], out
    assert out["others"] == [], out
    return out


@pytest.mark.limit(25)
def test_parent_sigkilled_with_a_spare_waiting_leaves_nothing():
    p, lines = _start("attack_spare.py", "hold")
    idents = []
    try:
        line = _wait_line(p, lines, "READY")
        spare, template = (int(x) for x in line.split()[1:])
        below = _below(p.pid)
        assert spare in below and template in below, (spare, template, below)
        idents = [i for i in map(proctools.identity, sorted(below)) if i]
        assert proctools.identity(spare)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        left = proctools.wait_gone(idents, 5)
        assert not left, f"still running 5 s after the parent was killed: {left}"
    finally:
        _reap(p, idents)


@pytest.mark.limit(25)
def test_spare_killed_before_use_and_while_handed_a_target():
    out = _run("spare_killed")
    assert out["had_spare"]
    assert out["first"] == [3, 0]
    assert out["after"] == [4, 0, 5]
    assert out["dead_spare_reaped"]
    used, rc = out["stopped_then_killed"]
    assert rc == (-signal.SIGKILL if used else 6), out
    assert out["next"] == 7


@pytest.mark.limit(25)
def test_template_killed_with_a_spare_waiting_or_asked_for():
    out = _run("template_killed")
    assert out["first"] == [1, 0]
    assert out["spare_used"]
    assert out["codes"] == [2, 3, 0, 4, 5, 6, 7, 8, 9, 10, 0], out


@pytest.mark.limit(25)
def test_a_program_that_starts_one_process_gets_no_spare():
    out = _run("one")
    assert out["code"] == 4
    assert out["spare"] is None, out


@pytest.mark.limit(40)
def test_many_starts_in_a_row_leave_nothing_behind():
    out = _run("many", timeout=35)
    assert out["codes_ok"]
    assert out["fd_growth"] == 0, out


@pytest.mark.limit(40)
def test_starts_from_several_threads_at_once():
    out = _run("threads", timeout=35)
    assert out["errors"] == []
    assert out["codes_ok"]


@pytest.mark.limit(25)
def test_a_spare_never_shows_the_caller_s_old_state():
    out = _run("stale")
    d = out["dir"]
    assert out["a"][0] is None and out["a"][3] is False, out
    assert out["b"][0] == "changed", out
    assert out["c"][:2] == ["changed", d], out
    assert out["d"][:3] == ["changed", d, d], out
    assert out["e"] == ["changed", d, d, True], out
