"""Runs CPython's own ``test_concurrent_futures`` ProcessPoolExecutor tests against
``procpool.ProcessPoolExecutor`` (a program; ``test_cpython_futures.py`` runs it).

The test package is the running interpreter's own (``test.test_concurrent_futures``: a
package on 3.12+, one module before). ``concurrent.futures.ProcessPoolExecutor`` is
replaced by procpool's before the tests are imported, so that the test classes, and the
tests that name ``futures.ProcessPoolExecutor`` in their bodies, build procpool's. Only the
``fork`` variants run: procpool ignores ``mp_context`` (its workers are always forked from
its template process), so the ``spawn`` and ``forkserver`` variants would run the same code
again.

Prints one JSON object on the last line of stdout: ``{"python": "3.13",
"results": {test id: "pass" | "fail" | "error" | "skip"}}``, or
``{"absent": reason}`` when this interpreter has no such test package (exit status 0).

Usage: ``python cpython_futures.py [TEST_ID_SUBSTRING ...]`` (substrings select tests).
"""

import concurrent.futures
import importlib
import io
import json
import sys
import time
import unittest

# The modules holding ProcessPoolExecutor tests (3.12+: a package; before: one module).
PACKAGE_MODULES = [
    "test_process_pool",
    "test_shutdown",
    "test_wait",
    "test_as_completed",
    "test_init",
    "test_deadlock",
]


def _modules():
    try:
        import test.support  # noqa: F401
    except ImportError as e:
        return None, f"the test package of Python {sys.version.split()[0]} is absent ({e})"
    try:
        pkg = importlib.import_module("test.test_concurrent_futures")
    except ImportError as e:
        return None, (
            f"test.test_concurrent_futures of Python {sys.version.split()[0]} is absent ({e})"
        )
    if not hasattr(pkg, "__path__"):
        return [pkg], None
    mods = []
    for name in PACKAGE_MODULES:
        try:
            mods.append(importlib.import_module(f"test.test_concurrent_futures.{name}"))
        except ImportError:
            pass
    return mods, None


class _Result(unittest.TestResult):
    def __init__(self):
        super().__init__()
        self.outcomes = {}
        self.seconds = {}
        self._t = 0.0

    def startTest(self, test):
        super().startTest(test)
        self._t = time.monotonic()

    def stopTest(self, test):
        super().stopTest(test)
        self.seconds[test.id()] = round(time.monotonic() - self._t, 2)

    def addSuccess(self, test):
        self.outcomes[test.id()] = "pass"

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.outcomes[test.id()] = "fail"

    def addError(self, test, err):
        super().addError(test, err)
        self.outcomes[test.id()] = "error"

    def addSkip(self, test, reason):
        self.outcomes[test.id()] = "skip"

    def addExpectedFailure(self, test, err):
        self.outcomes[test.id()] = "pass"

    def addUnexpectedSuccess(self, test):
        self.outcomes[test.id()] = "fail"


def main(argv):
    from test import support

    support.verbose = 0
    import procpool

    concurrent.futures.ProcessPoolExecutor = procpool.ProcessPoolExecutor
    mods, absent = _modules()
    if mods is None:
        print(json.dumps({"absent": absent}))
        return 0
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for mod in mods:
        for name, obj in sorted(vars(mod).items()):
            if (
                isinstance(obj, type)
                and issubclass(obj, unittest.TestCase)
                and name.startswith("ProcessPoolFork")
                and "Forkserver" not in name
            ):
                for test in loader.loadTestsFromTestCase(obj):
                    if not argv or any(s in test.id() for s in argv):
                        suite.addTest(test)
    result = _Result()
    # The stdlib's tests print to stderr (warnings, tracebacks of callbacks): keep quiet.
    real_stderr = sys.stderr
    sys.stderr = io.StringIO()
    try:
        suite.run(result)
    finally:
        captured = sys.stderr.getvalue()
        sys.stderr = real_stderr
    for test, tb in result.failures + result.errors:
        print(f"=== {test.id()}\n{tb}", file=sys.stderr)
    if "-v" in sys.argv:
        print(captured, file=sys.stderr)
    print(
        json.dumps(
            {
                "python": "%d.%d" % sys.version_info[:2],
                "results": result.outcomes,
                "seconds": result.seconds,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main([a for a in sys.argv[1:] if a != "-v"]))
