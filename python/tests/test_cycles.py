"""Many pools, one after another: no process, descriptor or thread outlives its pool."""

import gc
import threading

import proctools
import pytest
import tasks

CYCLES = 200  # close-join, the plain ending; the other endings run a quarter as many


def snapshot():
    gc.collect()
    proctools.wait_for(lambda: not proctools.zombies(), 5)
    return {
        "processes": len(proctools.descendants()),
        "zombies": len(proctools.zombies()),
        "fds": proctools.fd_count(),
        "threads": threading.active_count(),
        "os threads": proctools.threads_of(),
    }


def settle(before, timeout=10):
    """The snapshot once it is back to `before` (or the last one after `timeout`)."""
    last = {}

    def same():
        last.update(snapshot())
        return all(last[k] <= before[k] for k in before)

    proctools.wait_for(same, timeout, step=0.1)
    return last


@pytest.mark.limit(150)
@pytest.mark.parametrize("ending", ["close-join", "with", "terminate", "dropped"])
def test_create_close_cycles(make_pool, ending):
    cls = make_pool.cls
    # a first pool may start lasting helpers (procpool's template, the oracle's nothing)
    with cls(2) as p:
        p.apply(tasks.square, (1,))
    before = snapshot()
    cycles = CYCLES if ending == "close-join" else CYCLES // 4
    if make_pool.kind == "multiprocessing":
        cycles //= 10  # the oracle only checks the test itself
    for i in range(cycles):
        if ending == "close-join":
            p = cls(2)
            assert p.apply(tasks.square, (i,)) == i * i
            p.close()
            p.join()
        elif ending == "with":
            with cls(2) as p:
                assert p.apply(tasks.square, (i,)) == i * i
            p.join()
        elif ending == "terminate":
            p = cls(2)
            p.apply_async(tasks.sleep_return, (5,))
            p.terminate()
            p.join()
        else:
            p = cls(2)
            assert p.map(tasks.square, [i]) == [i * i]
            if make_pool.kind == "multiprocessing":
                p.terminate()  # the standard library warns about a pool it must reap itself
            del p
    after = settle(before)
    grown = {k: (before[k], after[k]) for k in before if after[k] > before[k]}
    assert not grown, f"after {cycles} pools, (before, after): {grown}"
