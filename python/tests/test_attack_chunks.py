"""Attacks on "a crash costs one item" in the Python front: a worker that dies inside the
task function (os._exit, segfault, SIGKILL) or while pickling its result, in chunks of 4
and in default chunking, through ``map``, ``imap``, ``imap_unordered`` and
``Executor.map``. Each item logs ``start i`` when it begins and ``end i`` as its last step:
every item that ended is delivered exactly once with its value, and every item not at
fault runs exactly once (a rerun repeats its side effects). And the parent never unpickles
an argument (an argument logs the pid that unpickles it)."""

import os
import collections

import pytest

import procpool

import attack_tasks

N = 40
KILLERS = (10, 27, 28, 39)


def _runs(d):
    starts, ends, unpickled = collections.Counter(), collections.Counter(), []
    try:
        with open(os.path.join(d, "log")) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        parts = line.split()
        if parts[0] == "start":
            starts[int(parts[1])] += 1
        elif parts[0] == "end":
            ends[int(parts[1])] += 1
        else:
            unpickled.append((int(parts[1]), int(parts[2])))
    return starts, ends, unpickled


def _drain(it, n):
    out = {}
    for k in range(n):
        try:
            out[k] = ("ok", it.next(timeout=60))
        except StopIteration:
            raise AssertionError(f"the iterator stopped after {k} of {n}")
        except procpool.TimeoutError:
            raise
        except Exception as e:
            out[k] = ("err", e)
    with pytest.raises(StopIteration):
        it.next(timeout=60)
    return out


def _check_runs(d, where, killers=KILLERS, must_end=True):
    starts, ends, _ = _runs(d)
    twice = {i: (starts[i], ends[i]) for i in range(N) if i not in killers
             and (starts[i], ends[i]) != (1, 1)}
    assert not twice, (
        f"{where}: items not at fault ran other than once (start, end counts): {twice}")


@pytest.mark.limit(30)
@pytest.mark.parametrize(
    "via,chunksize,how",
    [
        ("imap", 4, "exit"),
        ("imap", 4, "kill"),
        ("imap", None, "segv"),
        ("imap_unordered", 4, "segv"),
    ],
)
def test_a_death_in_the_task_costs_its_item_alone(tmp_path, how, chunksize, via):
    d = str(tmp_path)
    items = [(i, how if i in KILLERS else "", d) for i in range(N)]
    with procpool.Pool(2) as pool:
        it = getattr(pool, via)(attack_tasks.logged, items, chunksize=chunksize)
        got = _drain(it, N)
    _check_runs(d, f"{via} chunksize={chunksize} {how}")
    if via == "imap":
        for i in range(N):
            k, v = got[i]
            if i in KILLERS:
                assert k == "err" and isinstance(v, procpool.WorkerDied), (i, v)
            else:
                assert (k, v) == ("ok", i * 3), (i, k, v)
    else:
        oks = sorted(v for k, v in got.values() if k == "ok")
        assert oks == [i * 3 for i in range(N) if i not in KILLERS]
        errs = [v for k, v in got.values() if k == "err"]
        assert len(errs) == len(KILLERS) and all(isinstance(e, procpool.WorkerDied) for e in errs)


@pytest.mark.limit(30)
@pytest.mark.parametrize("chunksize", [4, None])
def test_map_runs_each_item_not_at_fault_once(tmp_path, chunksize):
    d = str(tmp_path)
    items = [(i, "segv" if i in KILLERS else "", d) for i in range(N)]
    with procpool.Pool(2) as pool:
        with pytest.raises(procpool.WorkerDied):
            pool.map(attack_tasks.logged, items, chunksize=chunksize)
        assert pool.map(attack_tasks.logged, [(0, "", d)]) == [0]
    starts, ends, _ = _runs(d)
    starts[0] -= 1
    ends[0] -= 1
    bad = {i: (starts[i], ends[i]) for i in range(N) if i not in KILLERS
           and (starts[i], ends[i]) not in ((1, 1), (0, 0))}
    assert not bad, f"map chunksize={chunksize}: items ran more than once: {bad}"


@pytest.mark.limit(30)
@pytest.mark.parametrize("chunksize", [4, None])
def test_executor_map_runs_each_item_once_up_to_the_death(tmp_path, chunksize):
    d = str(tmp_path)
    items = [(i, "kill" if i == 27 else "", d) for i in range(N)]
    got = []
    with procpool.ProcessPoolExecutor(2) as ex:
        with pytest.raises(Exception) as info:
            for v in ex.map(attack_tasks.logged, items, chunksize=chunksize or 1):
                got.append(v)
    assert got == [i * 3 for i in range(27)], got
    starts, ends, _ = _runs(d)
    bad = {i: (starts[i], ends[i]) for i in range(N) if i != 27 and starts[i] > 1}
    assert not bad, f"items ran more than once: {bad}"
    assert "27" in str(info.value) or isinstance(info.value, Exception)


@pytest.mark.limit(30)
@pytest.mark.parametrize("how,chunksize", [("exit", 4), ("segv", None)])
def test_a_death_while_pickling_a_result_costs_its_item_alone(tmp_path, how, chunksize):
    d = str(tmp_path)
    killers = (10, 27)
    items = [(i, how if i in killers else "", d) for i in range(N)]
    with procpool.Pool(2) as pool:
        got = _drain(pool.imap(attack_tasks.result_dies, items, chunksize=chunksize), N)
    for i in range(N):
        k, v = got[i]
        if i in killers:
            assert k == "err" and isinstance(v, procpool.WorkerDied), (i, v)
        else:
            assert (k, v) == ("ok", i * 3), (i, k, v)
    _check_runs(d, f"result pickling chunksize={chunksize} {how}", killers)


@pytest.mark.limit(30)
@pytest.mark.parametrize("chunksize", [4, None])
def test_the_parent_never_unpickles_an_argument(tmp_path, chunksize):
    d = str(tmp_path)
    items = [(attack_tasks.Marks(d, i), "segv" if i in (5, 6, 30) else "") for i in range(40)]
    with procpool.Pool(2) as pool:
        got = _drain(pool.imap(attack_tasks.marks_or_dies, items, chunksize=chunksize), 40)
    for i in range(40):
        if i in (5, 6, 30):
            assert got[i][0] == "err", got[i]
        else:
            assert got[i] == ("ok", i), got[i]
    _, _, unpickled = _runs(d)
    here = [i for i, pid in unpickled if pid == os.getpid()]
    assert not here, f"the parent unpickled arguments {here}"


@pytest.mark.limit(30)
@pytest.mark.parametrize("chunksize", [4, 1])
def test_retries_run_a_killing_item_retries_plus_one_times(tmp_path, chunksize):
    d = str(tmp_path)
    items = [(i, "segv" if i == 6 else "", d) for i in range(16)]
    with procpool.Pool(2, retries=1) as pool:
        got = _drain(pool.imap(attack_tasks.logged, items, chunksize=chunksize), 16)
    assert got[6][0] == "err" and isinstance(got[6][1], procpool.WorkerDied), got[6]
    starts, _, _ = _runs(d)
    assert starts[6] == 2, f"retries=1, chunksize={chunksize}: the killing item ran {starts[6]} times"
