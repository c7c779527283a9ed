"""Tests of ``procpool._core``, the interface the public API is built on, with real
worker processes killed for real."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from procpool import _core
from procpool._errors import (
    MaybeEncodingError,
    PoolError,
    RemoteTraceback,
    TaskTimeoutError,
    WorkerDied,
)


def double(x):
    return x * 2


def fail_on_three(x):
    if x == 3:
        raise ValueError("three is bad")
    return x


def sleep_then(x):
    time.sleep(x)
    return x


def my_pid(_=None):
    return os.getpid()


def children() -> set[int]:
    """Pids of this process's live children (zombies included)."""
    pids = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:
            pass
    return pids


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_gone(pids, seconds=10.0) -> set[int]:
    deadline = time.monotonic() + seconds
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {p for p in left if alive(p)}
        time.sleep(0.02)
    return left


@pytest.fixture
def engine():
    e = _core.Engine(2)
    yield e
    e.terminate()
    e.join()


def test_run_ordered_unordered_and_star(engine):
    assert list(engine.run(double, range(1000))) == [(i, True, 2 * i) for i in range(1000)]
    got = sorted(engine.run(double, range(300), ordered=False, chunksize=7))
    assert got == [(i, True, 2 * i) for i in range(300)]
    assert list(engine.run(pow, [(2, 3), (3, 2)], star=True)) == [(0, True, 8), (1, True, 9)]
    assert list(engine.run(double, [])) == []


def test_collect_drains_an_ordered_run(engine):
    values, failures = engine.run(fail_on_three, range(10), chunksize=4).collect()
    assert values == [None if i == 3 else i for i in range(10)]
    assert [(i, type(e)) for i, e in failures] == [(3, ValueError)]
    run = engine.run(double, range(5))
    assert next(run) == (0, True, 0)
    assert run.collect() == ([2, 4, 6, 8], [])
    with pytest.raises(ValueError):
        engine.run(double, [1], ordered=False).collect()


def test_lambdas_and_closures_go_by_value(engine):
    k = 5
    assert [v for _, _, v in engine.run(lambda x: x + k, range(4))] == [5, 6, 7, 8]


def test_one_bad_item_fails_alone_with_remote_traceback(engine):
    out = list(engine.run(fail_on_three, range(8), chunksize=8))
    assert [ok for _, ok, _ in out] == [i != 3 for i in range(8)]
    e = out[3][2]
    assert isinstance(e, ValueError) and str(e) == "three is bad"
    assert isinstance(e.__cause__, RemoteTraceback)
    assert "fail_on_three" in str(e.__cause__)


def sleep_marked(arg):
    """Sleeps; a long sleep first writes its worker's pid to `path`."""
    path, secs = arg
    if secs > 1:
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
    time.sleep(secs)
    return secs


def test_sigkill_mid_task_fails_that_task_and_the_run_goes_on(engine, tmp_path):
    mark = str(tmp_path / "pid")
    items = [(mark, s) for s in (0.0, 30.0, 0.0, 0.0)]
    run = engine.run(sleep_marked, items, chunksize=1, ordered=False)
    first = run.next(timeout=20)  # a run is lazy: this submits its jobs
    assert first[1]
    deadline = time.monotonic() + 20
    while not os.path.exists(mark) and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(mark) as f:
        killed = int(f.read())
    os.kill(killed, signal.SIGKILL)
    rest = [run.next(timeout=20) for _ in range(3)]
    dead = [o for o in rest if not o[1]]
    assert len(dead) == 1 and dead[0][0] == 1
    e = dead[0][2]
    assert isinstance(e, WorkerDied) and e.signal == signal.SIGKILL and e.pid == killed
    assert "SIGKILL" in str(e)
    assert list(engine.run(double, range(5))) == [(i, True, 2 * i) for i in range(5)]


def exit_with(code):
    os._exit(code)


def test_os_exit_in_a_task_names_the_exit_code(engine):
    out = list(engine.run(exit_with, [3]))
    e = out[0][2]
    assert isinstance(e, WorkerDied) and e.exitcode == 3 and e.signal is None
    assert "exited with code 3" in str(e)


def exit_in_task(code):
    sys.exit(code)


def test_system_exit_in_a_task_ends_its_worker_only(engine):
    out = list(engine.run(exit_in_task, [4]))
    assert isinstance(out[0][2], WorkerDied) and out[0][2].exitcode == 4
    assert list(engine.run(double, [1, 2])) == [(0, True, 2), (1, True, 4)]


def die_once(path):
    """Kills its worker the first time (marks `path`), then succeeds."""
    if not os.path.exists(path):
        open(path, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "second try"


def test_retries_run_a_task_again_after_its_worker_died(tmp_path):
    e = _core.Engine(1, retries=1)
    try:
        assert list(e.run(die_once, [str(tmp_path / "m")])) == [(0, True, "second try")]
    finally:
        e.terminate()
    e = _core.Engine(1)
    try:
        (_, ok, err), = e.run(die_once, [str(tmp_path / "n")])
        assert not ok and isinstance(err, WorkerDied) and err.signal == signal.SIGKILL
    finally:
        e.terminate()


def die_on_five(x):
    if x == 5:
        os._exit(3)
    return x * x


@pytest.mark.parametrize("ordered", [True, False])
def test_a_death_inside_a_chunk_fails_only_its_item(engine, ordered):
    got = sorted(engine.run(die_on_five, range(20), chunksize=10, ordered=ordered))
    assert [i for i, _, _ in got] == list(range(20))
    for i, ok, v in got:
        if i == 5:
            assert not ok and isinstance(v, WorkerDied) and v.exitcode == 3
        else:
            assert (ok, v) == (True, i * i)


def test_terminate_during_a_run_ends_it_with_pool_errors():
    e = _core.Engine(2)
    run = e.run(sleep_then, [30.0] * 4, chunksize=1)
    threading.Timer(0.5, e.terminate).start()
    out = [run.next(timeout=20) for _ in range(4)]
    assert all(not ok and isinstance(v, PoolError) for _, ok, v in out)
    with pytest.raises(StopIteration):
        run.next(timeout=20)
    assert e.join(timeout=20)


@pytest.mark.parametrize("ordered", [True, False])
def test_join_runs_the_work_of_a_run_nobody_iterates(ordered):
    e = _core.Engine(2)
    # More jobs than the engine keeps in flight: the rest is pulled during the join.
    run = e.run(double, range(6000), chunksize=1, ordered=ordered)
    assert next(run)[1]
    e.close()
    assert e.join(timeout=60)
    rest = sorted(run)
    assert len(rest) == 5999 and all(ok for _, ok, _ in rest)
    assert e.pids() == []


def test_join_times_out_while_work_runs_then_terminate_ends_it():
    e = _core.Engine(1)
    s = e.stream()
    s.submit(sleep_then, (30,))
    time.sleep(0.3)
    e.close()
    assert e.join(timeout=0.2) is False
    e.terminate()
    assert e.join(timeout=20)
    assert not wait_gone(set(e.pids()))


def test_timeout_kills_the_task(engine):
    # The limit covers loading the function too (a fresh worker imports this module).
    out = list(engine.run(sleep_then, [30.0, 0.0], timeout=3))
    assert isinstance(out[0][2], TaskTimeoutError) and out[0][2].timeout == pytest.approx(3)
    assert out[1] == (1, True, 0.0)


def test_unpicklable_argument_and_result(engine):
    out = list(engine.run(type, [1, threading.Lock(), 2], chunksize=3))
    assert out[0] == (0, True, int) and out[2] == (2, True, int)
    assert not out[1][1] and isinstance(out[1][2], (TypeError, pickle.PicklingError))
    out = list(engine.run(lambda x: threading.Lock() if x == 1 else x, range(3)))
    assert out[0] == (0, True, 0) and out[2] == (2, True, 2)
    assert isinstance(out[1][2], MaybeEncodingError)


def test_input_error_raises_after_the_items_before(engine):
    def gen():
        yield 1
        yield 2
        raise KeyError("input")

    run = engine.run(double, gen())
    got = []
    with pytest.raises(KeyError):
        for o in run:
            got.append(o)
    assert got == [(0, True, 2), (1, True, 4)]


def test_keyboard_interrupt_from_the_input_is_raised_before_running_tasks_end(engine):
    def gen():
        yield 0.0
        yield 30.0
        raise KeyboardInterrupt

    run = engine.run(sleep_then, gen(), chunksize=1)
    with pytest.raises(KeyboardInterrupt):
        while True:
            run.next(timeout=10)  # a TimeoutError if it waited for the 30 s task
    run.cancel()


def test_stream_and_cancel(engine):
    s = engine.stream()
    tags = [s.submit(divmod, (7, i + 1)) for i in range(5)]
    assert tags == list(range(5))
    got = sorted(s.next(timeout=20) for _ in tags)
    assert got == [(i, True, divmod(7, i + 1)) for i in range(5)]
    t = s.submit(fail_on_three, (3,))
    tag, ok, e = s.next(timeout=20)
    assert (tag, ok) == (t, False) and isinstance(e, ValueError)
    with pytest.raises(TimeoutError):
        s.next(timeout=0.05)
    s.submit(sleep_then, (30,))
    assert s.pending() == 1
    s.cancel()
    with pytest.raises(StopIteration):
        s.next(timeout=5)
    s2 = engine.stream()
    s2.close()
    with pytest.raises(ValueError):
        s2.submit(double, (1,))
    with pytest.raises(StopIteration):
        s2.next()


def test_stream_next_waits_for_a_later_submit_from_another_thread(engine):
    s = engine.stream()
    threading.Timer(0.2, lambda: s.submit(double, (21,))).start()
    assert s.next(timeout=20) == (0, True, 42)
    threading.Timer(0.2, s.close).start()
    with pytest.raises(StopIteration):
        s.next(timeout=20)


def test_run_cancel_ends_iteration(engine):
    run = engine.run(sleep_then, [30.0] * 4, chunksize=1)
    time.sleep(0.3)
    run.cancel()
    run.cancel()
    with pytest.raises(StopIteration):
        next(run)
    assert list(engine.run(double, [1])) == [(0, True, 2)]


def init_worker(value):
    global INITIALIZED
    INITIALIZED = value


def read_init(_):
    return INITIALIZED


def test_initializer_and_recycling():
    e = _core.Engine(1, initializer=init_worker, initargs=("ready",), maxtasksperchild=2)
    try:
        assert [v for _, _, v in e.run(read_init, range(3), chunksize=1)] == ["ready"] * 3
        pids = {v for _, _, v in e.run(my_pid, range(6), chunksize=1)}
        assert len(pids) >= 3
    finally:
        e.terminate()


def test_failing_initializer_breaks_the_pool_with_its_error():
    e = _core.Engine(1, initializer=fail_on_three, initargs=(3,))
    try:
        index, ok, err = e.run(double, [1]).next(timeout=60)
        assert (index, ok) == (0, False)
        assert isinstance(err, PoolError) and "three is bad" in str(err)
    finally:
        e.terminate()


def test_bad_arguments_and_closed_engine():
    with pytest.raises(ValueError):
        _core.Engine(0)
    with pytest.raises(ValueError):
        _core.Engine(1, maxtasksperchild=0)
    e = _core.Engine(1)
    with pytest.raises(ValueError):
        e.join()
    e.close()
    with pytest.raises(ValueError, match="Pool not running"):
        e.run(double, [1])
    with pytest.raises(ValueError):
        e.stream()
    assert e.join(timeout=20)
    assert e.pids() == []


def test_large_buffers_round_trip(engine):
    big = bytes(range(256)) * 4096  # 1 MiB, out of band
    arr = bytearray(b"x" * (1 << 20))
    out = list(engine.run(lambda b: (type(b).__name__, len(b), b[:3]), [big, arr], chunksize=2))
    assert out == [(0, True, ("bytes", 1 << 20, big[:3])), (1, True, ("bytearray", 1 << 20, b"xxx"))]
    np = pytest.importorskip("numpy")
    a = np.arange(1 << 20, dtype=np.float64)
    (_, ok, b), = engine.run(lambda a: a * 2, [a])
    assert ok and (b == a * 2).all()


def test_a_new_worker_replaces_a_killed_one(engine):
    before = set(engine.pids())
    os.kill(min(before), signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = set(engine.pids())
        if len(now) == 2 and now != before:
            break
        time.sleep(0.01)
    assert len(engine.pids()) == 2 and set(engine.pids()) != before


def templates() -> set[int]:
    """This process's template children (other children, such as the stdlib's resource
    tracker started by an oracle test, or a spare process forked by the template for the
    next `procpool.Process`, which shares the template's command line, are not counted)."""
    out = set()
    spare = _core._spare_pid()
    for pid in children():
        if pid == spare:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"procpool._template" in f.read():
                    out.add(pid)
        except OSError:
            pass
    return out


def test_a_dead_template_is_started_again():
    e = _core.Engine(1)
    (template,) = templates() - set(e.pids())
    os.kill(template, signal.SIGKILL)
    e.terminate()
    e = _core.Engine(2)
    try:
        assert list(e.run(double, [1, 2])) == [(0, True, 2), (1, True, 4)]
        (new,) = templates() - set(e.pids())
        assert new != template
    finally:
        e.terminate()


def test_create_close_cycles_leak_nothing():
    # The template process lives as long as this process: start it first.
    e = _core.Engine(1)
    e.close()
    e.join()
    base_children = children()
    base_fds = len(os.listdir("/proc/self/fd"))
    base_threads = len(os.listdir("/proc/self/task"))
    for i in range(200):
        e = _core.Engine(2)
        if i % 2:
            assert list(e.run(double, [i])) == [(0, True, 2 * i)]
            e.close()
            assert e.join(timeout=20)
        else:
            e.terminate()
    left = wait_gone(children() - base_children)
    assert not left
    assert len(os.listdir("/proc/self/fd")) == base_fds
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/self/task")) > base_threads and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(os.listdir("/proc/self/task")) <= base_threads


SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from procpool import _core
    if __name__ == "__main__":  # workers import this script (as __mp_main__)
        e = _core.Engine(2)
        time.sleep(0.2)
        kids = set()
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                kids.update(int(p) for p in f.read().split())
        print(" ".join(map(str, sorted(kids))), flush=True)
        try:
            for _ in e.run(time.sleep, [60] * 8, chunksize=1):
                pass
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise
    """
)


def start_script(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    p = subprocess.Popen(
        [sys.executable, str(path)], stdout=subprocess.PIPE, text=True, cwd=str(tmp_path)
    )
    kids = {int(x) for x in p.stdout.readline().split()}
    assert len(kids) >= 3  # two workers and the template
    time.sleep(0.3)
    return p, kids


def test_ctrl_c_interrupts_a_run_and_leaves_no_process(tmp_path):
    p, kids = start_script(tmp_path)
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=20)
    finally:
        p.kill()
    assert "interrupted" in out
    assert p.returncode != 0
    assert not wait_gone(kids)


def test_parent_sigkill_leaves_no_orphan(tmp_path):
    p, kids = start_script(tmp_path)
    p.kill()
    p.wait()
    assert not wait_gone(kids)
