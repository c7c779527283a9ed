"""Drop-in behaviour: every `multiprocessing.Pool` method, run on procpool and on the
standard library (the oracle) with the same inputs and the same expectations."""

import multiprocessing
import os
import threading
import time
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback

import pytest
import tasks
from tasks import CustomError

# ---- apply / apply_async ----------------------------------------------------------------


def test_apply(make_pool):
    pool = make_pool()
    assert pool.apply(tasks.square, (7,)) == 49
    assert pool.apply(tasks.add_kw, (1,), {"b": 2, "c": 3}) == 6
    assert pool.apply(tasks.add_kw, (1, 10)) == 11
    assert pool.apply(tasks.getpid) != os.getpid()


def test_apply_async_result(make_pool):
    pool = make_pool()
    r = pool.apply_async(tasks.add, (2, 3))
    assert r.get(timeout=10) == 5
    assert r.ready()
    assert r.successful()
    assert r.get() == 5  # a result can be read again


def test_apply_async_not_ready(make_pool):
    pool = make_pool()
    r = pool.apply_async(tasks.sleep_return, (1.0, "late"))
    assert not r.ready()
    with pytest.raises(ValueError):
        r.successful()  # not ready yet
    t = time.monotonic()
    r.wait(0.1)
    assert time.monotonic() - t < 0.9
    assert not r.ready()
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(timeout=0.05)
    assert r.get(timeout=10) == "late"
    r.wait()
    assert r.ready() and r.successful()


def test_apply_async_failure(make_pool):
    pool = make_pool()
    r = pool.apply_async(tasks.fail_on, (3,))
    r.wait(10)
    assert r.ready()
    assert not r.successful()
    with pytest.raises(ValueError, match="bad item 3"):
        r.get(timeout=10)


def test_callbacks(make_pool):
    pool = make_pool()
    got, errors, done = [], [], threading.Event()

    def on_result(v):
        got.append(v)
        done.set()

    def on_error(e):
        errors.append(e)
        done.set()

    r = pool.apply_async(tasks.square, (4,), callback=on_result, error_callback=on_error)
    assert r.get(timeout=10) == 16
    assert done.wait(10)
    assert got == [16] and errors == []

    done.clear()
    r = pool.apply_async(tasks.fail_on, (3,), callback=on_result, error_callback=on_error)
    with pytest.raises(ValueError):
        r.get(timeout=10)
    assert done.wait(10)
    assert got == [16]
    assert len(errors) == 1 and isinstance(errors[0], ValueError)

    done.clear()
    r = pool.map_async(tasks.square, range(5), callback=on_result, error_callback=on_error)
    assert r.get(timeout=10) == [0, 1, 4, 9, 16]
    assert done.wait(10)
    assert got[-1] == [0, 1, 4, 9, 16]

    done.clear()
    r = pool.starmap_async(tasks.add, [(1, 2), (3, 4)], callback=on_result)
    assert r.get(timeout=10) == [3, 7]
    assert done.wait(10)
    assert got[-1] == [3, 7]

    done.clear()
    r = pool.map_async(tasks.fail_on, range(6), chunksize=1, error_callback=on_error)
    with pytest.raises(ValueError):
        r.get(timeout=10)
    assert done.wait(10)
    assert isinstance(errors[-1], ValueError)


def test_callback_runs_before_get_returns_for_ready(make_pool):
    """By the time `ready()` is true, the callback has run (the stdlib calls it first)."""
    pool = make_pool()
    seen = []
    r = pool.apply_async(tasks.square, (3,), callback=seen.append)
    r.wait(10)
    assert r.ready()
    assert seen == [9]


# ---- map family ---------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 3, 1000])
def test_map(make_pool, chunksize):
    pool = make_pool()
    items = list(range(257))
    assert pool.map(tasks.square, items, chunksize) == [x * x for x in items]
    assert pool.map(tasks.square, items, chunksize=chunksize) == [x * x for x in items]


def test_map_inputs(make_pool):
    pool = make_pool()
    assert pool.map(tasks.square, []) == []
    assert pool.map(tasks.square, (x for x in range(10))) == [x * x for x in range(10)]
    assert pool.map(tasks.square, range(5)) == [0, 1, 4, 9, 16]
    assert pool.map(tasks.identity, ["a", b"b", None, (1, 2), {"k": [1]}]) == [
        "a",
        b"b",
        None,
        (1, 2),
        {"k": [1]},
    ]


def test_map_async(make_pool):
    pool = make_pool()
    r = pool.map_async(tasks.square, range(100), chunksize=7)
    assert r.get(timeout=10) == [x * x for x in range(100)]
    assert r.ready() and r.successful()
    r = pool.map_async(tasks.sleep_return, [1.0])
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(timeout=0.05)
    assert r.get(timeout=10) == [None]


def test_map_failure(make_pool):
    pool = make_pool()
    with pytest.raises(ValueError, match="bad item 3"):
        pool.map(tasks.fail_on, range(10))
    with pytest.raises(ValueError, match="bad item 3"):
        pool.map(tasks.fail_on, range(10), chunksize=1)
    r = pool.map_async(tasks.fail_on, range(10))
    r.wait(10)
    assert r.ready() and not r.successful()
    # the pool goes on
    assert pool.map(tasks.square, range(10)) == [x * x for x in range(10)]


@pytest.mark.parametrize("chunksize", [1, 4])
def test_imap(make_pool, chunksize):
    pool = make_pool()
    it = pool.imap(tasks.square, range(50), chunksize)
    assert iter(it) is it
    assert list(it) == [x * x for x in range(50)]
    assert list(pool.imap(tasks.square, [])) == []
    assert list(pool.imap(tasks.square, (x for x in range(5)))) == [0, 1, 4, 9, 16]


def test_imap_next_timeout(make_pool):
    pool = make_pool()
    it = pool.imap(tasks.sleep_return, [1.0, 0.0], chunksize=1)
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(timeout=10) is None
    assert it.next(timeout=10) is None
    with pytest.raises(StopIteration):
        it.next(timeout=10)


def test_imap_failure_then_continues(make_pool):
    """A failed item raises at its place; iteration goes on with the next items."""
    pool = make_pool()
    it = pool.imap(tasks.fail_on, range(6), chunksize=1)
    out = []
    while True:
        try:
            out.append(next(it))
        except StopIteration:
            break
        except ValueError as e:
            out.append(type(e))
    assert out == [0, 1, 4, ValueError, 16, 25]


@pytest.mark.parametrize("chunksize", [1, 5])
def test_imap_unordered(make_pool, chunksize):
    pool = make_pool()
    got = list(pool.imap_unordered(tasks.square, range(100), chunksize))
    assert sorted(got) == [x * x for x in range(100)]
    assert len(got) == 100


def test_imap_unordered_is_completion_order(make_pool):
    pool = make_pool()
    got = list(pool.imap_unordered(tasks.sleep_tag, [(1.0, "slow"), (0.0, "fast")], chunksize=1))
    # the fast item comes out first although it is second
    assert got == ["fast", "slow"]


def test_imap_bad_chunksize(make_pool):
    pool = make_pool()
    with pytest.raises(ValueError):
        pool.imap(tasks.square, range(3), chunksize=0)
    with pytest.raises(ValueError):
        pool.imap_unordered(tasks.square, range(3), chunksize=0)


@pytest.mark.parametrize("chunksize", [None, 1, 2])
def test_starmap(make_pool, chunksize):
    pool = make_pool()
    pairs = [(i, 10 * i) for i in range(30)]
    assert pool.starmap(tasks.add, pairs, chunksize) == [11 * i for i in range(30)]
    assert pool.starmap(tasks.add, iter(pairs)) == [11 * i for i in range(30)]
    assert pool.starmap_async(tasks.add, pairs, chunksize).get(timeout=10) == [
        11 * i for i in range(30)
    ]
    assert pool.starmap(tasks.add, []) == []
    with pytest.raises(TypeError):
        pool.starmap(tasks.add, [(1, 2, 3)])


# ---- exceptions ---------------------------------------------------------------------------


def test_exception_has_remote_traceback(make_pool):
    pool = make_pool()
    with pytest.raises(KeyError) as info:
        pool.apply(tasks.deep_raise, (3,))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    text = str(cause)
    assert "Traceback (most recent call last)" in text
    assert "deep_raise" in text
    assert "tasks.py" in text
    assert "KeyError: 'deep'" in text


def test_custom_exception_round_trip(make_pool):
    pool = make_pool()
    with pytest.raises(CustomError) as info:
        pool.apply(tasks.fail_custom, (42,))
    assert info.value.code == 42
    assert info.value.args == (42, "custom failure")
    assert isinstance(info.value.__cause__, RemoteTraceback)


def test_unpicklable_argument(make_pool):
    pool = make_pool()
    lock = threading.Lock()
    with pytest.raises(TypeError):
        pool.apply(tasks.identity, (lock,))
    with pytest.raises(TypeError):
        pool.map(tasks.identity, [1, lock, 3], chunksize=1)
    # the pool goes on
    assert pool.map(tasks.square, range(5)) == [0, 1, 4, 9, 16]


def test_unpicklable_result(make_pool):
    pool = make_pool()
    with pytest.raises(MaybeEncodingError) as info:
        pool.apply(tasks.make_lock)
    assert "lock" in str(info.value)
    with pytest.raises(MaybeEncodingError):
        pool.map(tasks.make_lock, range(3), chunksize=1)
    assert pool.map(tasks.square, range(5)) == [0, 1, 4, 9, 16]


# ---- lifecycle ----------------------------------------------------------------------------


def test_bad_processes(make_pool):
    with pytest.raises(ValueError):
        make_pool(0)
    with pytest.raises((ValueError, TypeError)):
        make_pool(-1)


def test_closed_pool_refuses_work(make_pool):
    pool = make_pool()
    pool.close()
    with pytest.raises(ValueError):
        pool.apply(tasks.square, (1,))
    with pytest.raises(ValueError):
        pool.apply_async(tasks.square, (1,))
    with pytest.raises(ValueError):
        pool.map(tasks.square, [1])
    with pytest.raises(ValueError):
        pool.map_async(tasks.square, [1])
    with pytest.raises(ValueError):
        pool.imap(tasks.square, [1])
    with pytest.raises(ValueError):
        pool.imap_unordered(tasks.square, [1])
    with pytest.raises(ValueError):
        pool.starmap(tasks.add, [(1, 2)])
    with pytest.raises(ValueError):
        pool.starmap_async(tasks.add, [(1, 2)])
    pool.join()


def test_join_needs_close(make_pool):
    pool = make_pool()
    with pytest.raises(ValueError):
        pool.join()
    pool.close()
    pool.join()


def test_close_lets_work_finish(make_pool):
    pool = make_pool()
    pids = set(pool.map(tasks.getpid, range(20), chunksize=1))
    r = pool.map_async(tasks.sleep_return, [0.3] * 4, chunksize=1)
    pool.close()
    pool.join()
    assert r.ready()
    assert r.get(timeout=0) == [None] * 4
    # its workers are gone
    assert all(not os.path.exists(f"/proc/{p}") or _zombie(p) for p in pids)


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_terminate_stops_work(make_pool):
    pool = make_pool()
    pool.map(tasks.square, range(4))
    pool.apply_async(tasks.sleep_return, (30,))
    t = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - t < 10
    with pytest.raises(ValueError):
        pool.map(tasks.square, [1])


def test_context_manager(make_pool):
    pool = make_pool()
    with pool as p:
        assert p is pool
        assert p.map(tasks.square, range(4)) == [0, 1, 4, 9]
    # exit terminates, as the standard library does
    with pytest.raises(ValueError):
        pool.map(tasks.square, [1])
    pool.join()


def test_context_manager_on_exception(make_pool):
    pool = make_pool()
    with pytest.raises(ZeroDivisionError), pool:
        pool.apply_async(tasks.sleep_return, (30,))
        raise ZeroDivisionError("leaving the block by an exception")
    pool.join()


def test_initializer(make_pool):
    pool = make_pool(2, initializer=tasks.init_global, initargs=("ready",))
    got = pool.map(tasks.get_init, range(20), chunksize=1)
    assert {v for v, _ in got} == {"ready"}


def test_maxtasksperchild(make_pool):
    pool = make_pool(2, maxtasksperchild=2)
    pids = pool.map(tasks.getpid, range(12), chunksize=1)
    # each worker runs at most two tasks, so at least six processes ran them
    assert len(set(pids)) >= 6
    for pid in set(pids):
        assert pids.count(pid) <= 2
    assert pool.map(tasks.square, range(10), chunksize=1) == [x * x for x in range(10)]


def test_same_pool_from_threads(make_pool):
    pool = make_pool()
    out = {}

    def worker(k):
        out[k] = pool.starmap(tasks.add, [(k, i) for i in range(50)])

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    assert out == {k: [k + i for i in range(50)] for k in range(4)}
