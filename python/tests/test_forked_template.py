"""The first pool (or process) of a single-threaded program forks its template from the
program instead of starting a new interpreter. The fork must look like that interpreter
where it matters: no descriptor of the program held open, the program's own modules and
Python signal handlers not inherited, and every guarantee of the template kept (the
exec'd template stays for a program that runs threads). Each check is a whole program
(``scripts/forked_template.py``)."""

import json
import os
import signal
import subprocess
import sys

import proctools
import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
SCRIPT = os.path.join(SCRIPTS, "forked_template.py")


def run(*args, env=None, timeout=60):
    done = subprocess.run(
        [sys.executable, SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=SCRIPTS,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.limit(60)
def test_single_threaded_program_forks_its_template(pp):
    assert run("kind")["template_cmdlines"] == ["same"]


@pytest.mark.limit(60)
def test_threaded_program_starts_a_new_interpreter(pp):
    (cmd,) = run("kind", "threaded")["template_cmdlines"]
    assert "procpool._template" in cmd


@pytest.mark.limit(60)
def test_large_program_starts_a_new_interpreter(pp):
    """A template forked from a program holding much data would make the program copy
    each page it writes from then on."""
    (cmd,) = run("kind", "big")["template_cmdlines"]
    assert "procpool._template" in cmd


@pytest.mark.limit(60)
def test_forking_can_be_turned_off(pp):
    env = dict(os.environ, PROCPOOL_TEMPLATE="exec")
    (cmd,) = run("kind", env=env)["template_cmdlines"]
    assert "procpool._template" in cmd


@pytest.mark.limit(60)
def test_template_holds_no_pipe_end_of_the_program(pp):
    """A child's stdin pipe, closed by the program after its first pool started: the
    child sees the end of file (a template holding the write end would keep it waiting
    forever)."""
    assert run("pipe") == {"cat_ended": True}


@pytest.mark.limit(60)
def test_program_modules_are_imported_anew_in_workers(pp):
    assert run("module") == {"worker_value": 1, "parent_value": 42}


@pytest.mark.limit(60)
def test_python_signal_handlers_are_not_inherited(pp):
    """The program ignores SIGTERM with a Python handler; its Process must not: it ends
    on ``terminate()``, as a spawned process would."""
    assert run("signal") == {"exitcode": -signal.SIGTERM}


@pytest.mark.limit(60)
def test_worker_log_records_reach_the_program_log_file(pp, tmp_path):
    log = tmp_path / "log.txt"
    assert run("logging", str(log)) == {"logged": True}
    text = log.read_text()
    assert "from parent" in text and "from worker" in text and "parent again" in text


@pytest.mark.limit(60)
def test_parent_sigkill_kills_the_forked_template_and_workers(pp):
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "sleep"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=SCRIPTS,
        start_new_session=True,
    )
    try:
        pids = json.loads(proc.stdout.readline())["pids"]
        assert len(pids) == 3  # the template and two workers
        idents = [proctools.identity(p) for p in pids]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        left = proctools.wait_gone([i for i in idents if i is not None], 5)
        assert not left, f"orphans 5 s after the parent died: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
