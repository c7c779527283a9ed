"""Attacks on ``procpool.Process`` and the objects it shares, with processes killed and
interrupted for real.

* Ctrl-C (SIGINT to the program's whole process group, as a terminal sends it) while the
  program waits in ``Process.join``, ``time.sleep``, ``Queue.get``, ``Event.wait`` or
  ``Pool.map`` with live processes: the program ends at once with ``KeyboardInterrupt``,
  as with the standard library (whose children get the same SIGINT), and leaves nothing
  running. procpool's processes run in sessions of their own: before the fix the
  interrupted program then waited at exit, in ``multiprocessing``'s join of its
  children, for a child that never saw the Ctrl-C.
* The parent SIGKILLed with a tree of processes, pools, queues and locks: nothing left.
* Several threads joining one process: each sees its exit code.
"""

import os
import signal
import subprocess
import time

import pytest

import proctools
from test_attack3_waits import _below, _reap, _start, _wait_line

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.procpool_only
@pytest.mark.limit(25)
@pytest.mark.parametrize(
    "mode", ["join", "sleep", "queue_get", "event", "map"]
)
def test_ctrl_c_with_live_processes_ends_the_program_and_them(mode):
    p, lines = _start("attack3_ctrl_c.py", mode)
    idents = []
    try:
        line = _wait_line(p, lines, "READY")
        children = [int(x) for x in line.split()[1:]]
        time.sleep(0.3)
        below = _below(p.pid) | set(children)
        idents = [i for i in map(proctools.identity, sorted(below)) if i]
        assert all(proctools.identity(c) for c in children), children
        os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(6)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{mode}: the program was still running 6 s after Ctrl-C")
        err = p.stderr.read()
        assert err.strip().splitlines()[-1] == "KeyboardInterrupt", err[-2000:]
        left = proctools.wait_gone(idents, 5)
        assert not left, f"{mode}: still running 5 s after the program ended: {left}"
    finally:
        _reap(p, idents)



def _shm():
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


@pytest.mark.limit(25)
def test_parent_sigkilled_with_a_tree_of_processes_pools_and_queues_leaves_nothing():
    """The parent holds a pool, a lock, queues and a large shared array; its processes
    block on an empty queue, on the held lock, and one runs a pool and a process of its
    own. SIGKILL of the parent ends all of them (and the templates), and leaves nothing in
    /dev/shm."""
    shm = _shm()
    p, lines = _start("attack3_tree.py")
    idents = []
    try:
        line = _wait_line(p, lines, "READY")
        pids = [int(x) for x in line.split()[1:]]
        assert len(pids) == 8, line
        below = _below(p.pid) | set(pids)
        idents = [i for i in map(proctools.identity, sorted(below)) if i]
        assert len(idents) >= 8, (below, idents)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        left = proctools.wait_gone(idents, 10)
        assert not left, f"still running 10 s after the parent was killed: {left}"
        new = {n for n in _shm() - shm if "procpool" in n or any(str(x) in n for x in below)}
        assert not new, f"left in /dev/shm: {new}"
    finally:
        _reap(p, idents)


def _exit_7_soon():
    time.sleep(0.15)
    os._exit(7)


@pytest.mark.limit(25)
def test_several_threads_joining_one_process_all_see_its_exit_code():
    """Six threads join one process while another polls ``is_alive``: every join returns
    (none raises ChildProcessError) and every thread reads ``exitcode == 7`` (before the
    fix, the threads that lost the race to reap it read 255)."""
    import threading

    import procpool

    for _ in range(15):
        p = procpool.Process(target=_exit_7_soon)
        p.start()
        errors, codes = [], []

        def join():
            try:
                p.join()
                codes.append(p.exitcode)
            except BaseException as e:
                errors.append(e)

        def watch():
            try:
                while p.is_alive():
                    time.sleep(0.001)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=join) for _ in range(6)]
        threads.append(threading.Thread(target=watch))
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not errors, errors
        assert codes == [7] * 6 and p.exitcode == 7, codes
        assert not proctools.identity(p.pid)
        p.close()


_REAPED_ELSEWHERE = r"""
import os, signal, sys, time
import procpool

def end(c):
    if c < 0:
        os.kill(os.getpid(), -c)
    os._exit(c)

if __name__ == "__main__":
    out = []
    for c in (3, 0, -signal.SIGSEGV):
        # The program reaps the process itself.
        p = procpool.Process(target=end, args=(c,))
        p.start()
        os.waitpid(p.pid, 0)
        p.join(5)
        out.append(p.exitcode)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps every child
    for c in (3, 0, -signal.SIGSEGV):
        p = procpool.Process(target=end, args=(c,))
        p.start()
        p.join(5)
        out.append(p.exitcode)
    p = procpool.Process(target=time.sleep, args=(30,))
    p.start()
    p.terminate()
    p.join(5)
    out.append(p.exitcode)
    print(out)
"""


@pytest.mark.limit(25)
def test_exit_codes_of_processes_reaped_by_the_program_or_the_kernel():
    """A program that reaps its children itself (``os.waitpid``) or sets SIGCHLD to
    SIG_IGN still reads each process's true exit code (from its pidfd, Linux 6.15 and
    later); before, every such ``exitcode`` was 255."""
    import subprocess
    import sys

    import procpool.process as pp_process

    probe = os.fork()
    if probe == 0:
        os._exit(5)
    fd = os.pidfd_open(probe)
    os.waitpid(probe, 0)
    try:
        if pp_process._pidfd_exit_code(fd) != 5:
            pytest.skip("the kernel keeps no exit status on a pidfd (before Linux 6.15)")
    finally:
        os.close(fd)
    r = subprocess.run(
        [sys.executable, "-c", _REAPED_ELSEWHERE], capture_output=True, text=True, timeout=20
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == str([3, 0, -11, 3, 0, -11, -15]), (r.stdout, r.stderr[-2000:])

