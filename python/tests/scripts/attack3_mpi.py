"""Attacks on procpool's Python front over MPI, run by ``test_attack3_mpi.py`` as
``mpirun -n 3 python -m procpool.mpi attack3_mpi.py NAME``. Rank 0 runs scenario NAME;
its asserts are the checks. Each scenario prints ``pids: [...]`` (the workers that ran
tasks) for the test to check they are gone after the job."""

import os
import signal
import sys
import threading
import time

import procpool

USED = set()


def pid_of(x):
    return x, os.getpid()


def unpicklable_result(x):
    if x == 5:
        return threading.Lock()
    return x, os.getpid()


class BadError(Exception):
    """An exception that cannot be rebuilt where it is read (its __init__ needs two
    arguments, but it pickles with one)."""

    def __init__(self, a, b):
        super().__init__(a)


def raises_bad(x):
    if x == 4:
        raise BadError("a", "b")
    return x, os.getpid()


def _refuse(rank):
    if where() == rank:
        raise ValueError("this result cannot be read here")
    return "read"


def where():
    return int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "-1")))


class Unreadable:
    """A result that pickles on the agent but fails to unpickle on rank 0."""

    def __reduce__(self):
        return _refuse, (0,)


def unreadable_result(x):
    if x == 6:
        return Unreadable()
    return x, os.getpid()


def exits(x):
    if x == 2:
        sys.exit(3)
    if x == 3:
        raise KeyboardInterrupt
    return x, os.getpid()


def slow(x):
    time.sleep(0.05)
    return x, os.getpid()


def report():
    print("pids:", sorted(USED), flush=True)


def scenario_bad_results():
    with procpool.Pool(2, mpi=True) as pool:
        # An unpicklable result fails that task alone, with an error that says so.
        for chunksize in (1, 4):
            it = pool.imap(unpicklable_result, range(10), chunksize=chunksize)
            got, errors = [], []
            for i in range(10):
                try:
                    v = next(it)
                    got.append(v[0])
                    USED.add(v[1])
                except StopIteration:
                    raise AssertionError(f"the run ended after {i} items")
                except Exception as e:
                    errors.append((i, e))
            assert got == [i for i in range(10) if i != 5], (chunksize, got)
            assert [i for i, _ in errors] == [5], errors
            assert "pickle" in str(errors[0][1]).lower(), repr(errors[0][1])
        # An exception that cannot be rebuilt on rank 0: an error for that task alone.
        out = []
        for r in [pool.apply_async(raises_bad, (i,)) for i in range(8)]:
            try:
                v = r.get(30)
                out.append(v[0])
                USED.add(v[1])
            except Exception as e:
                out.append(type(e).__name__)
        assert out[:4] == [0, 1, 2, 3] and out[5:] == [5, 6, 7], out
        assert isinstance(out[4], str), out
        # A result that cannot be read on rank 0: an error for that item alone (one item
        # per job: a chunk's results are one pickle, see test_attack3_results).
        for chunksize in (1,):
            it = pool.imap(unreadable_result, range(9), chunksize=chunksize)
            got = []
            for _ in range(9):
                try:
                    v = next(it)
                    got.append(v[0])
                    USED.add(v[1])
                except procpool.PoolError as e:
                    assert "cannot be read here" in str(e), e
                    got.append("error")
            assert got == [0, 1, 2, 3, 4, 5, "error", 7, 8], (chunksize, got)
        # A task raising SystemExit or KeyboardInterrupt ends its worker, as on a local
        # pool: that task fails with WorkerDied (the exit code said), the pool goes on.
        for x, code in ((2, 3), (3, 1)):
            try:
                pool.apply(exits, (x,))
            except procpool.WorkerDied as e:
                assert f"exited with code {code}" in str(e), e
            else:
                raise AssertionError(f"exits({x}) returned a value")
        res = pool.map(pid_of, range(40), chunksize=1)
        assert [v for v, _ in res] == list(range(40))
        USED.update(p for _, p in res)
    report()


def scenario_ctrl_c():
    with procpool.Pool(2, mpi=True) as pool:
        res = pool.map(pid_of, range(40), chunksize=1)
        USED.update(p for _, p in res)
        report()
        print("READY", flush=True)
        pool.map(slow, range(100000), chunksize=1)
    raise AssertionError("the map ended")


def scenario_exit_code():
    # The program's exit code is the job's, its pool left open.
    pool = procpool.Pool(2, mpi=True)
    res = pool.map(pid_of, range(20), chunksize=1)
    USED.update(p for _, p in res)
    report()
    sys.exit(3)


def scenario_hard_exit():
    # Rank 0 ends abruptly (os._exit, or SIGKILL with "kill"), its pool open, with a
    # task running unless "idle"; "no_pool": before starting any pool.
    how = sys.argv[2] if len(sys.argv) > 2 else "busy"
    if how == "no_pool":
        print("pids: []", flush=True)
        os._exit(4)
    pool = procpool.Pool(2, mpi=True)
    res = pool.map(pid_of, range(20), chunksize=1)
    USED.update(p for _, p in res)
    report()
    if how != "idle":
        pool.apply_async(time.sleep, (60,))
        time.sleep(0.3)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(4)


def scenario_local_objects():
    # Objects bound to this host (descriptors, shared memory, a channel copied from this
    # process by pid) cannot go to an agent: the call that carries one is refused with
    # an error that says so, and the pool goes on. argv[2]: "sync" or "channels".
    if sys.argv[2] == "sync":
        makers = {
            "Value": lambda: procpool.Value("i", 1),
            "RawArray": lambda: procpool.RawArray("d", 4),
            "Event": procpool.Event,
            "Semaphore": procpool.Semaphore,
            "Barrier": lambda: procpool.Barrier(2),
            "Condition": procpool.Condition,
        }
    else:
        makers = {
            "Queue": procpool.Queue,
            "SimpleQueue": procpool.SimpleQueue,
            "Pipe end": lambda: procpool.Pipe()[0],
        }
    with procpool.Pool(2, mpi=True) as pool:
        for name, make in makers.items():
            obj = make()
            for call in (
                lambda: pool.apply(pid_of, (obj,)),
                lambda: pool.map(pid_of, [1, obj, 2], chunksize=1),
                lambda: pool.apply_async(pid_of, (obj,)).get(30),
            ):
                try:
                    got = call()
                except procpool.PoolError as e:
                    assert "other hosts" in str(e), (name, repr(e))
                else:
                    raise AssertionError(f"a {name} went to an agent: {got!r}")
            res = pool.map(pid_of, range(8), chunksize=1)
            assert [v for v, _ in res] == list(range(8))
            USED.update(p for _, p in res)
    # In initargs: refused when the pool starts.
    for name, make in makers.items():
        try:
            procpool.Pool(1, mpi=True, initializer=pid_of, initargs=(make(),))
        except ValueError as e:
            assert "other hosts" in str(e), (name, repr(e))
        else:
            raise AssertionError(f"a {name} in initargs went to the agents")
    report()


def scenario_no_pool():
    print("pids: []", flush=True)


if __name__ == "__main__":
    globals()["scenario_" + sys.argv[1]]()
