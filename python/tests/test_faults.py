"""Faults for real, on procpool only (the standard library hangs or breaks on them): each
fault fails its own task alone, with an exception that says what happened, and the pool
goes on."""

import multiprocessing
import os
import signal
import time

import proctools
import pytest
import tasks

SQUARES = [x * x for x in range(20)]


def outcomes(it):
    """Drains an imap iterator: ("ok", value) or ("err", exception) per item."""
    out = []
    while True:
        try:
            out.append(("ok", it.next(timeout=20)))
        except StopIteration:
            return out
        except Exception as e:  # noqa: BLE001 - we record every kind
            out.append(("err", e))


def only_item_failed(got, n, bad, error):
    """Checks that the ``n`` outcomes ``got`` (of squaring ``range(n)``) are squares but
    item ``bad``, an ``error``; returns that error."""
    assert len(got) == n
    for i, (kind, value) in enumerate(got):
        if i == bad:
            assert kind == "err" and isinstance(value, error), got[i]
        else:
            assert (kind, value) == ("ok", i * i), (i, got[i])
    return got[bad][1]

def test_sigkill_worker_mid_task(make_pp_pool, pp, tmp_path):
    pool = make_pp_pool(2)
    path = str(tmp_path / "pid")
    r = pool.apply_async(tasks.write_pid_and_sleep, (path, 60))
    assert proctools.wait_for(lambda: os.path.exists(path), 15), "the task never started"
    with open(path) as f:
        victim = int(f.read())
    ident = proctools.identity(victim)
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(pp.WorkerDied) as info:
        r.get(timeout=20)
    err = info.value
    assert isinstance(err, multiprocessing.ProcessError)
    assert err.pid == victim
    assert err.signal == signal.SIGKILL
    assert "SIGKILL" in str(err)
    assert not proctools.wait_gone([ident], 5)
    assert pool.map(tasks.square, range(20)) == SQUARES
    assert victim not in pool.map(tasks.getpid, range(20), chunksize=1)
    # the pool's own list of workers has the replacement, not the dead one
    pids = pool.pids()
    assert len(pids) == 2 and victim not in pids
    assert all(proctools.identity(p) for p in pids)


def test_sigkill_during_map_fails_that_map_only(make_pp_pool, pp, tmp_path):
    pool = make_pp_pool(2)
    path = str(tmp_path / "pid")
    r = pool.starmap_async(tasks.write_pid_and_sleep, [(path, 60)], chunksize=1)
    other = pool.map_async(tasks.sleep_return, [0.2] * 6, chunksize=1)
    assert proctools.wait_for(lambda: os.path.exists(path), 15)
    with open(path) as f:
        os.kill(int(f.read()), signal.SIGKILL)
    with pytest.raises(pp.WorkerDied):
        r.get(timeout=20)
    assert other.get(timeout=20) == [None] * 6
    assert pool.map(tasks.square, range(20)) == SQUARES


def test_os_exit(make_pp_pool, pp):
    pool = make_pp_pool(2)
    with pytest.raises(pp.WorkerDied) as info:
        pool.apply(tasks.exit_with, (3,))
    assert info.value.exitcode == 3
    assert info.value.signal is None
    assert "3" in str(info.value)
    assert pool.map(tasks.square, range(20)) == SQUARES


def test_segfault_in_c_code(make_pp_pool, pp):
    pool = make_pp_pool(2)
    with pytest.raises(pp.WorkerDied) as info:
        pool.apply(tasks.segfault)
    assert info.value.signal == signal.SIGSEGV
    assert "SIGSEGV" in str(info.value)
    assert pool.map(tasks.square, range(20)) == SQUARES


def test_abort_signal(make_pp_pool, pp):
    pool = make_pp_pool(2)
    with pytest.raises(pp.WorkerDied) as info:
        pool.apply(tasks.kill_self, (signal.SIGABRT,))
    assert info.value.signal == signal.SIGABRT
    assert "SIGABRT" in str(info.value)


def test_death_inside_chunk_fails_only_that_item(make_pp_pool, pp):
    pool = make_pp_pool(2)
    got = outcomes(pool.imap(tasks.die_on, range(20), chunksize=10))
    assert only_item_failed(got, 20, 5, pp.WorkerDied).exitcode == 3
    with pytest.raises(pp.WorkerDied):
        pool.map(tasks.die_on, range(20), chunksize=10)
    assert pool.map(tasks.square, range(20)) == SQUARES


def test_exception_inside_chunk_fails_only_that_item(make_pp_pool, pp):
    pool = make_pp_pool(2)
    got = outcomes(pool.imap(tasks.fail_on, range(12), chunksize=6))
    only_item_failed(got, 12, 3, ValueError)


def test_death_in_imap_unordered(make_pp_pool, pp):
    pool = make_pp_pool(2)
    got = outcomes(pool.imap_unordered(tasks.die_on, range(20), chunksize=1))
    oks = sorted(v for k, v in got if k == "ok")
    errs = [v for k, v in got if k == "err"]
    assert oks == [x * x for x in range(20) if x != 5]
    assert len(errs) == 1 and isinstance(errs[0], pp.WorkerDied)


@pytest.mark.limit(40)
def test_timeout_kills_endless_loop(make_pp_pool, pp):
    pool = make_pp_pool(2, timeout=1.0)
    pids = set(pool.map(tasks.getpid, range(20), chunksize=1))
    idents = {p: proctools.identity(p) for p in pids}
    t = time.monotonic()
    with pytest.raises(pp.TaskTimeoutError) as info:
        pool.apply(tasks.spin_forever)
    assert time.monotonic() - t < 15
    err = info.value
    assert isinstance(err, multiprocessing.TimeoutError)
    assert err.timeout == pytest.approx(1.0)
    assert err.pid in pids
    assert not proctools.wait_gone([idents[err.pid]], 5), "the timed-out worker still runs"
    # the pool goes on, with a new worker
    assert pool.map(tasks.square, range(20)) == SQUARES
    assert err.pid not in pool.map(tasks.getpid, range(20), chunksize=1)


@pytest.mark.limit(40)
def test_timeout_inside_map_fails_only_that_item(make_pp_pool, pp):
    pool = make_pp_pool(2, timeout=1.0)
    got = outcomes(pool.imap(tasks.hang_on, range(12), chunksize=1))
    for i, (kind, value) in enumerate(got):
        if i == 5:
            assert kind == "err" and isinstance(value, pp.TaskTimeoutError)
        else:
            assert (kind, value) == ("ok", i * i)


def test_async_get_timeout_is_not_a_task_timeout(make_pp_pool, pp):
    """`get(timeout)` gives up waiting; the task itself keeps running and completes."""
    pool = make_pp_pool(2)
    r = pool.apply_async(tasks.sleep_return, (1.0, "done"))
    with pytest.raises(multiprocessing.TimeoutError) as info:
        r.get(timeout=0.05)
    assert not isinstance(info.value, pp.TaskTimeoutError)
    assert r.get(timeout=10) == "done"


def test_retries_after_worker_death(make_pp_pool, pp, tmp_path):
    pool = make_pp_pool(2, retries=1)
    marker = str(tmp_path / "died-once")
    pid = pool.apply(tasks.die_once, (marker,))
    assert os.path.exists(marker)
    assert isinstance(pid, int)
    pool_no_retry = make_pp_pool(1)
    marker2 = str(tmp_path / "died-once-2")
    with pytest.raises(pp.WorkerDied):
        pool_no_retry.apply(tasks.die_once, (marker2,))


def test_every_fault_in_one_map(make_pp_pool, pp, tmp_path):
    """Several faults in one stream of work: each fails its own item, the rest completes."""
    pool = make_pp_pool(2, timeout=2.0)
    jobs = [
        pool.apply_async(tasks.square, (1,)),
        pool.apply_async(tasks.exit_with, (4,)),
        pool.apply_async(tasks.square, (2,)),
        pool.apply_async(tasks.segfault),
        pool.apply_async(tasks.square, (3,)),
        pool.apply_async(tasks.spin_forever),
        pool.apply_async(tasks.square, (4,)),
        pool.apply_async(tasks.make_lock),
        pool.apply_async(tasks.fail_on, (3,)),
        pool.apply_async(tasks.square, (5,)),
    ]
    kinds = []
    for j in jobs:
        try:
            kinds.append(j.get(timeout=30))
        except Exception as e:  # noqa: BLE001
            kinds.append(type(e))
    from multiprocessing.pool import MaybeEncodingError

    assert kinds == [
        1,
        pp.WorkerDied,
        4,
        pp.WorkerDied,
        9,
        pp.TaskTimeoutError,
        16,
        MaybeEncodingError,
        ValueError,
        25,
    ]
    assert pool.map(tasks.square, range(20)) == SQUARES


def test_no_worker_left_after_faults(make_pp_pool, pp):
    warm = make_pp_pool(2)  # a first pool may start long-lived helpers (a template)
    warm.close()
    warm.join()
    before = set(proctools.descendants())
    pool = make_pp_pool(2)
    for f in (tasks.segfault, tasks.kill_self):
        with pytest.raises(pp.WorkerDied):
            pool.apply(f)
    pids = {proctools.identity(p) for p in pool.map(tasks.getpid, range(20), chunksize=1)}
    pool.close()
    pool.join()
    assert not proctools.wait_gone(pids, 5)
    assert not proctools.zombies()
    assert proctools.wait_for(lambda: set(proctools.descendants()) <= before, 5)
