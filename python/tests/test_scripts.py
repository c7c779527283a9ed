"""Whole programs run as `python script.py`: code the workers cannot import, Ctrl-C during
`map`, and a parent killed while its pool works."""

import json
import os
import select
import signal
import subprocess
import sys
import time

import proctools
import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")


def run_script(name, *args, cwd, timeout=60):
    return subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, name), *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_lambdas_closures_and_main_functions(pp, tmp_path):
    done = run_script("main_funcs.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out == {
        "main_func": [100, 101, 102, 103, 104],
        "main_class": [0, 1, 2],
        "helper": [0, 3, 6, 9, 12],
        "in_worker": True,
        "lambda": [0, 1, 4, 9, 16],
        "closure": [0, 3, 6, 9, 12],
        "local_lambda": [7, 8, 9],
        "apply_lambda": 6,
        "starmap_lambda": [6, 20],
        "imap_closure": [0, -1, -2],
        "unordered_lambda": [-3, -2, -1, 0],
        "async_lambda": True,
        "executor_lambda": [1, 2, 3],
        "executor_submit": 10,
    }


def test_main_functions_match_the_stdlib(pp, tmp_path):
    """The parts that go by reference give what multiprocessing gives."""
    ours = run_script("main_funcs.py", cwd=tmp_path)
    theirs = run_script("main_funcs.py", "--stdlib", cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr
    assert theirs.returncode == 0, theirs.stderr
    ours, theirs = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert {k: ours[k] for k in theirs} == theirs


class Running:
    """`long_map.py` started in its own session, once it printed its worker pids."""

    def __init__(self, tmp_path):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(SCRIPTS, "long_map.py")],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.idents = []
        try:
            self._wait_ready()
        except BaseException:
            self.end()
            raise

    def _wait_ready(self):
        line = self._readline(30)
        assert line.startswith("READY "), f"no READY line: {line!r} {self._stderr()}"
        self.worker_pids = json.loads(line.split(" ", 1)[1])
        time.sleep(0.5)  # the long map is running now
        below = set(proctools.descendants(self.proc.pid))
        below |= set(proctools.session_members(self.proc.pid))
        self.idents = [i for i in map(proctools.identity, sorted(below)) if i]
        found = {i[0] for i in self.idents}
        assert set(self.worker_pids) <= found, (self.worker_pids, found)

    def _readline(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else ""

    def _stderr(self):
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read()

    def end(self):
        """Kills whatever is left (the session) so that no test leaves a process."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its session's group, if anything is left
        except (ProcessLookupError, PermissionError):
            pass
        for ident in self.idents:
            if proctools.alive(ident):
                try:
                    os.kill(ident[0], signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def running(pp, tmp_path):
    r = Running(tmp_path)
    yield r
    r.end()


@pytest.mark.limit(60)
@pytest.mark.parametrize("to", ["process", "process-group"])
def test_ctrl_c_during_map(running, to):
    """SIGINT to the parent alone, or to its whole process group as a terminal's Ctrl-C
    does: KeyboardInterrupt at once, the program exits, and no worker stays behind."""
    t = time.monotonic()
    if to == "process":
        os.kill(running.proc.pid, signal.SIGINT)
    else:
        os.killpg(running.proc.pid, signal.SIGINT)
    try:
        running.proc.wait(5)
    except subprocess.TimeoutExpired:
        pytest.fail("the program was still running 5 s after SIGINT")
    took = time.monotonic() - t
    err = running.proc.stderr.read()
    assert "KeyboardInterrupt" in err, err
    assert "ended by itself" not in err
    assert running.proc.returncode != 0
    left = proctools.wait_gone(running.idents, 5)
    assert not left, f"still running 5 s after exit: {left}"
    assert took < 5


@pytest.mark.limit(60)
def test_parent_sigkill_leaves_no_orphan(running):
    os.kill(running.proc.pid, signal.SIGKILL)
    running.proc.wait(10)
    left = proctools.wait_gone(running.idents, 5)
    assert not left, f"orphans 5 s after the parent died: {left}"
