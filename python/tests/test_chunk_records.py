"""The per-item records of a chunk's results: every kind of value comes back as it
went (plain values recorded as they are, others as pickles with their out-of-band
buffers), a failure is its item's alone, results that outgrow what the engine records
stop the chunk (the rest go again, each item run once), and large results that finished
before a worker died inside the chunk are delivered whole."""

import math
import os
import collections

import pytest

import procpool

import record_tasks


def _expected(i):
    try:
        return ("ok", record_tasks.value_of(i))
    except Exception as e:
        return ("err", e)


def _same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b


def _runs(d):
    starts, ends = collections.Counter(), collections.Counter()
    with open(os.path.join(d, "log")) as f:
        for line in f.read().splitlines():
            what, i = line.split()
            (starts if what == "start" else ends)[int(i)] += 1
    return starts, ends


@pytest.mark.limit(30)
@pytest.mark.parametrize("chunksize", [1, 7, None])
def test_every_kind_of_result_comes_back_as_it_went(chunksize):
    n = 96
    with procpool.Pool(2) as pool:
        got = list(pool.imap(record_tasks.safe_value_of, range(n), chunksize=chunksize))
    for i in range(n):
        kind, want = _expected(i)
        k, v = got[i]
        assert k == kind, (i, got[i])
        if kind == "ok":
            assert _same(v, want), (i, v, want)
        else:
            assert type(v) is type(want) and str(v) == str(want), (i, v)


@pytest.mark.limit(30)
def test_a_failing_item_fails_alone_in_a_chunk():
    n = 48
    with procpool.Pool(2) as pool:
        it = pool.imap(record_tasks.value_of, range(n), chunksize=8)
        for i in range(n):
            kind, want = _expected(i)
            if kind == "ok":
                v = it.next(timeout=30)
                assert _same(v, want), (i, v, want)
            else:
                with pytest.raises(ValueError, match=f"item {i}$"):
                    it.next(timeout=30)


@pytest.mark.limit(30)
def test_results_past_the_record_stop_the_chunk_and_each_item_runs_once(tmp_path):
    # 700 KiB each: the engine records about 2 MiB of a chunk's results, so a chunk of 6
    # stops after its third item and the others go again.
    d = str(tmp_path)
    size = 700 * 1024
    items = [(i, size, "", d) for i in range(14)]
    with procpool.Pool(2) as pool:
        got = pool.map(record_tasks.big_logged, items, chunksize=6)
    assert [len(b) for b in got] == [size] * 14
    assert all(b == bytearray([i % 256]) * size for i, b in enumerate(got))
    starts, ends = _runs(d)
    assert all(starts[i] == 1 and ends[i] == 1 for i in range(14)), (starts, ends)


@pytest.mark.limit(30)
@pytest.mark.parametrize("how", ["segv", "kill"])
def test_large_results_finished_before_a_death_are_delivered_whole(tmp_path, how):
    d = str(tmp_path)
    size = 300 * 1024
    killers = (2, 9)
    items = [(i, size, how if i in killers else "", d) for i in range(12)]
    with procpool.Pool(2) as pool:
        it = pool.imap(record_tasks.big_logged, items, chunksize=4)
        for i in range(12):
            if i in killers:
                with pytest.raises(procpool.WorkerDied):
                    it.next(timeout=30)
            else:
                assert it.next(timeout=30) == bytearray([i % 256]) * size, i
    starts, ends = _runs(d)
    assert all(starts[i] == 1 and ends[i] == 1 for i in range(12) if i not in killers)


@pytest.mark.limit(30)
def test_starmap_takes_any_iterable_item_and_a_bad_one_fails_alone():
    with procpool.Pool(2) as pool:
        assert pool.starmap(pow, [(1, 2), [3, 4], iter((2, 5)), (8, 3)], chunksize=4) == [
            1, 81, 32, 512]
        it = pool.imap(record_tasks.star_pow, [(2, 2), 7, (2, 3)], chunksize=3)
        assert it.next(timeout=30) == 4
        with pytest.raises(TypeError):
            it.next(timeout=30)
        assert it.next(timeout=30) == 8
        with pytest.raises(TypeError):
            pool.starmap(pow, [(2, 2), 7, (2, 3)], chunksize=3)
        assert pool.starmap(pow, [(2, 2)]) == [4]
