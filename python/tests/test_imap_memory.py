"""The calling process's memory during a long ``imap`` stays bounded: 300 000 items of
1 KiB through ``imap(chunksize=1000)``, the results dropped, in a fresh interpreter.

Its peak RSS may grow by at most ``BOUND_MIB`` over what it was with the pool started.
Before the bounds of this test were set (payload bytes in flight, spare buffers, results
held for reordering, the data region's ring), that growth was 50-55 MiB; it is now about
25-30 MiB. ``crates/procpool-bench/python_imap_rss.py`` compares the whole figure with
``multiprocessing.Pool``.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

BOUND_MIB = 42

CHILD = r"""
import json, resource, sys
import procpool, synctasks

def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

def gen(n):
    for _ in range(n):
        yield bytes(1024)

with procpool.Pool(2) as pool:
    pool.map(abs, [1, 2])
    base = max(rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    n = 0
    for r in pool.imap(synctasks.identity, gen(int(sys.argv[1])), chunksize=1000):
        n += 1
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "growth_kib": peak - base}))
"""


@pytest.mark.limit(60)
def test_imap_of_many_1_kib_items_keeps_the_parents_memory_bounded(pp):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "300000"],
        capture_output=True,
        text=True,
        timeout=50,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])),
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["n"] == 300_000
    assert r["growth_kib"] / 1024 <= BOUND_MIB, r


# A long imap whose results are as large as its items: the in-flight bound follows the
# consumer (Feed::follow_consumer), the parent keeps no second copy of a plain chunk's
# items, and a chunk is pickled straight into its payload. Run from a shell, the growth
# over 1 M items was 25-31 MiB before those and is 18-19.5 MiB with them (under pytest
# the old code measured lower, 14-18 MiB: this bound is a loose pin, not a regression
# detector).
LONG_BOUND_MIB = 25


@pytest.mark.limit(90)
def test_long_imap_growth_stays_under_a_tighter_bound(pp):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "1000000"],
        capture_output=True,
        text=True,
        timeout=80,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])),
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["n"] == 1_000_000
    assert r["growth_kib"] / 1024 <= LONG_BOUND_MIB, r


@pytest.mark.limit(60)
def test_plain_chunk_over_the_message_limit_is_sent_again_item_by_item(pp):
    # The parent keeps no copy of a plain chunk's items (bytes, numbers, tuples of them):
    # a chunk refused as too large is read back from its own payload and sent again one
    # item per job, so that each item (under the limit) comes back.
    import direct_tasks

    with pp.Pool(1, max_message_size=4096) as pool:
        for items in ([bytes([i]) * 1000 for i in range(10)], [(i, "x" * 900) for i in range(10)]):
            args = [(x, None) for x in items]
            it = pool.imap(direct_tasks.die_on_pair, args, chunksize=10)
            assert [it.next(timeout=20) for _ in items] == items
            with pytest.raises(StopIteration):
                it.next(timeout=20)
