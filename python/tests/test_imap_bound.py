"""What an ``imap`` holds in flight follows its consumer, whatever ``chunksize`` says
(issue 19: the parent's peak memory over a long ``imap`` of 1 KiB items with
``chunksize=1000``). Pinned from the run's own counters (``Run.stats()``), not from RSS:

- a chunk ends at about 128 KiB of pickled arguments (the feed's soft limit), not at
  ``chunksize`` items (1000 items of 1 KiB, 1 MiB, before);
- once one job per worker and one more are in flight, their arguments stop the input at
  one chunk per worker (before: two jobs per worker and up to 1 MiB beyond them);
- finished results held back for order stay under the feed's bound plus what was in
  flight when it was reached.

And the attacks: a worker SIGKILLed inside a cut chunk, by its own task or from outside,
costs only the item it was running; every other result comes back once, in order, with
its own value, and the iteration ends (hard time limits).
"""

import os
import threading
import time

import pytest

import imap_bound_tasks as T

KIB = 1024
#: The feed's soft limit on a chunk's arguments in an imap (`LAZY_CHUNK_BYTES`).
CHUNK_BYTES = 128 * KIB
#: One item's pickle (1 KiB of bytes and its opcodes) and the chunk's framing: a chunk
#: ends at the first item that reaches the limit.
SLACK = 2 * KIB


def _check_bounds(stats, workers, deaths=False):
    assert stats["largest_chunk_bytes"] <= CHUNK_BYTES + SLACK, stats
    assert stats["largest_chunk_items"] < 1000, stats
    if deaths:
        # After a worker's death the rest of its chunk is sent again item by item (to find
        # the item that kills), each item a job: the jobs then count items, not chunks,
        # and their arguments are that chunk's, read back from its buffer.
        assert stats["peak_payload_bytes"] <= (workers + 2) * (CHUNK_BYTES + SLACK), stats
        return
    assert stats["peak_jobs"] <= workers + 1, stats
    assert stats["peak_payload_bytes"] <= (workers + 1) * (CHUNK_BYTES + SLACK), stats
    # Held back for order: the bound (two chunks per worker, arguments and results) is
    # checked before input is pulled; the jobs then in flight may all land on top of it.
    held = 2 * workers * CHUNK_BYTES + (workers + 1) * (CHUNK_BYTES + SLACK)
    assert stats["peak_held_bytes"] <= held, stats


@pytest.mark.limit(60)
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_an_imap_of_1_kib_items_holds_a_chunk_per_worker_and_one_more(pp, workers):
    n = 30_000
    with pp.Pool(workers) as pool:
        it = pool.imap(T.slow_echo if workers == 1 else T.echo_or_die,
                       (T.item(i) for i in range(n)), chunksize=1000)
        for i in range(n):
            x = it.next(timeout=30)
            assert T.index(x) == i and len(x) == 1024
        with pytest.raises(StopIteration):
            it.next(timeout=30)
        stats = it._run.stats()
    assert stats["pulled"] == n
    assert stats["jobs"] == 0 and stats["payload_bytes"] == 0, stats
    _check_bounds(stats, workers)


@pytest.mark.limit(60)
def test_small_items_keep_their_chunksize(pp):
    # Only chunks past the soft limit are cut: 1000 small numbers stay one job.
    with pp.Pool(2) as pool:
        it = pool.imap(abs, range(-20_000, 0), chunksize=1000)
        assert list(it) == list(range(20_000, 0, -1))
        stats = it._run.stats()
    assert stats["largest_chunk_items"] == 1000, stats


@pytest.mark.limit(60)
def test_imap_unordered_is_cut_and_bounded_too(pp):
    n = 20_000
    with pp.Pool(2) as pool:
        it = pool.imap_unordered(T.echo_or_die, (T.item(i) for i in range(n)), chunksize=1000)
        got = sorted(T.index(x) for x in it)
        stats = it._run.stats()
    assert got == list(range(n))
    assert stats["peak_held_bytes"] == 0, stats
    _check_bounds(stats, 2)


@pytest.mark.limit(90)
def test_a_task_that_sigkills_its_worker_inside_a_cut_chunk_costs_its_item_alone(pp):
    n = 20_000
    killers = {0, 126, 127, 128, 5_000, 5_001, 12_345, n - 1}
    with pp.Pool(2) as pool:
        it = pool.imap(T.echo_or_die, (T.item(i, i in killers) for i in range(n)),
                       chunksize=1000)
        died = []
        for i in range(n):
            try:
                x = it.next(timeout=30)
            except pp.WorkerDied:
                died.append(i)
                continue
            assert T.index(x) == i and x[4] == 0 and len(x) == 1024
        with pytest.raises(StopIteration):
            it.next(timeout=30)
        stats = it._run.stats()
        assert pool.map(abs, [-1, -2]) == [1, 2]
    assert died == sorted(killers)
    _check_bounds(stats, 2)


@pytest.mark.limit(120)
def test_workers_sigkilled_from_outside_mid_imap_cost_their_running_items_only(pp):
    n = 40_000
    kills = []
    with pp.Pool(2) as pool:
        it = pool.imap(T.slow_echo, (T.item(i) for i in range(n)), chunksize=1000)
        stop = threading.Event()

        def killer():
            # A kill every 150 ms, of one worker or the other, while the imap runs.
            k = 0
            while not stop.wait(0.15) and len(kills) < 8:
                pids = pool.pids()
                if pids:
                    pid = pids[k % len(pids)]
                    k += 1
                    try:
                        os.kill(pid, 9)
                        kills.append(pid)
                    except ProcessLookupError:
                        pass

        t = threading.Thread(target=killer, daemon=True)
        t.start()
        died, seen = 0, 0
        try:
            for i in range(n):
                try:
                    x = it.next(timeout=30)
                except pp.WorkerDied:
                    died += 1
                    continue
                seen += 1
                assert T.index(x) == i and len(x) == 1024
            with pytest.raises(StopIteration):
                it.next(timeout=30)
        finally:
            stop.set()
            t.join(10)
        stats = it._run.stats()
        assert pool.map(abs, [-1, -2]) == [1, 2]
    assert kills, "no worker was killed: the imap ended first"
    # Each kill costs at most the item its worker was running (none if it was idle).
    assert died <= len(kills), (died, kills)
    assert seen + died == n
    _check_bounds(stats, 2, deaths=True)
