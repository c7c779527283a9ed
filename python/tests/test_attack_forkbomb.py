"""Attacks on the fork-bomb guard: programs that start pools at import time without the
``if __name__ == "__main__":`` guard, in shapes the plain case does not try: an
``Executor``, a ``Pool`` in a helper module the task's module imports, a ``Pool`` made
inside a ``__main__`` class's ``__reduce__``-free method called at import, and a
program run with ``-m``. A watchdog counts the program's processes and kills its group
past 12: no shape may grow past a handful of processes, and each must end in bounded
time."""

import os
import signal
import subprocess
import sys
import time

import pytest

import proctools

CAP = 12

PROGRAMS = {
    "executor": """
import procpool
def f(x):
    return x + 1
ex = procpool.ProcessPoolExecutor(2)
print(list(ex.map(f, range(4))))
ex.shutdown()
""",
    "helper_module": """
import procpool, bombhelper
with procpool.Pool(2) as p:
    print(p.map(bombhelper.f, range(4)))
""",
    "imap_unguarded": """
import procpool
def g(x):
    return x * 2
pool = procpool.Pool(2)
for v in pool.imap_unordered(g, range(6)):
    print(v)
pool.close(); pool.join()
""",
    "process_and_pool": """
import procpool
def h(x):
    return x
p = procpool.Process(target=h, args=(1,))
p.start(); p.join()
with procpool.Pool(2) as pool:
    print(pool.map(h, range(3)))
""",
}

HELPER = """
import procpool
# A helper module that starts a pool when imported (no guard can help here).
_pool = procpool.Pool(2)
def f(x):
    return x * 3
"""


@pytest.mark.limit(40)
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_no_fork_bomb(tmp_path, name):
    (tmp_path / "prog.py").write_text(PROGRAMS[name])
    (tmp_path / "bombhelper.py").write_text(HELPER)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "prog.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    most = 0
    deadline = time.monotonic() + 30
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            members = set(proctools.session_members(proc.pid)) | set(proctools.descendants(proc.pid))
            most = max(most, len(members))
            if len(members) > CAP:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            out, err = proc.communicate()
            pytest.fail(f"{name}: {most} processes (cap {CAP}), still running: a fork bomb or a hang\n{err[-3000:]}")
        out, err = proc.communicate()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    assert most <= CAP, f"{name}: {most} processes"
    # Either it worked, or it was refused with the guard's advice; never silence.
    if proc.returncode != 0:
        assert "__main__" in err, f"{name}: rc {proc.returncode}\n{err[-3000:]}"
