"""Attacks on procpool's locks and semaphores held by ``procpool.Process`` children that
die for real, and on their limits.

* A ``Lock``, ``RLock`` or a ``Value``'s lock whose holder was SIGKILLed, ended with
  ``os._exit`` or with ``sys.exit`` without releasing it: even a non-blocking
  ``acquire(False)`` takes it over at once and can tell (``holder_died``,
  ``dead_holder_pid``); a holder that is only stopped (SIGSTOP) keeps it.
* A semaphore's count is a 32-bit word: ``release`` past ``SEM_VALUE_MAX`` raises, as the
  standard library's does, instead of wrapping to 0 (which silently lost every permit),
  and an initial value above it is refused.
"""

import multiprocessing
import os
import signal
import time
import warnings

import pytest


procpool = pytest.importorskip("procpool")

SEM_VALUE_MAX = 2**31 - 1


def hold(lock, ready, how):
    lock.acquire()
    ready.set()
    if how == "exit":
        os._exit(0)
    if how == "sys.exit":
        raise SystemExit(0)
    time.sleep(60)


LOCKS = {
    "Lock": lambda: procpool.Lock(),
    "RLock": lambda: procpool.RLock(),
    "Value": lambda: procpool.Value("i", 0).get_lock(),
}


@pytest.mark.limit(25)
@pytest.mark.parametrize("how", ["kill", "exit", "sys.exit"])
@pytest.mark.parametrize("kind", sorted(LOCKS))
def test_a_dead_holders_lock_is_taken_over_even_without_blocking(kind, how):
    lock, ready = LOCKS[kind](), procpool.Event()
    p = procpool.Process(target=hold, args=(lock, ready, how))
    p.start()
    try:
        assert ready.wait(10), "the child did not take the lock"
        if how == "kill":
            os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        assert p.exitcode is not None
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert lock.acquire(False), f"{kind}: the dead holder's lock was not taken over"
        try:
            assert lock.holder_died is True and lock.dead_holder_pid == p.pid
            assert any(issubclass(x.category, procpool.HolderDiedWarning) for x in w), w
        finally:
            lock.release()
        assert lock.acquire(False) and lock.holder_died is False
        lock.release()
    finally:
        p.kill()
        p.join(10)


@pytest.mark.limit(25)
def test_a_stopped_or_zombie_holder():
    """A stopped holder still holds the lock; an unreaped (zombie) one does not."""
    for stop in (True, False):
        lock, ready = procpool.Lock(), procpool.Event()
        p = procpool.Process(target=hold, args=(lock, ready, "sleep"))
        p.start()
        try:
            assert ready.wait(10)
            os.kill(p.pid, signal.SIGSTOP if stop else signal.SIGKILL)
            time.sleep(0.1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = lock.acquire(timeout=0.5)
            if got:
                lock.release()
            assert got is (not stop), ("stopped" if stop else "zombie", got)
        finally:
            p.kill()
            p.join(10)


@pytest.mark.parametrize("lib", ["procpool", "multiprocessing"])
def test_semaphore_release_past_its_maximum_raises_and_never_wraps(lib):
    m = procpool if lib == "procpool" else multiprocessing.get_context("fork")
    s = m.Semaphore(SEM_VALUE_MAX)
    with pytest.raises(ValueError):
        s.release()
    assert s.get_value() == SEM_VALUE_MAX
    assert s.acquire(False) and s.get_value() == SEM_VALUE_MAX - 1
    s.release()
    assert s.get_value() == SEM_VALUE_MAX
    for value in (SEM_VALUE_MAX + 1, 2**32 - 1, 2**40):
        with pytest.raises(OverflowError):
            m.Semaphore(value)
        with pytest.raises(OverflowError):
            m.BoundedSemaphore(value)


def _in_process(fn, q, *args):
    q.put(fn(*args))


@pytest.mark.limit(25)
def test_barrier_condition_and_event_across_processes_and_pool_workers():
    """Parties in pool workers and in ``Process`` children share one barrier; a
    ``Process`` party SIGKILLed while waiting breaks it for all the others within a
    second. Then a condition's ``notify_all`` and an event's ``set`` reach waiters in
    both kinds of process."""
    import attack3_tasks as T

    q = procpool.Queue()
    b, ready, pid = procpool.Barrier(5), procpool.Semaphore(0), procpool.Value("i", 0)
    with procpool.Pool(2) as pool:
        rs = [pool.apply_async(T.barrier_wait, (b, ready, None, 20)) for _ in range(2)]
        ps = [
            procpool.Process(target=_in_process, args=(T.barrier_wait, q, b, ready, pid, 60)),
            procpool.Process(target=_in_process, args=(T.barrier_wait, q, b, ready, None, 20)),
        ]
        for p in ps:
            p.start()
        for _ in range(4):
            assert ready.acquire(timeout=10)
        time.sleep(0.3)  # all four wait
        os.kill(pid.value, signal.SIGKILL)
        got = [r.get(10) for r in rs] + [q.get(timeout=10)]
        assert [g[0] for g in got] == ["broken"] * 3, got
        assert all(g[1] < 5 for g in got), got
        for p in ps:
            p.join(10)
        assert ps[0].exitcode == -signal.SIGKILL and ps[1].exitcode == 0

        cond, box, ev = procpool.Condition(), procpool.Value("i", 0), procpool.Event()
        rs = [
            pool.apply_async(T.cond_wait_for, (cond, box, ready, 10)),
            pool.apply_async(T.event_wait, (ev, ready, 10)),
        ]
        ps = [
            procpool.Process(target=_in_process, args=(T.cond_wait_for, q, cond, box, ready, 10)),
            procpool.Process(target=_in_process, args=(T.event_wait, q, ev, ready, 10)),
        ]
        for p in ps:
            p.start()
        for _ in range(4):
            assert ready.acquire(timeout=10)
        time.sleep(0.2)
        with cond:
            box.value = 1
            cond.notify_all()
        ev.set()
        got = [r.get(10) for r in rs] + [q.get(timeout=10), q.get(timeout=10)]
        assert [g[0] for g in got] == [True] * 4 and all(g[1] < 5 for g in got), got
        for p in ps:
            p.join(10)


def _bump_all(arr):
    for i in range(len(arr)):
        arr[i] += 1
    return list(arr)


@pytest.mark.limit(20)
def test_sharedctypes_copy_is_new_shared_memory():
    """``sharedctypes.copy`` (the stdlib's, missing before) copies a ctypes object into
    new shared memory: the copy is independent of the original and shared with workers."""
    import ctypes

    from procpool import sharedctypes

    a = procpool.RawArray("i", [1, 2, 3])
    b = sharedctypes.copy(a)
    b[0] = 9
    assert (a[:], b[:]) == ([1, 2, 3], [9, 2, 3])
    assert sharedctypes.copy(ctypes.c_double(1.5)).value == 1.5
    assert sharedctypes.copy(procpool.Value("i", 4).get_obj()).value == 4
    with procpool.Pool(1) as pool:
        assert pool.apply(_bump_all, (b,)) == [10, 3, 4]
    assert b[:] == [10, 3, 4] and a[:] == [1, 2, 3]
