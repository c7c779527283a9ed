"""CPython's own tests of ``multiprocessing``'s shared data and synchronization, run
against procpool's classes: the value, array, lock, semaphore, condition, event and
barrier test classes of ``test/_test_multiprocessing.py`` (from the running
interpreter's test package), with ``Lock``, ``Value``... taken from ``procpool``.

The processes these tests start are the standard library's ``fork`` processes: procpool's
objects live in shared memory mapped by the parent, which a forked child inherits (they
also travel to procpool's workers as task arguments: see ``test_sync.py``).

Skipped, each with its reason, where the test reads ``multiprocessing`` internals (see
``SKIPS``). The whole module is skipped when the interpreter has no ``test`` package.
It runs under pytest or alone, on any CPython 3.9-3.13 that can import procpool:
``python -m unittest test_cpython_sync`` from ``python/tests``.
"""

import multiprocessing
import sys
import unittest

try:
    from test import _test_multiprocessing as cpython
except Exception as e:  # pragma: no cover - depends on the interpreter's build
    raise unittest.SkipTest(
        f"this interpreter ({sys.version.split()[0]}) has no test._test_multiprocessing: {e}"
    ) from e

import procpool

_fork = multiprocessing.get_context("fork")

#: Tests that look at the standard library's internals, not at behaviour.
SKIPS = {}


class ProcpoolMixin(cpython.ProcessesMixin):
    TYPE = "processes"
    Process = _fork.Process
    Lock = staticmethod(procpool.Lock)
    RLock = staticmethod(procpool.RLock)
    Semaphore = staticmethod(procpool.Semaphore)
    BoundedSemaphore = staticmethod(procpool.BoundedSemaphore)
    Condition = staticmethod(procpool.Condition)
    Event = staticmethod(procpool.Event)
    Barrier = staticmethod(procpool.Barrier)
    Value = staticmethod(procpool.Value)
    Array = staticmethod(procpool.Array)
    RawValue = staticmethod(procpool.RawValue)
    RawArray = staticmethod(procpool.RawArray)
    # The stdlib's queues and pipes, for the tests that use them to talk to children.
    Queue = staticmethod(_fork.Queue)
    Pipe = staticmethod(_fork.Pipe)


def _adapt(base):
    name = "TestProcpool" + base.__name__[len("_Test") :]
    ns = {"__module__": __name__, "__qualname__": name}
    for test, why in SKIPS.items():
        cls, _, meth = test.partition(".")
        if cls == base.__name__ and hasattr(base, meth):
            ns[meth] = unittest.skip(why)(getattr(base, meth))
    return type(name, (base, ProcpoolMixin, unittest.TestCase), ns)


for _base in (
    cpython._TestLock,
    cpython._TestSemaphore,
    cpython._TestCondition,
    cpython._TestEvent,
    cpython._TestBarrier,
    cpython._TestValue,
    cpython._TestArray,
):
    _cls = _adapt(_base)
    globals()[_cls.__name__] = _cls
del _base, _cls
