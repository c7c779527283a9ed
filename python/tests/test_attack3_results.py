"""A result that pickles in the worker but fails to unpickle in the caller (its
``__reduce__`` names a function that raises there): that item alone must fail, with an
error saying so, and every other result of its chunk must come back (they were
computed); the pool goes on."""

import pytest

import attack3_tasks as T

N = 12

@pytest.fixture
def caller_only():
    T.IN_CALLER["on"] = True
    yield
    T.IN_CALLER["on"] = False


def _drain(it):
    out = []
    for _ in range(N):
        try:
            out.append(next(it))
        except StopIteration:
            break
        except Exception as e:
            out.append(e)
    return out


def _check(out, pp):
    want = [i * 10 for i in range(N)]
    assert [x for i, x in enumerate(out) if i != 6] == want[:6] + want[7:], out
    assert isinstance(out[6], pp.PoolError) and "cannot be read here" in str(out[6]), out[6]


@pytest.mark.procpool_only
@pytest.mark.limit(20)
@pytest.mark.parametrize("chunksize", [1, 4])
def test_an_unreadable_result_fails_its_item_alone(pp, make_pp_pool, caller_only, chunksize):
    pool = make_pp_pool(2)
    _check(_drain(pool.imap(T.unreadable_6, range(N), chunksize=chunksize)), pp)
    assert pool.map(abs, [-1, -2]) == [1, 2]


@pytest.mark.procpool_only
@pytest.mark.limit(20)
def test_an_unreadable_result_in_map_fails_alone(pp, make_pp_pool, caller_only):
    pool = make_pp_pool(2)
    r = pool.map_async(T.unreadable_6, range(N), chunksize=4)
    with pytest.raises(pp.PoolError):
        r.get(15)
    # The other finished results of the chunk come back through imap_unordered.
    got = _drain(pool.imap_unordered(T.unreadable_6, range(N), chunksize=4))
    assert sorted(x for x in got if isinstance(x, int)) == [i * 10 for i in range(N) if i != 6]


@pytest.mark.procpool_only
@pytest.mark.limit(20)
def test_an_unreadable_result_says_why(pp, make_pp_pool, caller_only):
    pool = make_pp_pool(2)
    errs = [_drain(pool.imap(T.unreadable_6, range(N), chunksize=4))[6]]
    with pytest.raises(pp.PoolError) as info:
        pool.apply(T.unreadable_6, (6,))
    errs.append(info.value)
    for e in errs:
        assert isinstance(e, pp.PoolError), e
        assert "could not be unpickled" in str(e) and "cannot be read here" in str(e), e
        assert isinstance(e.__cause__, ValueError), e.__cause__
    assert pool.apply(T.unreadable_6, (5,)) == 50
