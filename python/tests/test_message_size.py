"""``max_message_size=`` (issue 17 item 7): a task whose pickled arguments or result are
larger fails alone with ``procpool.MessageTooLarge``, whose message names the keyword a
Python user can change; the pool goes on. By default the limit is the engine's largest
(4 GiB - 1 KiB), so a 1 GiB argument or result goes through as with the stdlib (measured
once, not in the suite: see the README)."""

import pytest

LIMIT = 1 << 20


def nbytes(b):
    return len(b)


def make(n):
    return b"x" * n


@pytest.mark.procpool_only
def test_a_message_over_the_limit_fails_alone_naming_the_keyword(pp):
    with pp.Pool(2, max_message_size=LIMIT) as pool:
        with pytest.raises(pp.MessageTooLarge, match="max_message_size="):
            pool.apply(nbytes, (b"a" * (2 * LIMIT),))
        with pytest.raises(pp.MessageTooLarge, match="max_message_size="):
            pool.apply(make, (2 * LIMIT,))
        with pytest.raises(pp.MessageTooLarge):
            pool.map(make, [10, 2 * LIMIT, 20], chunksize=1)
        it = pool.imap(make, [10, 2 * LIMIT, 20], chunksize=1)
        assert len(next(it)) == 10
        with pytest.raises(pp.MessageTooLarge):
            next(it)
        assert len(next(it)) == 20
        assert pool.apply(nbytes, (b"a" * (LIMIT // 2),)) == LIMIT // 2


@pytest.mark.procpool_only
def test_the_executor_takes_the_keyword_too(pp):
    with pp.ProcessPoolExecutor(2, max_message_size=LIMIT) as ex:
        exc = ex.submit(make, 2 * LIMIT).exception(timeout=20)
        assert isinstance(exc, pp.MessageTooLarge) and "max_message_size=" in str(exc)
        assert ex.submit(nbytes, b"a" * 100).result(timeout=20) == 100


@pytest.mark.procpool_only
@pytest.mark.parametrize(
    "bad, error",
    [(0, ValueError), (-1, ValueError), (1 << 40, ValueError), (1.5, TypeError), (True, TypeError)],
)
def test_a_bad_limit_is_refused_before_any_worker_starts(pp, bad, error):
    with pytest.raises(error, match="max_message_size"):
        pp.Pool(1, max_message_size=bad)
    with pytest.raises(error, match="max_message_size"):
        pp.ProcessPoolExecutor(1, max_message_size=bad)
