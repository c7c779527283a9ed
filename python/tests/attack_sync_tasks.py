"""Task functions of the synchronization attacks."""

import os
import time


def cond_wait(cond, ready, pid, timeout):
    with cond:
        pid.value = os.getpid()
        ready.set()
        t = time.monotonic()
        r = cond.wait(timeout)
        return r, time.monotonic() - t


def cond_hold(cond, ready, pid):
    """Holds the condition's lock (not waiting) until killed."""
    cond.acquire()
    pid.value = os.getpid()
    ready.set()
    time.sleep(60)


def rlock_hold_deep(lock, ready, pid):
    for _ in range(3):
        lock.acquire()
    pid.value = os.getpid()
    ready.set()
    time.sleep(60)


def bump_under(lock, v):
    with lock:
        v.value += 1


def bump_under_both(lock, v):
    # For tasks that run at the same time, each with a lock of its own: the value's lock
    # makes the increment exact.
    with lock, v.get_lock():
        v.value += 1


def queue_bump(q, v):
    lock = q.get(timeout=10)
    with lock:
        v.value += 10


def fd_count(_):
    return len(os.listdir("/proc/self/fd"))


def add_many(v, arr, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1
        with arr.get_lock():
            arr[0] += 1
            arr[-1] -= 1


def use_others(cond, barrier, sem, rlock):
    with cond:
        cond.notify_all()
    barrier.wait(5)
    with sem:
        pass
    with rlock:
        with rlock:
            pass
    return True
