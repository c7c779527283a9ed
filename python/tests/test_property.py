"""Property: `Pool.map` equals the builtin `map` on any list, for any chunk size."""

import pytest
import tasks

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

leaves = st.one_of(
    st.integers(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.floats(allow_nan=False),
    st.none(),
    st.booleans(),
)
values = st.recursive(
    leaves, lambda inner: st.tuples(inner, inner) | st.lists(inner, max_size=4), max_leaves=8
)
item_lists = st.one_of(
    st.lists(st.integers(), max_size=300),
    st.lists(st.text(max_size=30), max_size=100),
    st.lists(values, max_size=100),
)
chunks = st.one_of(st.none(), st.integers(min_value=1, max_value=64))

_pools = {}


def shared_pool(kind):
    """One pool per implementation for every example (hypothesis runs many)."""
    if kind not in _pools:
        import multiprocessing

        import conftest

        if kind == "procpool":
            if conftest.procpool is None:
                pytest.skip("PROCPOOL_ORACLE_ONLY=1: procpool not built")
            _pools[kind] = conftest.procpool.Pool(2)
        else:
            _pools[kind] = multiprocessing.Pool(2)
    return _pools[kind]


@pytest.fixture(scope="module", autouse=True)
def _close_pools():
    yield
    for p in _pools.values():
        p.terminate()
        p.join()
    _pools.clear()


@pytest.mark.limit(90)
@pytest.mark.parametrize("kind", ["procpool", "multiprocessing"])
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=item_lists, chunksize=chunks, ordered=st.booleans())
def test_map_equals_builtin_map(kind, items, chunksize, ordered):
    pool = shared_pool(kind)
    expected = list(map(tasks.describe, items))
    if ordered:
        assert pool.map(tasks.describe, items, chunksize) == expected
    else:
        got = list(pool.imap_unordered(tasks.describe, items, chunksize or 1))
        assert sorted(got) == sorted(expected)
    pairs = [(x, x) for x in items if isinstance(x, int)]
    assert pool.starmap(tasks.add, pairs, chunksize) == [a + b for a, b in pairs]
