"""Create/use/drop cycles of ``procpool.Process`` with the objects it shares (Queue, Pipe,
Lock, Value, Event), every other child SIGKILLed holding the lock and none closed
explicitly: descriptors, threads, shared mappings, children and /dev/shm come back to
where they were. (300 cycles: under pytest each child imports its task module anew,
about 60 ms a cycle.)"""

import os
import signal

import pytest

import proctools

CYCLES = 300


def _shm():
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def _counts():
    import gc
    import threading

    gc.collect()
    with open("/proc/self/maps") as f:
        maps = sum(1 for line in f if "procpool" in line or "memfd" in line)
    return proctools.fd_count(), threading.active_count(), proctools.threads_of(), maps


@pytest.mark.limit(45)
def test_process_cycles_with_kills_leave_nothing_behind():
    """Cycles, each a new Queue, Pipe, Lock, Value and Event and a Process using
    them; every other Process is SIGKILLed holding the lock, and none is closed
    explicitly (dropped after join). Descriptors, threads, shared mappings, children and
    /dev/shm come back to where they were."""
    import warnings

    import attack3_tasks as T
    import procpool

    def cycle(i):
        q, (a, b), lock = procpool.Queue(), procpool.Pipe(), procpool.Lock()
        v, ev = procpool.Value("i", i), procpool.Event()
        die = i % 2 == 1
        p = procpool.Process(target=T.cycle_child, args=(q, b, lock, v, ev, die))
        p.start()
        assert a.recv() == p.pid
        if die:
            assert ev.wait(10)
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)
            assert p.exitcode == -signal.SIGKILL
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", procpool.HolderDiedWarning)
                assert lock.acquire(timeout=5) and lock.holder_died
            lock.release()
        else:
            assert q.get(timeout=10) == i + 1
            p.join(10)
            assert p.exitcode == 0

    for i in range(10):
        cycle(i)
    shm, before = _shm(), _counts()
    for i in range(CYCLES):
        cycle(i)
    assert procpool.active_children() == []
    assert proctools.wait_for(lambda: not proctools.zombies(), 5), proctools.zombies()
    after = _counts()
    assert after[:3] == before[:3], (before, after)
    assert after[3] <= before[3] + 2, (before, after)
    # Other programs' MPI jobs come and go in /dev/shm: only procpool's names count.
    assert not {n for n in _shm() - shm if "procpool" in n}
