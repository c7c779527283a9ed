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


@pytest.mark.limit(40)
def test_a_reader_killed_while_a_writer_blocks_on_a_full_queue(pp, tmp_path):
    n = 24
    # Full by its bound: large messages travel in memfds, so a socket buffer alone would
    # not fill.
    q = pp.Queue(maxsize=2)
    first = str(tmp_path / "first")
    second = str(tmp_path / "second")
    w = pp.Process(target=T.writer, args=(q, n))
    w.start()
    r1 = pp.Process(target=T.reader, args=(q, first, n, True))
    r1.start()
    t = time.monotonic()
    while not (os.path.exists(first) and open(first).read().count("\n") >= 3):
        assert time.monotonic() - t < 15, "the first reader read nothing"
        time.sleep(0.02)
    r1.kill()
    r1.join(10)
    time.sleep(0.3)
    assert w.is_alive(), "the writer should still be blocked on the full queue"
    got1 = [tuple(map(int, line.split())) for line in open(first).read().splitlines()]
    r2 = pp.Process(target=T.reader, args=(q, second, n - len(got1) - 1, False))
    r2.start()
    w.join(20)
    r2.join(20)
    assert w.exitcode == 0, w.exitcode
    got2 = [tuple(map(int, line.split())) for line in open(second).read().splitlines()]
    got = got1 + got2
    assert all(ok for _, ok in got), f"a message arrived split or mixed: {got}"
    idx = [i for i, _ in got]
    assert len(idx) == len(set(idx)), f"a message came twice: {idx}"
    assert idx == sorted(idx), f"out of order: {idx}"
    # At most the message the killed reader was taking is lost.
    assert len(idx) >= n - 1, f"{n - len(idx)} messages lost: {idx}"
    rest = []
    while True:
        try:
            rest.append(q.get(timeout=0.5)[0])
        except Exception:
            break
    assert len(idx) + len(rest) >= n - 1 and not set(rest) & set(idx), (idx, rest)
