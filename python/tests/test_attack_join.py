"""A join while a run nobody iterates still has work to send: every item runs, none
fails with "the pool is closed" (a finished item is never thrown away, and an item is
never refused because the pool stopped under a call still under way)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from procpool import _core
from procpool._errors import WorkerDied


ITERATIONS = int(os.environ.get("PROCPOOL_ATTACK_JOIN_ITERATIONS", "15"))


def double(x):
    return x * 2


class SlowToRead:
    """A result that takes 1 s to unpickle (in the caller)."""

    def __reduce__(self):
        return (read_slowly, ())


def read_slowly():
    time.sleep(1)
    return SlowToRead()


def slow_result_exit_at_35(x):
    if x in (0, 10):
        return SlowToRead()
    if 30 <= x < 35:
        time.sleep(0.1)
    if x == 35:
        os._exit(3)
    return x * 2


def slow_end(n, pause):
    """`range(n)`, then a pause before the end: the jobs sent before have all finished
    when the input is found to end (the pool has nothing left to do but wait for it)."""
    yield from range(n)
    time.sleep(pause)


def wait_for(cond, limit=30.0):
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def busy():
    """Three busy processes: on two cores the caller's threads are then often
    preempted, which widens any window between two steps of the engine."""
    code = "while True: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.limit(60)
@pytest.mark.parametrize("ordered", [True, False])
def test_the_last_items_pulled_during_a_join_run(busy, ordered):
    # One job per item: the first 2050 are sent at once, the next 500 when the join
    # pumps the run, and the input ends in that same pull, after a pause that lets the
    # jobs sent before finish (the pool is idle but for this call). The join must not
    # stop the workers between "the input ended" and the queueing of those 500 items.
    # Before, it could: under this load about one iteration in 30 to 50 had its last
    # 500 items fail with "the pool is closed" (so this test failed about half the time).
    n = 2550
    for k in range(ITERATIONS):
        e = _core.Engine(2)
        run = e.run(double, slow_end(n, 0.1), chunksize=1, ordered=ordered)
        first = next(run)
        e.close()
        assert e.join(timeout=30)
        out = sorted([first, *run])
        bad = [(i, v) for i, ok, v in out if not ok]
        assert not bad, f"iteration {k}: {len(bad)} failed, first {bad[0]}"
        assert [v for _, _, v in out] == [2 * i for i in range(n)]


@pytest.mark.parametrize("ordered", [True, False])
def test_join_waits_for_the_items_a_consumer_sends_again_after_a_death(ordered):
    # A chunk's worker dies at item 35. Its items 36-39 are sent again only when the
    # run's consumer receives that chunk's end, and the consumer is busy reading an
    # earlier result (1 s to unpickle) when the join starts. The join must wait for
    # the items it will send again. Before, the input had ended, so the join stopped
    # the workers at once, and items 36-39 failed with "the pool is closed".
    e = _core.Engine(2)
    run = e.run(slow_result_exit_at_35, range(40), chunksize=10, ordered=ordered)
    got = []
    consumer = threading.Thread(target=lambda: got.extend(run))
    consumer.start()
    try:
        wait_for(lambda: e.stats()["workers_replaced"] >= 1)
        wait_for(lambda: e.stats()["in_flight"] == 0 and e.stats()["queued"] == 0)
        e.close()
        assert e.join(timeout=20)
    finally:
        consumer.join(20)
    assert not consumer.is_alive()
    out = sorted(got, key=lambda t: t[0])
    assert [t[0] for t in out] == list(range(40))
    for i, ok, v in out:
        if i == 35:
            assert not ok and isinstance(v, WorkerDied), v
        elif i in (0, 10):
            assert ok and isinstance(v, SlowToRead), v
        else:
            assert ok and v == 2 * i, (i, v)
    assert e.pids() == []


def test_join_ends_for_an_ordered_run_whose_results_pass_the_reorder_bound():
    # 6000 results of 2 KB (12 MB, past the 4 MiB an ordered run holds back) and nobody
    # iterates: the join runs them all, as multiprocessing's does. Before, the join
    # waited for ever (the run stopped pulling input), and the run, ended by the join's
    # pump, then gave 3074 items, all successful, and no error for the 2925 others.
    e = _core.Engine(2)
    run = e.run(bytes, [2000] * 6000, chunksize=1, ordered=True)
    assert next(run) == (0, True, bytes(2000))
    e.close()
    assert e.join(timeout=20)
    rest = list(run)
    assert [i for i, _, _ in rest] == list(range(1, 6000))
    assert all(ok and v == bytes(2000) for _, ok, v in rest)


def test_a_run_cut_short_never_ends_quietly():
    # However a join and a terminate fall on a run nobody iterates, its outcomes cover
    # every item, or the run says which did not run. Before, the join's pump could end
    # the run (the reorder bound stopped its input): after a terminate the run gave
    # 3074 successes and simply stopped.
    e = _core.Engine(2)
    run = e.run(bytes, [2000] * 6000, chunksize=1, ordered=True)
    assert next(run)[1]
    e.close()
    e.join(timeout=0.5)
    e.terminate()
    assert e.join(timeout=20)
    rest = list(run)
    assert [i for i, _, _ in rest] == list(range(1, len(rest) + 1))
    assert len(rest) == 5999 or not all(ok for _, ok, _ in rest)
