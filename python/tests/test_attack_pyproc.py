"""Attacks on ``procpool.Process``: exit codes of every way a process ends (abort, segfault,
``sys.exit`` with a message, none, or 300, KeyboardInterrupt, SIGTERM to itself), and a
process killed (SIGKILL) or terminated whose descendants resist: a grandchild program and
a raw fork that ignores SIGTERM, SIGHUP and SIGINT. The promise: a process's children die
with it (a child that leaves the session on purpose, ``setsid``, is documented to
escape)."""

import os
import signal
import time

import pytest

import attack_proc_tasks as T
import proctools

pytestmark = pytest.mark.usefixtures("pp")


@pytest.mark.limit(30)
@pytest.mark.parametrize(
    "how,code",
    [
        ("abort", -signal.SIGABRT),
        ("segv", -signal.SIGSEGV),
        ("exit_msg", 1),
        ("exit_none", 0),
        ("exit_300", 300 & 0xFF),
        ("kbint", 1),
        ("sigterm_self", -signal.SIGTERM),
    ],
)
def test_exit_codes(pp, how, code):
    import multiprocessing

    p = pp.Process(target=T.exit_as, args=(how,))
    p.start()
    p.join(15)
    want = multiprocessing.get_context("spawn").Process(target=T.exit_as, args=(how,))
    want.start()
    want.join(15)
    assert want.exitcode == code
    assert p.exitcode == code, (how, p.exitcode, "stdlib:", want.exitcode)


@pytest.mark.limit(30)
@pytest.mark.parametrize("kill", ["kill", "terminate"])
def test_escaping_descendants_die_with_the_process(pp, tmp_path, kill):
    path = str(tmp_path / "pids")
    p = pp.Process(target=T.spawn_escapees, args=(path,))
    p.start()
    t = time.monotonic()
    while not (os.path.exists(path) and open(path).read().endswith("\n")):
        assert time.monotonic() - t < 15, "the process did not start its children"
        time.sleep(0.05)
    pids = [int(x) for x in open(path).read().split()]
    idents = [proctools.identity(x) for x in pids]
    assert all(idents), idents
    getattr(p, kill)()
    p.join(10)
    try:
        left = proctools.wait_gone(idents, 5)
        assert not left, f"descendants still running 5 s after the process died: {left}"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
