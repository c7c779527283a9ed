"""Tasks of the ``test_attack3_*`` files (importable by name in workers)."""


#: Set in the test process only: a result that reads this fails to unpickle there.
IN_CALLER = {"on": False}


def _refuse():
    if IN_CALLER["on"]:
        raise ValueError("this result cannot be read here")
    return "read"


class Unreadable:
    """Pickles in the worker; fails to unpickle in the caller."""

    def __reduce__(self):
        return _refuse, ()


def unreadable_6(x):
    return Unreadable() if x == 6 else x * 10


def barrier_wait(barrier, ready, pid, timeout):
    """Waits at ``barrier`` (``pid`` set to this process first): what came of it."""
    import os
    import threading
    import time

    if pid is not None:
        pid.value = os.getpid()
    ready.release()
    t = time.monotonic()
    try:
        barrier.wait(timeout)
        return "passed", time.monotonic() - t
    except threading.BrokenBarrierError:
        return "broken", time.monotonic() - t


def cond_wait_for(cond, box, ready, timeout):
    import time

    with cond:
        ready.release()
        t = time.monotonic()
        ok = cond.wait_for(lambda: box.value == 1, timeout)
        return bool(ok), time.monotonic() - t


def event_wait(ev, ready, timeout):
    import time

    ready.release()
    t = time.monotonic()
    return ev.wait(timeout), time.monotonic() - t


def cycle_child(q, conn, lock, v, ev, die):
    """One cycle of ``test_500_process_cycles_with_kills_leave_nothing_behind``."""
    import os
    import time

    with lock:
        v.value += 1
    conn.send(os.getpid())
    if die:
        lock.acquire()  # held at its death: the next acquire takes it over
        ev.set()
        time.sleep(30)
    q.put(v.value)
