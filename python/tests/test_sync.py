"""procpool's shared data and locks (``procpool.synchronize``, ``procpool.sharedctypes``)
with real processes: counters under a lock, values through ``initargs`` and task
arguments, NumPy views, and participants killed for real (SIGKILL) while they hold a
lock or a permit, wait on a condition, or wait at a barrier."""

import gc
import os
import pickle
import signal
import threading
import time

import pytest

import synctasks as T
from proctools import descendants

pytestmark = pytest.mark.usefixtures("pp")


def _kill_when_ready(ready, pid, timeout=10):
    assert ready.wait(timeout), "the worker did not get ready"
    os.kill(pid.value, signal.SIGKILL)
    return pid.value


@pytest.mark.limit(60)
def test_counter_under_a_lock_is_exact_across_4_processes(pp, make_pp_pool):
    counter = pp.RawValue("i", 0)
    lock = pp.Lock()
    pool = make_pp_pool(4)
    pids = pool.starmap(T.add_many, [(counter, lock, 10_000)] * 4, chunksize=1)
    assert counter.value == 40_000
    assert len(pids) == 4
    v = pp.Value("q", 0)
    pool.starmap(T.add_value, [(v, 10_000)] * 4, chunksize=1)
    assert v.value == 40_000


def test_values_through_initargs_and_task_arguments(pp, make_pp_pool):
    v = pp.Value("i", 7)
    arr = pp.Array("d", [1.0, 2.0, 3.0])
    pool = make_pp_pool(2, initializer=T.init, initargs=(v, arr))
    assert pool.map(T.read_init, range(4)) == [(7, [1.0, 2.0, 3.0])] * 4
    v.value = 9
    arr[1] = 5.0
    assert pool.apply(T.read_init, (0,)) == (9, [1.0, 5.0, 3.0])
    pool.map(T.bump_init, [1] * 20)
    assert v.value == 29 and arr[0] == 21.0
    # As task arguments: map, imap, apply_async, starmap.
    w = pp.Value("i", 0)
    pool.starmap(T.add_value, [(w, 5)] * 10)
    assert list(pool.imap(T.bump1, [w] * 10, chunksize=3)) == [None] * 10
    rs = [pool.apply_async(T.add_value, (w, 1)) for _ in range(10)]
    for r in rs:
        r.get(10)
    assert w.value == 70


def test_numpy_view_of_an_array_in_a_worker(pp, make_pp_pool):
    np = pytest.importorskip("numpy")
    arr = pp.Array("d", [1.0, 2.0, 3.0])
    view = np.frombuffer(arr.get_obj())
    pool = make_pp_pool(1)
    assert pool.apply(T.np_sum, (arr,)) == 12.0
    assert list(view) == [2.0, 4.0, 6.0]  # written in place by the worker


def test_raw_objects_and_locks_refuse_pickling_outside_a_task(pp):
    for obj in (pp.Lock(), pp.RLock(), pp.Value("i", 1), pp.RawArray("i", 3), pp.Event()):
        with pytest.raises(RuntimeError, match="procpool processes"):
            pickle.dumps(obj)


def test_a_shared_value_as_a_result_is_an_error_not_a_copy(pp, make_pp_pool):
    pool = make_pp_pool(1)
    v = pp.Value("i", 1)
    with pytest.raises(Exception, match="procpool processes"):
        pool.apply(T.identity, (v,))


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_a_lock_whose_holder_is_killed_goes_to_the_next_acquirer_who_can_tell(
    pp, make_pp_pool, kind
):
    lock = getattr(pp, kind)()
    ready, pid = pp.Event(), pp.Value("i", 0)
    pool = make_pp_pool(2)
    held = pool.apply_async(T.hold, (lock, ready, pid))
    dead = _kill_when_ready(ready, pid)
    with pytest.raises(pp.WorkerDied):
        held.get(10)
    t = time.monotonic()
    ok, died, dead_pid, warned = pool.apply(T.take, (lock, 10))
    assert ok and died and dead_pid == dead
    assert warned == ["HolderDiedWarning"]
    assert time.monotonic() - t < 5
    # The next acquire is an ordinary one.
    assert pool.apply(T.take, (lock, 1)) == (True, False, 0, [])
    # And the parent uses it as usual.
    assert lock.acquire(timeout=1) and not lock.holder_died
    lock.release()


def test_a_killed_holder_is_seen_by_a_waiter_already_blocked(pp, make_pp_pool):
    lock = pp.Lock()
    ready, pid = pp.Event(), pp.Value("i", 0)
    pool = make_pp_pool(3)
    pool.apply_async(T.hold, (lock, ready, pid))
    assert ready.wait(10)
    waiter = pool.apply_async(T.take, (lock, 20))
    time.sleep(0.3)  # the waiter now sleeps on the lock
    dead = _kill_when_ready(ready, pid)
    ok, died, dead_pid, _ = waiter.get(10)
    assert ok and died and dead_pid == dead


def test_warning_as_error_leaves_the_lock_free(pp):
    import warnings

    lock = pp.Lock()
    child = os.fork()
    if child == 0:
        lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(child, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pp.HolderDiedWarning)
        with pytest.raises(pp.HolderDiedWarning):
            lock.acquire(timeout=5)
    assert lock.acquire(False)
    lock.release()


def test_bounded_semaphore_gets_a_killed_holders_permit_back(pp, make_pp_pool):
    sem = pp.BoundedSemaphore(1)
    ready, pid = pp.Event(), pp.Value("i", 0)
    pool = make_pp_pool(2)
    pool.apply_async(T.sem_hold, (sem, ready, pid))
    _kill_when_ready(ready, pid)
    assert pool.apply(T.sem_take, (sem, 10)) is True
    assert sem.get_value() == 1


def test_plain_semaphore_keeps_a_killed_processes_permit_and_times_out(pp, make_pp_pool):
    sem = pp.Semaphore(1)
    ready, pid = pp.Event(), pp.Value("i", 0)
    pool = make_pp_pool(2)
    pool.apply_async(T.sem_hold, (sem, ready, pid))
    _kill_when_ready(ready, pid)
    assert pool.apply(T.sem_take, (sem, 0.3)) is False
    sem.release()
    assert pool.apply(T.sem_take, (sem, 5)) is True


def test_a_killed_condition_waiter_does_not_block_notify(pp, make_pp_pool):
    cond = pp.Condition()
    r1, p1 = pp.Event(), pp.Value("i", 0)
    r2, p2 = pp.Event(), pp.Value("i", 0)
    pool = make_pp_pool(3)
    pool.apply_async(T.cond_wait, (cond, r1, p1, 60))
    _kill_when_ready(r1, p1)  # killed inside wait(), the lock released
    live = pool.apply_async(T.cond_wait, (cond, r2, p2, 20))
    assert r2.wait(10)
    time.sleep(0.2)
    with cond:
        cond.notify()
    woken, waited = live.get(10)
    assert woken is True and waited < 5


def test_a_party_killed_at_the_barrier_breaks_it_for_the_others(pp, make_pp_pool):
    barrier = pp.Barrier(3)
    r1, p1 = pp.Event(), pp.Value("i", 0)
    r2, p2 = pp.Event(), pp.Value("i", 0)
    pool = make_pp_pool(3)
    pool.apply_async(T.barrier_wait, (barrier, r1, p1, 60))
    other = pool.apply_async(T.barrier_wait, (barrier, r2, p2, 30))
    assert r2.wait(10)
    time.sleep(0.2)
    _kill_when_ready(r1, p1)
    outcome, waited = other.get(10)
    assert outcome == "broken" and waited < 10
    assert barrier.broken
    barrier.reset()
    assert not barrier.broken


def _counts():
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/maps") as f:
        maps = sum(1 for line in f if "procpool-" in line)
    return fds, maps, threading.active_count()


@pytest.mark.limit(60)
def test_500_create_use_drop_cycles_leave_nothing_behind(pp, make_pp_pool):
    pool = make_pp_pool(2)

    def cycle():
        lock, v, arr, ev = pp.Lock(), pp.Value("i", 0), pp.Array("i", 100), pp.Event()
        big = pp.RawArray("d", 10_000)  # an arena of its own
        pool.apply(T.use_all, (lock, v, arr, ev))
        big[0] = 1.0
        assert v.value == 1 and arr[0] == 1 and ev.is_set()

    for _ in range(20):
        cycle()
    gc.collect()
    before = _counts()
    workers_before = pool.map(T.counts, range(2), chunksize=1)
    for _ in range(500):
        cycle()
    gc.collect()
    after = _counts()
    # One small arena may have been started since (the current one, kept for the next).
    assert after[0] <= before[0] + 1, (before, after)
    assert after[1] <= before[1] + 1, (before, after)
    assert after[2] == before[2]
    # Workers keep the last arenas they received, a bounded number.
    for (fds, maps, threads), (fds0, maps0, threads0) in zip(
        pool.map(T.counts, range(2), chunksize=1), workers_before
    ):
        assert fds <= fds0 + 16 and maps <= maps0 + 16 and threads == threads0
    assert len(descendants()) >= 2


def test_shared_value_is_decoded_once_per_worker_and_read_in_place(pp, make_pp_pool):
    np = pytest.importorskip("numpy")
    table = np.arange(200_000.0).reshape(200, 1000)
    h = pp.shared(table)
    assert h.value is table
    pool = make_pp_pool(2)
    infos = pool.map(T.shared_info, [h] * 40, chunksize=1)
    total = float(table.sum())
    by_pid = {}
    for s, writeable, addr, ident, pid in infos:
        assert s == total and writeable is False
        by_pid.setdefault(pid, set()).add((addr, ident))
    # One decoded array per worker, whatever the number of tasks.
    assert all(len(v) == 1 for v in by_pid.values()), by_pid
    assert pool.map(T.shared_row, [(h, i) for i in range(200)]) == [
        float(r.sum()) for r in table
    ]


def test_shared_value_through_initargs(pp, make_pp_pool):
    np = pytest.importorskip("numpy")
    h = pp.shared(np.ones((4, 4)))
    pool = make_pp_pool(2, initializer=T.init_shared, initargs=(h,))
    assert pool.map(T.shared_from_init, range(4)) == [(4.0, False)] * 4


def test_shared_memory_is_sealed(pp):
    import fcntl

    h = pp.shared(b"x" * 100_000)
    seals = fcntl.fcntl(h._fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_GROW
    with pytest.raises(OSError):
        os.pwrite(h._fd, b"y", 0)
    with pytest.raises(RuntimeError, match="procpool processes"):
        pickle.dumps(h)


def test_values_and_locks_through_the_executor(pp):
    v = pp.Value("i", 0)
    with pp.ProcessPoolExecutor(2) as ex:
        futures = [ex.submit(T.add_value, v, 100) for _ in range(4)]
        for f in futures:
            f.result(timeout=20)
        list(ex.map(T.add_value, [v] * 4, [50] * 4))
    assert v.value == 600
