"""A crash, an exception or ``SystemExit`` while a worker unpickles one argument of a
chunk (of 4, and in default chunking), through ``map``, ``imap``, ``imap_unordered``,
``apply_async`` and ``Executor.map``: the parent survives (it never unpickles what it
sent), that item alone fails with an exception saying what happened, every other item
comes back, and a follow-up ``map`` on the same pool works. Each kind runs in a process
of its own, so that a parent killed by an argument shows as that process's exit status."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = r"""
import concurrent.futures, pickle, signal, sys
import procpool, tasks

how = sys.argv[1]
N, BAD = 400, 300

def check(e, where):
    if how in ("exit", "segv", "kill", "sysexit"):
        # SystemExit while the argument is rebuilt ends the worker, as in the stdlib.
        assert isinstance(e, procpool.WorkerDied), (where, repr(e))
        want = {"exit": (1, None), "segv": (None, signal.SIGSEGV),
                "kill": (None, signal.SIGKILL), "sysexit": (5, None)}[how]
        assert (e.exitcode, e.signal) == want, (where, repr(e))
    else:
        assert how == "raise", how
        assert isinstance(e, ValueError) and "cannot be rebuilt" in str(e), (where, repr(e))

def items():
    return [tasks.AtUnpickle(how) if i == BAD else i for i in range(N)]

def drain(it):
    out = {}
    for i in range(N):
        try:
            out[i] = ("ok", it.next(timeout=60))
        except StopIteration:
            raise AssertionError(f"the iterator stopped after {i} of {N}")
        except Exception as e:
            out[i] = ("err", e)
    return out

with procpool.Pool(2) as pool:
    for cs in (4, None):
        where = f"imap chunksize={cs}"
        got = drain(pool.imap(tasks.identity, items(), chunksize=cs))
        for i, (k, v) in got.items():
            if i == BAD:
                assert k == "err", (where, v)
                check(v, where)
            else:
                assert (k, v) == ("ok", i), (where, i, k, v)
        where = f"imap_unordered chunksize={cs}"
        got = drain(pool.imap_unordered(tasks.identity, items(), chunksize=cs))
        oks = sorted(v for k, v in got.values() if k == "ok")
        errs = [v for k, v in got.values() if k == "err"]
        assert oks == [i for i in range(N) if i != BAD], where
        assert len(errs) == 1, (where, errs)
        check(errs[0], where)
        where = f"map chunksize={cs}"
        try:
            pool.map(tasks.identity, items(), chunksize=cs)
            raise AssertionError(f"{where}: no error")
        except AssertionError:
            raise
        except Exception as e:
            check(e, where)
        assert pool.map(tasks.square, range(50), chunksize=cs) == [x * x for x in range(50)]
    where = "apply_async"
    r = pool.apply_async(tasks.identity, (tasks.AtUnpickle(how),))
    try:
        r.get(timeout=60)
        raise AssertionError(f"{where}: no error")
    except AssertionError:
        raise
    except Exception as e:
        check(e, where)
    assert pool.apply_async(tasks.square, (7,)).get(timeout=60) == 49
    assert pool.map(tasks.square, range(50)) == [x * x for x in range(50)]

with procpool.ProcessPoolExecutor(2) as ex:
    where = "Executor.map chunksize=4"
    it = ex.map(tasks.identity, items(), chunksize=4)
    got = []
    try:
        for v in it:
            got.append(v)
        raise AssertionError(f"{where}: no error")
    except AssertionError:
        raise
    except Exception as e:
        check(e, where)
    assert got == list(range(BAD)), where
    assert list(ex.map(tasks.square, range(50), chunksize=4)) == [x * x for x in range(50)]
print("survived", how)
"""


@pytest.mark.limit(120)
@pytest.mark.parametrize("how", ["exit", "segv", "kill", "raise", "sysexit"])
def test_a_bad_argument_in_a_chunk_fails_alone_and_the_parent_survives(how):
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, how],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    assert f"survived {how}" in r.stdout


@pytest.mark.limit(60)
def test_arguments_rebuilt_only_in_workers_with_a_time_limit():
    """#17: ``Pool(initializer=..., timeout=...)`` with arguments only an initialized worker
    can rebuild, in chunks: each item comes back (the parent never rebuilds them), and
    each item that runs past the limit fails alone with ``TaskTimeoutError``, as plain
    arguments do."""
    import procpool
    import tasks

    with procpool.Pool(2, initializer=tasks.init_rebuild, timeout=1) as pool:
        args = [tasks.OnlyInWorker(i) for i in range(8)]
        assert pool.map(tasks.value_of, args, chunksize=4) == list(range(8))
        it = pool.imap(tasks.value_after, args, chunksize=4)
        for i in range(8):
            with pytest.raises(procpool.TaskTimeoutError):
                it.next(timeout=30)
        with pytest.raises(StopIteration):
            it.next(timeout=30)
        assert pool.map(tasks.value_of, args, chunksize=4) == list(range(8))
