"""procpool.Pool's own layer: argument checks, result plumbing and life cycle, checked
against multiprocessing.Pool where the stdlib defines the behaviour.

Tasks are builtins, stdlib functions or lambdas (pickled by value), so the workers need
nothing from this directory.
"""

import gc
import math
import multiprocessing
import operator
import os
import pickle
import sys
import threading
import time
import warnings

import pytest

import procpool
import procpool._core  # the lazy package loads it on first use; the test reads its constants

IMPLS = ["procpool", "multiprocessing"]


def make(impl, *args, **kw):
    cls = procpool.Pool if impl == "procpool" else multiprocessing.Pool
    return cls(*args, **kw)


@pytest.fixture(params=IMPLS)
def pool(request):
    p = make(request.param, 2)
    yield p
    p.terminate()
    p.join()


def outcomes(iterator):
    """Drain an iterator that may raise mid-way: [("ok", v) | ("err", type name)]."""
    out = []
    while True:
        try:
            out.append(("ok", next(iterator)))
        except StopIteration:
            return out
        except Exception as exc:
            out.append(("err", type(exc).__name__))


def _raise_at(n, exc):
    for i in range(n):
        yield i
    raise exc


@pytest.mark.parametrize(
    "kw, error, message",
    [
        (dict(processes=0), ValueError, "Number of processes must be at least 1"),
        (dict(processes=2, maxtasksperchild=0), ValueError, "maxtasksperchild"),
        (dict(processes=2, maxtasksperchild=1.5), ValueError, "maxtasksperchild"),
        (dict(processes=2, initializer=3), TypeError, "initializer must be a callable"),
    ],
)
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_arguments_raise_as_the_stdlib(impl, kw, error, message):
    if impl == "multiprocessing" and "maxtasksperchild" in kw and sys.version_info < (3, 11):
        pytest.skip("the stdlib checks maxtasksperchild from Python 3.11 on")
    with pytest.raises(error, match=message):
        make(impl, **kw)


@pytest.mark.parametrize("processes", [10**9, procpool._core.MAX_WORKERS + 1])
def test_a_huge_process_count_is_refused_before_anything_starts(processes):
    # Not a crash from trying to allocate for a billion workers: a ValueError, at once.
    with pytest.raises(ValueError, match="at most"):
        procpool.Pool(processes)
    with pytest.raises(ValueError, match="at most"):
        procpool.ProcessPoolExecutor(processes)


@pytest.mark.parametrize("kw", [dict(timeout=0), dict(timeout=-1), dict(retries=-1)])
def test_bad_procpool_keywords_are_value_errors(kw):
    with pytest.raises(ValueError):
        procpool.Pool(2, **kw)


def test_bad_chunksize(pool):
    for call in (pool.imap, pool.imap_unordered):
        with pytest.raises(ValueError, match="Chunksize must be 1"):
            call(abs, [1], chunksize=0)


def test_imap_over_an_input_that_raises_reports_it_at_its_position(pool):
    got = outcomes(pool.imap(abs, _raise_at(3, KeyError("boom")), chunksize=1))
    assert got == [("ok", 0), ("ok", 1), ("ok", 2), ("err", "KeyError")]


def test_imap_failed_items_raise_in_place_and_iteration_goes_on(pool):
    got = outcomes(pool.imap(math.sqrt, [1, -1, 4, -1, 16], chunksize=1))
    assert got == [
        ("ok", 1.0),
        ("err", "ValueError"),
        ("ok", 2.0),
        ("err", "ValueError"),
        ("ok", 4.0),
    ]


def test_map_failure_has_the_remote_traceback_as_cause(pool):
    items = [([1], 0), ({}, "a"), ([2], 0)]
    with pytest.raises(KeyError) as info:
        pool.starmap(operator.getitem, items, chunksize=1)
    assert isinstance(info.value.__cause__, multiprocessing.pool.RemoteTraceback)
    assert "KeyError" in str(info.value.__cause__)


def test_empty_inputs(pool):
    assert pool.map(abs, []) == []
    assert pool.starmap(pow, []) == []
    assert list(pool.imap(abs, [])) == []
    seen = []
    r = pool.map_async(abs, [], callback=seen.append)
    assert r.ready() and r.get(timeout=0) == []
    assert seen == []  # the stdlib calls no callback for an empty map_async


def test_map_of_a_generator(pool):
    assert pool.map(abs, (-i for i in range(50))) == list(range(50))
    assert pool.starmap(pow, ((i, 2) for i in range(5))) == [0, 1, 4, 9, 16]


def test_successful_before_ready_raises_value_error(pool):
    r = pool.apply_async(time.sleep, (0.5,))
    with pytest.raises(ValueError, match="not ready"):
        r.successful()
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(timeout=0.01)
    assert r.get(timeout=10) is None
    assert r.successful()


def test_imap_next_timeout_is_multiprocessing_timeout_error(pool):
    it = pool.imap(time.sleep, [1.0])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(timeout=10) is None
    with pytest.raises(StopIteration):
        it.next(timeout=10)


def test_pool_cannot_be_pickled(pool):
    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


def test_repr_and_state(pool):
    assert "state=RUN" in repr(pool) and "pool_size=2" in repr(pool)
    assert pool._processes == 2
    pool.close()
    assert "state=CLOSE" in repr(pool)
    pool.terminate()
    assert "state=TERMINATE" in repr(pool)


def test_closed_pool_refuses_every_method(pool):
    pool.close()
    calls = [
        lambda: pool.apply(abs, (1,)),
        lambda: pool.apply_async(abs, (1,)),
        lambda: pool.map(abs, [1]),
        lambda: pool.map_async(abs, [1]),
        lambda: pool.starmap(pow, [(1, 1)]),
        lambda: pool.starmap_async(pow, [(1, 1)]),
        lambda: pool.imap(abs, [1]),
        lambda: pool.imap_unordered(abs, [1]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    with pytest.raises(ValueError):
        pool.__enter__()


def test_callbacks_run_on_another_thread(pool):
    where = []
    r = pool.apply_async(abs, (-3,), callback=lambda v: where.append(threading.get_ident()))
    assert r.get(timeout=10) == 3
    r = pool.map_async(abs, [-1], callback=lambda v: where.append(threading.get_ident()))
    assert r.get(timeout=10) == [1]
    assert len(where) == 2 and threading.get_ident() not in where


# ---- procpool only -----------------------------------------------------------------


@pytest.fixture
def pp():
    p = procpool.Pool(2)
    yield p
    p.terminate()
    p.join()


def test_exports():
    assert procpool.TimeoutError is multiprocessing.TimeoutError
    assert issubclass(procpool.TaskTimeoutError, multiprocessing.TimeoutError)
    assert issubclass(procpool.WorkerDied, multiprocessing.ProcessError)
    assert issubclass(procpool.PoolError, RuntimeError)
    assert procpool.cpu_count() >= 1
    for name in procpool.__all__:
        assert getattr(procpool, name) is not None
    assert isinstance(procpool.__version__, str)


def test_a_raising_callback_does_not_break_the_pool(pp, capsys):
    def bad(_):
        raise RuntimeError("callback failed")

    r = pp.apply_async(abs, (-1,), callback=bad)
    assert r.get(timeout=10) == 1
    assert pp.apply(abs, (-2,)) == 2
    assert pp.map_async(abs, [-3], callback=bad).get(timeout=10) == [3]
    assert pp.apply(abs, (-4,)) == 4
    assert "callback failed" in capsys.readouterr().err


def test_terminate_fails_pending_results_instead_of_hanging(pp):
    r = pp.apply_async(time.sleep, (30,))
    m = pp.map_async(time.sleep, [30, 30])
    time.sleep(0.2)
    pp.terminate()
    for result in (r, m):
        with pytest.raises(procpool.PoolError):
            result.get(timeout=10)


def test_terminate_ends_a_blocking_apply_in_another_thread(pp):
    got = []

    def call():
        try:
            got.append(pp.apply(time.sleep, (30,)))
        except Exception as exc:
            got.append(exc)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    pp.terminate()
    t.join(10)
    assert not t.is_alive()
    assert len(got) == 1 and isinstance(got[0], procpool.PoolError)


def test_apply_from_many_threads(pp):
    results = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(pp.apply(pow, (i, 2))))
        for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results) == sorted(i * i for i in range(16))
    with pytest.raises(TypeError):
        pp.apply(id, (threading.Lock(),))
    assert pp.apply(abs, (-1,)) == 1


def test_per_call_timeout_fails_that_call_and_the_pool_goes_on(pp):
    with pytest.raises(procpool.TaskTimeoutError):
        pp.apply(time.sleep, (30,), timeout=0.5)
    got = outcomes(pp.imap(time.sleep, [0, 30, 0], chunksize=1, timeout=0.5))
    assert got == [("ok", None), ("err", "TaskTimeoutError"), ("ok", None)]
    assert pp.map(abs, [-1, -2]) == [1, 2]


def test_a_dead_worker_fails_its_task_alone(pp):
    import signal

    def die(x):
        if x == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    got = outcomes(pp.imap(die, range(5), chunksize=1))
    assert got == [("ok", 0), ("ok", 1), ("err", "WorkerDied"), ("ok", 3), ("ok", 4)]
    with pytest.raises(procpool.WorkerDied, match="SIGKILL"):
        pp.map(die, range(5), chunksize=1)
    assert pp.apply(abs, (-7,)) == 7


def test_map_raises_the_first_failure_by_input_position_not_by_time(pp):
    def fail(x):
        if x == 3:
            time.sleep(0.5)
            raise KeyError(x)
        if x == 6:
            raise IndexError(x)
        return x

    with pytest.raises(KeyError):
        pp.map(fail, range(8), chunksize=1)
    with pytest.raises(KeyError):
        pp.map_async(fail, range(8), chunksize=1).get(timeout=10)


def test_lambdas_and_closures_are_pickled_by_value(pp):
    k = 10
    assert pp.map(lambda x: x + k, [1, 2]) == [11, 12]
    assert pp.apply(lambda: k * 2) == 20


def test_a_pool_collected_while_running_warns_and_leaves_no_worker():
    p = procpool.Pool(2)
    pids = p.pids()
    assert len(pids) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del p
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    del caught  # a warning holds its source, the pool
    gc.collect()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def test_a_terminated_pool_leaves_no_worker(pp):
    pids = pp.pids()
    pp.terminate()
    assert not any(_alive(pid) for pid in pids)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _kinds(call):
    """("ok", value) or ("err", exception type name) of one call."""
    try:
        return ("ok", call())
    except Exception as exc:
        return ("err", type(exc).__name__)


def test_random_inputs_give_the_same_outcomes_as_the_stdlib():
    import random

    rng = random.Random(1234)
    with procpool.Pool(2) as ours, multiprocessing.Pool(2) as theirs:
        for _ in range(12):
            xs = [rng.choice([-1, 0, 1, 2, 9, 16, 25]) for _ in range(rng.randint(0, 60))]
            pairs = [(rng.randint(-3, 3), rng.randint(-2, 2)) for _ in range(len(xs))]
            chunksize = rng.choice([None, 1, 3, 7])
            ichunk = chunksize or 1
            for pool_a, pool_b in [(ours, theirs)]:
                for name, call in [
                    ("map", lambda p: p.map(math.sqrt, xs, chunksize)),
                    ("starmap", lambda p: p.starmap(operator.floordiv, pairs, chunksize)),
                    ("map_async", lambda p: p.map_async(math.sqrt, xs, chunksize).get(30)),
                    ("imap", lambda p: outcomes(p.imap(math.sqrt, xs, ichunk))),
                    (
                        "imap_unordered",
                        lambda p: sorted(outcomes(p.imap_unordered(math.sqrt, xs, ichunk))),
                    ),
                    ("apply", lambda p: [_kinds(lambda: p.apply(math.sqrt, (x,))) for x in xs[:5]]),
                ]:
                    a, b = _kinds(lambda: call(pool_a)), _kinds(lambda: call(pool_b))
                    if name in ("map", "map_async", "starmap") and a[0] == "err":
                        # the stdlib raises the first failure to *finish*; both fail here
                        assert b[0] == "err", (name, xs, a, b)
                    elif name == "imap" and ichunk > 1:
                        # the stdlib's chunked imap fails a whole chunk and then ends;
                        # procpool fails the item alone and goes on, as with chunksize=1
                        good = [o for o in b[1] if o[0] == "ok"]
                        assert a[1][: len(good)] == good, (name, ichunk, xs, a, b)
                        assert (("err", "ValueError") in a[1]) == (len(good) < len(b[1]))
                    elif name == "imap_unordered" and ichunk > 1:
                        pass  # the stdlib's ends at a failed chunk, in completion order
                    else:
                        assert a == b, (name, chunksize, xs, a, b)
