"""Task functions of test_sync.py (importable by workers)."""

import os
import threading
import time
import warnings

G = None


def init(*values):
    global G
    G = values


def read_init(_):
    v, arr = G
    return v.value, list(arr[:])


def bump_init(n):
    v, arr = G
    with v.get_lock():
        v.value += n
    with arr.get_lock():
        arr[0] += n
    return os.getpid()


def add_many(counter, lock, n):
    for _ in range(n):
        with lock:
            counter.value += 1
    return os.getpid()


def add_value(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def bump1(v):
    with v.get_lock():
        v.value += 1


def hold(lock, ready, pid):
    """Takes `lock`, says so, and sleeps (to be killed holding it)."""
    lock.acquire()
    pid.value = os.getpid()
    ready.set()
    time.sleep(60)


def take(lock, timeout):
    """Acquires `lock`: (got it, holder_died, dead holder's pid, warnings seen)."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ok = lock.acquire(timeout=timeout)
    died, dead = lock.holder_died, lock.dead_holder_pid
    if ok:
        lock.release()
    return ok, died, dead, [type(x.message).__name__ for x in w]


def sem_hold(sem, ready, pid):
    sem.acquire()
    pid.value = os.getpid()
    ready.set()
    time.sleep(60)


def sem_take(sem, timeout):
    ok = sem.acquire(timeout=timeout)
    if ok:
        sem.release()
    return ok


def cond_wait(cond, ready, pid, timeout):
    with cond:
        pid.value = os.getpid()
        ready.set()
        t = time.monotonic()
        r = cond.wait(timeout)
        return r, time.monotonic() - t


def barrier_wait(barrier, ready, pid, timeout):
    import threading as th

    pid.value = os.getpid()
    ready.set()
    t = time.monotonic()
    try:
        barrier.wait(timeout)
        return "passed", time.monotonic() - t
    except th.BrokenBarrierError:
        return "broken", time.monotonic() - t


def np_sum(arr):
    import numpy as np

    view = np.frombuffer(arr.get_obj(), dtype=np.float64)
    view *= 2  # in place: the parent sees it
    return float(view.sum())


def shared_info(h):
    import numpy as np

    a = h.value
    return (float(np.asarray(a).sum()), a.flags.writeable, a.ctypes.data, id(a), os.getpid())


def counts(_):
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/maps") as f:
        maps = sum(1 for line in f if "procpool-" in line)
    return fds, maps, threading.active_count()


def use_all(lock, v, arr, ev):
    with lock:
        v.value += 1
    arr[0] += 1
    ev.set()
    return v.value


def identity(x):
    return x


def shared_row(args):
    h, i = args
    return float(h.value[i].sum())


def init_shared(h):
    global G
    G = h


def shared_from_init(i):
    return float(G.value[i].sum()), G.value.flags.writeable
