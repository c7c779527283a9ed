"""Large and typed data through the pool: NumPy arrays of many kinds and 32 MiB bytes,
round trips checked value for value (procpool and the oracle)."""

import zlib

import pytest
import tasks

np = pytest.importorskip("numpy")

MIB = 1 << 20


def arrays():
    rng = np.random.default_rng(7)
    big = rng.standard_normal(4 * MIB)  # 32 MiB of float64
    grid = rng.integers(-1000, 1000, size=(512, 768), dtype=np.int32)
    out = {
        "float64 32 MiB": big,
        "int8": rng.integers(-128, 127, size=100_000, dtype=np.int8),
        "uint16": rng.integers(0, 65535, size=12345, dtype=np.uint16),
        "float32 2d": rng.standard_normal((300, 200)).astype(np.float32),
        "complex128": rng.standard_normal(5000) + 1j * rng.standard_normal(5000),
        "bool": rng.random(9999) > 0.5,
        "big-endian int32": grid.astype(">i4"),
        "structured": np.array(
            [(i, float(i) / 3, b"ab") for i in range(1000)],
            dtype=[("i", "<i8"), ("f", "<f4"), ("s", "S2")],
        ),
        "datetime64": np.arange("2020-01-01", "2020-03-01", dtype="datetime64[D]"),
        "strided view": big[::3],
        "transposed": grid.T,
        "fortran": np.asfortranarray(grid),
        "reversed": grid[::-1, ::2],
        "0-d": np.array(3.5),
        "empty": np.zeros((0, 4)),
        "object": np.array([1, "a", None, (2, 3)], dtype=object),
    }
    return out


ARRAYS = arrays()


@pytest.fixture(scope="module")
def pools(request):
    """One procpool pool and one oracle pool for the whole module (the data is the point)."""
    import multiprocessing

    import conftest

    made = {"multiprocessing": multiprocessing.Pool(2)}
    if conftest.procpool is not None:
        made["procpool"] = conftest.procpool.Pool(2)
    yield made
    for p in made.values():
        p.terminate()
        p.join()


@pytest.fixture(params=["procpool", "multiprocessing"])
def kind(request, pools):
    if request.param not in pools:
        pytest.skip("PROCPOOL_ORACLE_ONLY=1: procpool not built")
    return request.param


@pytest.fixture
def pool(kind, pools):
    return pools[kind]


@pytest.mark.limit(60)
@pytest.mark.parametrize("name", list(ARRAYS))
def test_array_round_trip(pool, kind, name):
    a = ARRAYS[name]
    back = pool.apply(tasks.identity, (a,))
    assert isinstance(back, np.ndarray)
    if kind == "multiprocessing" and a.dtype.byteorder == ">":
        # pickle protocols below 5 (the standard library's) turn it native-endian
        assert back.dtype == a.dtype.newbyteorder("=")
    else:
        assert back.dtype == a.dtype
    assert back.shape == a.shape
    if a.dtype == object:
        assert back.tolist() == a.tolist()
    else:
        assert np.array_equal(back, a)
    # the worker saw the same array
    if a.dtype.kind in "biuf" and a.dtype.names is None:
        shape, dtype, total = pool.apply(tasks.array_summary, (a,))
        assert tuple(shape) == a.shape
        assert np.dtype(dtype).newbyteorder("=") == a.dtype.newbyteorder("=")
        assert total == pytest.approx(float(a.astype(np.float64).sum()))


@pytest.mark.limit(60)
def test_arrays_through_map(pool):
    items = [ARRAYS[k] for k in ("int8", "float32 2d", "strided view", "fortran", "0-d")]
    backs = pool.map(tasks.identity, items, chunksize=2)
    for a, b in zip(items, backs):
        assert b.dtype == a.dtype and np.array_equal(a, b)


@pytest.mark.limit(60)
def test_result_is_writable_and_independent(pool):
    a = ARRAYS["transposed"].T.copy()
    back = pool.apply(tasks.identity, (a,))
    back[0, 0] += 1  # a result the caller owns and can write
    assert back[0, 0] != a[0, 0]


@pytest.mark.limit(90)
def test_large_bytes(pool):
    blob = bytes(range(256)) * (32 * MIB // 256)
    assert len(blob) == 32 * MIB
    assert pool.apply(tasks.checksum, (blob,)) == (len(blob), zlib.crc32(blob))
    back = pool.apply(tasks.identity, (blob,))
    assert type(back) is bytes and back == blob
    arr = bytearray(blob[: 8 * MIB])
    back = pool.apply(tasks.identity, (arr,))
    assert type(back) is bytearray and back == arr
    blobs = [bytes([i]) * (4 * MIB) for i in range(6)]
    assert pool.map(tasks.checksum, blobs, chunksize=1) == [(len(b), zlib.crc32(b)) for b in blobs]


@pytest.mark.limit(60)
def test_many_arrays_in_flight(pool):
    """More large arrays than workers at once: every result belongs to its own input."""
    arrs = [np.full(MIB, i, dtype=np.float64) for i in range(12)]
    got = list(pool.imap_unordered(tasks.identity, arrs, chunksize=1))
    assert sorted(int(a[0]) for a in got) == list(range(12))
    assert all(np.all(a == a[0]) for a in got)
