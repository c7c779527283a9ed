"""imap consumers that stop and start again while the pool's workers are SIGKILLed or
the pool is joined: every item comes back once, in order for imap, with its own value,
or fails alone with WorkerDied (the item its worker was running)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import procpool
from procpool import WorkerDied


def with_pid(x):
    return x, os.getpid()


def _kill_all(pool):
    killed = 0
    for pid in pool.pids():
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def _check(outcomes, n, killed, ordered):
    """`outcomes`: (index, value or exception) in the order received."""
    idx = [i for i, _ in outcomes]
    if ordered:
        assert idx == list(range(n))
    else:
        assert sorted(idx) == list(range(n))
    failed = [(i, v) for i, v in outcomes if isinstance(v, BaseException)]
    for i, v in failed:
        assert isinstance(v, WorkerDied), (i, v)
    # A death costs at most the item its worker was running.
    assert len(failed) <= killed, failed[:5]
    for i, v in outcomes:
        if not isinstance(v, BaseException):
            assert v[0] == i, (i, v)


def _drain(it, start, n):
    out = []
    i = start
    while i < n:
        try:
            v = next(it)
        except StopIteration:
            break
        except WorkerDied as e:
            v = e
        out.append((i, v))
        i += 1
    return out


@pytest.mark.limit(60)
@pytest.mark.parametrize("chunksize", [None, 7])
def test_imap_paused_while_every_worker_is_killed_then_resumed(chunksize):
    n = 20000
    with procpool.Pool(2) as pool:
        it = pool.imap(with_pid, range(n), chunksize=chunksize)
        out = _drain(it, 0, 100)
        killed = 0
        for _ in range(3):
            time.sleep(0.2)
            killed += _kill_all(pool)
            out += _drain(it, len(out), len(out) + 2000)
        out += _drain(it, len(out), n)
        _check(out, n, killed, ordered=True)


@pytest.mark.limit(60)
def test_imap_unordered_paused_while_every_worker_is_killed_then_resumed():
    n = 20000
    with procpool.Pool(2) as pool:
        it = pool.imap_unordered(with_pid, range(n), chunksize=5)
        got = []
        killed = 0
        for k in range(n):
            if k in (100, 3000, 9000):
                time.sleep(0.2)
                killed += _kill_all(pool)
            try:
                got.append(next(it))
            except WorkerDied as e:
                got.append((None, e))
        # imap_unordered gives no index for a failure: count them.
        failures = [v for i, v in got if i is None]
        assert len(failures) <= killed
        assert all(isinstance(v, WorkerDied) for v in failures)
        seen = sorted(v[0] for v in got if v[0] is not None and not isinstance(v[1], BaseException))
        assert len(seen) + len(failures) == n
        assert len(set(seen)) == len(seen)


@pytest.mark.limit(60)
def test_imap_stopped_then_joined_then_read_to_the_end():
    n = 30000
    pool = procpool.Pool(2)
    it = pool.imap(with_pid, range(n), chunksize=3)
    out = _drain(it, 0, 50)
    pool.close()
    pool.join()
    out += _drain(it, len(out), n)
    _check(out, n, 0, ordered=True)
