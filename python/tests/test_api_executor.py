"""procpool.ProcessPoolExecutor's own layer: futures, cancellation, shutdown, map's overall
time limit, asyncio, checked against concurrent.futures.ProcessPoolExecutor where the
stdlib defines the behaviour.

Tasks are builtins, stdlib functions or lambdas (pickled by value).
"""

import asyncio
import concurrent.futures
import math
import os
import signal
import sys
import threading
import time

import pytest

import procpool

IMPLS = ["procpool", "concurrent.futures"]


def make(impl, *args, **kw):
    if impl == "procpool":
        return procpool.ProcessPoolExecutor(*args, **kw)
    return concurrent.futures.ProcessPoolExecutor(*args, **kw)


@pytest.fixture(params=IMPLS)
def ex(request):
    e = make(request.param, 2)
    yield e
    e.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize(
    "kw, error",
    [
        (dict(max_workers=0), ValueError),
        (dict(max_workers=-1), ValueError),
        (dict(max_workers=1, max_tasks_per_child=0), ValueError),
        (dict(max_workers=1, max_tasks_per_child="3"), TypeError),
        (dict(max_workers=1, initializer=3), TypeError),
    ],
)
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_arguments_raise_as_the_stdlib(impl, kw, error):
    if impl != "procpool" and "max_tasks_per_child" in kw and sys.version_info < (3, 11):
        pytest.skip("the stdlib has max_tasks_per_child from Python 3.11 on")
    with pytest.raises(error):
        make(impl, **kw)


def test_is_an_executor():
    with procpool.ProcessPoolExecutor(1) as e:
        assert isinstance(e, concurrent.futures.Executor)
        f = e.submit(abs, -1)
        assert isinstance(f, concurrent.futures.Future)
        assert f.result(timeout=10) == 1


def test_submit_results_and_exceptions(ex):
    assert ex.submit(pow, 2, 10).result(timeout=10) == 1024
    assert ex.submit(int, "7", base=8).result(timeout=10) == 7
    f = ex.submit(math.sqrt, -1)
    assert isinstance(f.exception(timeout=10), ValueError)
    with pytest.raises(ValueError):
        f.result()


def test_as_completed_and_wait(ex):
    fs = [ex.submit(time.sleep, d) for d in (0.6, 0.0, 0.3)]
    order = [fs.index(f) for f in concurrent.futures.as_completed(fs, timeout=20)]
    assert sorted(order) == [0, 1, 2] and order[-1] == 0
    done, not_done = concurrent.futures.wait(fs, timeout=20)
    assert len(done) == 3 and not not_done
    first = ex.submit(time.sleep, 5)
    quick = ex.submit(abs, -1)
    done, _ = concurrent.futures.wait(
        [first, quick], return_when=concurrent.futures.FIRST_COMPLETED, timeout=20
    )
    assert quick in done and first not in done


def test_map_in_order_and_its_exception_ends_it(ex):
    assert list(ex.map(pow, range(6), [2] * 6)) == [0, 1, 4, 9, 16, 25]
    assert list(ex.map(abs, [])) == []
    it = ex.map(math.sqrt, [4, -1, 9])
    assert next(it) == 2.0
    with pytest.raises(ValueError):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_map_timeout_covers_the_whole_iteration(ex):
    it = ex.map(time.sleep, [0, 10], timeout=0.5)
    assert next(it) is None
    start = time.monotonic()
    with pytest.raises(concurrent.futures.TimeoutError):
        next(it)
    assert time.monotonic() - start < 5


def test_map_timeout_counts_from_the_call(ex):
    it = ex.map(time.sleep, [2.0], timeout=0.5)
    time.sleep(0.8)
    with pytest.raises(concurrent.futures.TimeoutError):
        next(it)


def test_map_bad_chunksize(ex):
    with pytest.raises(ValueError):
        ex.map(abs, [1], chunksize=0)


def test_cancel_a_call_not_yet_handed_to_a_worker():
    for impl in IMPLS:
        with make(impl, 1) as e:
            running = e.submit(time.sleep, 1)
            queued = [e.submit(abs, -i) for i in range(12)]
            last = queued[-1]
            assert last.cancel(), impl
            assert last.cancelled()
            with pytest.raises(concurrent.futures.CancelledError):
                last.result()
            assert [f.result(timeout=20) for f in queued[:-1]] == list(range(11))
            assert running.result(timeout=20) is None


def test_shutdown_cancel_futures():
    for impl in IMPLS:
        e = make(impl, 1)
        first = e.submit(time.sleep, 0.5)
        rest = [e.submit(abs, -i) for i in range(12)]
        e.shutdown(wait=True, cancel_futures=True)
        assert first.result(timeout=0) is None
        assert rest[-1].cancelled(), impl
        for f in rest:
            assert f.done()


def test_shutdown_waits_and_refuses_new_work(ex):
    fs = [ex.submit(time.sleep, 0.2) for _ in range(4)]
    ex.shutdown(wait=True)
    assert all(f.done() and f.result() is None for f in fs)
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)
    with pytest.raises(RuntimeError):
        ex.map(abs, [1])
    ex.shutdown()  # twice is fine


def test_shutdown_without_wait_still_finishes_the_work(ex):
    fs = [ex.submit(pow, i, 2) for i in range(8)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=20) for f in fs] == [i * i for i in range(8)]


def test_run_in_executor(ex):
    async def main():
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(ex, pow, i, 3) for i in range(5)))
        return results

    assert asyncio.run(main()) == [0, 1, 8, 27, 64]


def test_callbacks_and_threads(ex):
    seen = []
    done = threading.Event()
    f = ex.submit(abs, -5)
    f.add_done_callback(lambda fut: (seen.append(fut.result()), done.set()))
    assert done.wait(20) and seen == [5]
    results = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(ex.submit(pow, i, 2).result(timeout=20)))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted(i * i for i in range(8))


# ---- procpool only -----------------------------------------------------------------


def test_shutdown_from_a_done_callback_does_not_wait_for_itself():
    # (the stdlib's raises in the callback here)
    ex = procpool.ProcessPoolExecutor(1)
    done = threading.Event()

    def callback(_):
        ex.shutdown(wait=True)
        done.set()

    ex.submit(abs, -1).add_done_callback(callback)
    assert done.wait(20)
    ex.shutdown()


def test_a_dead_worker_fails_its_future_alone_and_the_executor_goes_on():
    with procpool.ProcessPoolExecutor(2) as e:
        doomed = e.submit(lambda: os.kill(os.getpid(), signal.SIGKILL))
        others = [e.submit(pow, i, 2) for i in range(6)]
        with pytest.raises(procpool.WorkerDied, match="SIGKILL"):
            doomed.result(timeout=20)
        assert [f.result(timeout=20) for f in others] == [i * i for i in range(6)]
        exiting = e.submit(os._exit, 3)
        assert exiting.exception(timeout=20).exitcode == 3
        assert list(e.map(abs, [-1, -2])) == [1, 2]


def test_retries_run_a_call_again_after_its_worker_died(tmp_path):
    marker = str(tmp_path / "died-once")

    def die_once():
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(7)
        return "second try"

    with procpool.ProcessPoolExecutor(1, retries=1) as e:
        assert e.submit(die_once).result(timeout=20) == "second try"
    os.unlink(marker)
    with procpool.ProcessPoolExecutor(1) as e:
        assert e.submit(die_once).exception(timeout=20).exitcode == 7


def test_timeout_kills_the_call_and_the_executor_goes_on():
    with procpool.ProcessPoolExecutor(2, timeout=0.5) as e:
        slow = e.submit(time.sleep, 30)
        with pytest.raises(procpool.TaskTimeoutError):
            slow.result(timeout=20)
        assert e.submit(abs, -3).result(timeout=20) == 3


def test_an_unpicklable_argument_fails_its_future_alone():
    with procpool.ProcessPoolExecutor(1) as e:
        bad = e.submit(id, threading.Lock())
        with pytest.raises(Exception) as info:
            bad.result(timeout=20)
        assert "pickle" in str(info.value).lower() or isinstance(info.value, TypeError)
        assert e.submit(abs, -1).result(timeout=20) == 1


def test_an_executor_dropped_without_shutdown_finishes_its_work():
    e = procpool.ProcessPoolExecutor(1)
    fs = [e.submit(pow, i, 2) for i in range(10)]
    del e
    assert [f.result(timeout=20) for f in fs] == [i * i for i in range(10)]


def test_lambdas_and_closures():
    k = 3
    with procpool.ProcessPoolExecutor(2) as e:
        assert e.submit(lambda x: x * k, 5).result(timeout=20) == 15
        assert list(e.map(lambda x, y: x + y + k, [1, 2], [10, 20])) == [14, 25]
