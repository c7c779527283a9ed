"""Functions the workers cannot import: lambdas, closures, and code defined in __main__.

    python main_funcs.py [--stdlib]

Prints one JSON object. With --stdlib, runs the parts that go by reference on
multiprocessing.Pool instead (the oracle for those parts).
"""

import json
import os
import sys

import helper_mod

# The parent's pid, also where workers run this script again as __mp_main__ (spawn-style).
PARENT = int(os.environ.setdefault("MAIN_FUNCS_PARENT", str(os.getpid())))
OFFSET = 100


def in_main(x):
    return x + OFFSET


def make_closure(k):
    def times_k(x):
        return x * k

    return times_k


class Point:
    def __init__(self, x):
        self.x = x


def point_x(p):
    return p.x


def in_worker(_=None):
    return os.getpid() != PARENT


def by_reference(pool):
    return {
        "main_func": pool.map(in_main, range(5)),
        "main_class": pool.map(point_x, [Point(i) for i in range(3)]),
        "helper": pool.map(helper_mod.triple, range(5)),
        "in_worker": all(pool.map(in_worker, range(4), chunksize=1)),
    }


def by_value(pool):
    offset = 7
    return {
        "lambda": pool.map(lambda x: x**2, range(5)),
        "closure": pool.map(make_closure(3), range(5)),
        "local_lambda": pool.map(lambda x: x + offset, range(3)),
        "apply_lambda": pool.apply(lambda a, b: a - b, (10, 4)),
        "starmap_lambda": pool.starmap(lambda a, b: a * b, [(2, 3), (4, 5)]),
        "imap_closure": list(pool.imap(make_closure(-1), range(3))),
        "unordered_lambda": sorted(pool.imap_unordered(lambda x: -x, range(4))),
        "async_lambda": pool.apply_async(lambda: os.getpid() != PARENT).get(10),
    }


if __name__ == "__main__":
    if "--stdlib" in sys.argv:
        import multiprocessing

        with multiprocessing.Pool(2) as pool:
            out = by_reference(pool)
    else:
        import procpool

        with procpool.Pool(2) as pool:
            out = by_reference(pool)
            out.update(by_value(pool))
        with procpool.ProcessPoolExecutor(2) as ex:
            out["executor_lambda"] = list(ex.map(lambda x: x + 1, range(3)))
            out["executor_submit"] = ex.submit(make_closure(5), 2).result(10)
    print(json.dumps(out, sort_keys=True))
