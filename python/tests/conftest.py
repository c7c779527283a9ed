"""Shared fixtures of the Python suite.

Every drop-in test runs twice: once on ``procpool.Pool`` and once on ``multiprocessing.Pool``,
the oracle, so each expectation is checked against the standard library itself. Set
``PROCPOOL_ORACLE_ONLY=1`` to run only the oracle half (for example before the extension is
built); otherwise a missing ``procpool`` is an error, never a silent skip.

Each test has a time limit (``@pytest.mark.limit(seconds)``, 30 s by default): past it,
SIGALRM raises ``TestTimedOut`` in the test (which fails alone), and if even that cannot
interrupt it, faulthandler dumps every thread's stack and ends the run ten seconds later.
Nothing can hang the suite.
"""

import concurrent.futures
import faulthandler
import multiprocessing
import os
import signal
import sys

import pytest

# A run started with SIGINT ignored (a background job of a non-interactive shell, or under
# nohup) would pass that on to every program the Ctrl-C tests start, which then could not
# be interrupted. Those programs stand for ones run from a terminal: a handler here makes
# each program this run starts begin with SIGINT's default action.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

ORACLE_ONLY = os.environ.get("PROCPOOL_ORACLE_ONLY") == "1"
DEFAULT_LIMIT = 30.0

try:
    import procpool
except ImportError as e:  # pragma: no cover - depends on the build
    if not ORACLE_ONLY:
        raise ImportError(
            f"procpool cannot be imported ({e}); build it first "
            "(maturin develop, or pip install .), or set PROCPOOL_ORACLE_ONLY=1 "
            "to check the tests against multiprocessing alone"
        ) from e
    procpool = None


class TestTimedOut(Exception):
    """A test ran past its time limit."""


def pytest_configure(config):
    config.addinivalue_line("markers", "limit(seconds): the test's time limit")
    config.addinivalue_line("markers", "procpool_only: a behaviour the standard library lacks")


@pytest.fixture(autouse=True)
def _time_limit(request):
    marker = request.node.get_closest_marker("limit")
    limit = float(marker.args[0]) if marker else DEFAULT_LIMIT

    def on_alarm(signum, frame):
        raise TestTimedOut(f"{request.node.nodeid} ran past its limit of {limit:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    faulthandler.dump_traceback_later(limit + 10, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, old)


def _need_procpool():
    if procpool is None:
        pytest.skip("PROCPOOL_ORACLE_ONLY=1: procpool not built")
    return procpool


@pytest.fixture
def pp():
    """The procpool package (skipped only under PROCPOOL_ORACLE_ONLY=1)."""
    return _need_procpool()


class _Factory:
    """Makes pools or executors of one implementation (``kind``, class ``cls``) and ends
    every one of them at teardown (``end``)."""

    def __init__(self, kind):
        self.kind = kind
        self.made = []

    def __call__(self, workers=2, **kw):
        made = self.cls(workers, **kw)
        self.made.append(made)
        return made

    def close_all(self):
        for made in self.made:
            self.end(made)


def _factory(request, factory):
    """Yields ``factory``, made for the implementation ``request.param`` names, then ends
    what it made."""
    made = factory(request.param)
    if request.param == "procpool":
        _need_procpool()
    yield made
    made.close_all()


class Pools(_Factory):
    """Makes pools of one implementation and ends every one of them at teardown."""

    @property
    def cls(self):
        return multiprocessing.Pool if self.kind == "multiprocessing" else _need_procpool().Pool

    @staticmethod
    def end(pool):
        pool.terminate()
        pool.join()


@pytest.fixture(params=["procpool", "multiprocessing"])
def make_pool(request):
    """A pool factory, parametrized over procpool and the oracle."""
    yield from _factory(request, Pools)


@pytest.fixture
def make_pp_pool(pp):
    """A procpool-only pool factory (for behaviour the standard library lacks)."""
    pools = Pools("procpool")
    yield pools
    pools.close_all()


class Executors(_Factory):
    """Makes executors of one implementation and shuts every one of them down at teardown."""

    @property
    def cls(self):
        if self.kind == "concurrent.futures":
            return concurrent.futures.ProcessPoolExecutor
        return _need_procpool().ProcessPoolExecutor

    @staticmethod
    def end(ex):
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(params=["procpool", "concurrent.futures"])
def make_executor(request):
    """An executor factory, parametrized over procpool and the oracle."""
    yield from _factory(request, Executors)
