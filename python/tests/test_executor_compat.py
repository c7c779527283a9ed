"""ProcessPoolExecutor follows concurrent.futures where a program could notice (issue 17
items 9 and 10); each test runs on procpool and on the standard library (the oracle).

CPython's own test suite for these is run by test_cpython_futures.py; these are the
attacks of the issue itself, with real processes."""

import concurrent.futures
import gc
import multiprocessing
import os
import pickle
import sys
import threading
import time
import weakref

import pytest
from concurrent.futures.process import BrokenProcessPool


class Payload:
    pass


def make_payload(_):
    return Payload()


class Holder:
    def method(self):
        return 1


class ExitAtPickle:
    def __reduce__(self):
        sys.exit(3)


class ErrorAtPickle:
    def __reduce__(self):
        raise pickle.PicklingError("refused at pickling")


def return_instance(cls):
    return cls()


def exit_with(code):
    sys.exit(code)


def ident(x):
    return x


def test_the_map_iterator_keeps_no_result_alive(make_executor):
    ex = make_executor(2)
    for obj in ex.map(make_payload, range(6)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_a_submitted_bound_method_is_released(make_executor):
    ex = make_executor(2)
    holder = Holder()
    collected = threading.Event()
    ref = weakref.ref(holder, lambda _: collected.set())
    assert ex.submit(holder.method).result(timeout=20) == 1
    del holder
    for _ in range(50):
        gc.collect()
        if collected.wait(0.1):
            break
    assert ref() is None


def test_system_exit_in_a_call_is_delivered(make_executor):
    ex = make_executor(2)
    exc = ex.submit(exit_with, 7).exception(timeout=20)
    assert type(exc) is SystemExit and exc.code == 7
    assert ex.submit(ident, 1).result(timeout=20) == 1


def test_an_unpicklable_result_delivers_the_pickling_error(make_executor):
    ex = make_executor(2)
    exc = ex.submit(return_instance, ErrorAtPickle).exception(timeout=20)
    assert type(exc) is pickle.PicklingError, repr(exc)
    exc = ex.submit(return_instance, ExitAtPickle).exception(timeout=20)
    assert type(exc) is SystemExit, repr(exc)


def test_max_tasks_per_child_refuses_a_fork_context(make_executor):
    with pytest.raises(ValueError):
        make_executor(1, mp_context=multiprocessing.get_context("fork"), max_tasks_per_child=3)


def test_a_killed_worker_is_a_broken_process_pool_to_the_executor(make_executor):
    ex = make_executor(2)
    exc = ex.submit(os._exit, 1).exception(timeout=20)
    assert isinstance(exc, BrokenProcessPool), repr(exc)


@pytest.mark.procpool_only
def test_a_killed_worker_is_worker_died_and_the_executor_goes_on(pp):
    with pp.ProcessPoolExecutor(2) as ex:
        exc = ex.submit(os._exit, 1).exception(timeout=20)
        assert isinstance(exc, pp.WorkerDied) and exc.exitcode == 1
        assert ex.submit(ident, 5).result(timeout=20) == 5
        # Caught as the stdlib's code catches it.
        with pytest.raises(BrokenProcessPool):
            list(ex.map(os._exit, [2]))
    # A Pool's WorkerDied stays what it was: not a RuntimeError.
    with pp.Pool(1) as pool:
        with pytest.raises(pp.WorkerDied) as info:
            pool.apply(os._exit, (1,))
        assert not isinstance(info.value, RuntimeError)
        assert type(info.value) is pp.WorkerDied


def _exit_callback(_):
    sys.exit(5)


@pytest.mark.procpool_only
def test_a_callback_raising_system_exit_stops_no_other_result(pp, capfd):
    """SystemExit raised by the caller's callback on a result thread is reported there;
    the other results still come (never converted into a task's error, never a hang)."""
    with pp.Pool(2) as pool:
        first = pool.apply_async(ident, (1,), callback=_exit_callback)
        assert first.get(timeout=20) == 1
        assert [pool.apply_async(ident, (i,)).get(timeout=20) for i in range(3)] == [0, 1, 2]
    with pp.ProcessPoolExecutor(2) as ex:
        f = ex.submit(time.sleep, 0.5)  # done on the result thread, not in this one
        f.add_done_callback(_exit_callback)
        assert f.result(timeout=20) is None
        assert [ex.submit(ident, i).result(timeout=20) for i in range(3)] == [0, 1, 2]
    assert "SystemExit" in capfd.readouterr().err
