"""An argument that ends or fails its worker while the worker unpickles it, on the paths
that send one item per job (``apply``, ``apply_async``, ``imap`` and ``map`` with
``chunksize=1``, ``Executor.submit`` and ``Executor.map``): that item alone fails, with
``WorkerDied`` (``SystemExit`` while unpickling: the worker ends) or the unpickling
error, every other item comes back, and the pool goes on (issue 17 item 2, the paths
that are not a chunk's death; chunks are tested with the crash matrix)."""

import sys

import pytest


def _exit():
    sys.exit(1)


class ExitAtUnpickle:
    def __reduce__(self):
        return (_exit, ())


class RaiseAtUnpickle:
    def __reduce__(self):
        return (int, ("not an int",))


def ident(x):
    return x


def _outcomes(calls):
    out = []
    for call in calls:
        try:
            out.append(call())
        except Exception as e:
            out.append(e)
    return out


def _check(out, pp, bad_kind):
    assert out[:2] == [0, 1] and out[3:] == [3, 4, 5], out
    if bad_kind is ExitAtUnpickle:
        assert isinstance(out[2], pp.WorkerDied) and out[2].exitcode == 1, out[2]
    else:
        assert type(out[2]) is ValueError, out[2]


@pytest.mark.procpool_only
@pytest.mark.limit(60)
@pytest.mark.parametrize("bad_kind", [ExitAtUnpickle, RaiseAtUnpickle])
def test_one_item_per_job_paths(pp, bad_kind):
    items = [0, 1, bad_kind(), 3, 4, 5]
    with pp.Pool(2, timeout=10) as pool:
        it = pool.imap(ident, items, chunksize=1)
        _check(_outcomes([lambda: next(it)] * len(items)), pp, bad_kind)
        with pytest.raises(pp.WorkerDied if bad_kind is ExitAtUnpickle else ValueError):
            pool.map(ident, items, chunksize=1)
        results = [pool.apply_async(ident, (x,)) for x in items]
        _check(_outcomes([lambda r=r: r.get(20) for r in results]), pp, bad_kind)
        _check(_outcomes([lambda x=x: pool.apply(ident, (x,)) for x in items]), pp, bad_kind)
        assert pool.map(ident, range(8)) == list(range(8))
    with pp.ProcessPoolExecutor(2) as ex:
        futures = [ex.submit(ident, x) for x in items]
        _check(_outcomes([lambda f=f: f.result(20) for f in futures]), pp, bad_kind)
        it = ex.map(ident, items, timeout=20)
        assert [next(it), next(it)] == [0, 1]
        with pytest.raises(pp.WorkerDied if bad_kind is ExitAtUnpickle else ValueError):
            next(it)
        assert ex.submit(ident, 9).result(20) == 9
