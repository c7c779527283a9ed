"""CPython's own ``test_concurrent_futures`` (its ProcessPoolExecutor test classes) run
against ``procpool.ProcessPoolExecutor`` (see ``cpython_futures.py``, the runner).

The runner runs under an interpreter whose own test package has
``test.test_concurrent_futures``: this interpreter when its package has it, else the
first of ``$PROCPOOL_CPYTHON_TESTS_PYTHON`` (a path) or the CPython 3.10-3.13 builds
found under ``~/.pyenv/versions`` that has it (procpool's extension is built for the
stable ABI, so one build loads in each). With none, the test is skipped, saying so.

Every test must pass except those in ``EXPECTED_FAILURES``, each with its reason; one of
those that passes fails this test too (the list must be kept true)."""

import glob
import json
import os
import subprocess
import sys

import pytest

import procpool

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "cpython_futures.py")

_INTERNALS = "reads the stdlib executor's internals ({})"
_BY_DESIGN = (
    "expects BrokenProcessPool for the whole executor where procpool fails the one task "
    "(with its own exception) and goes on, by design"
)

#: test name (class.method) -> why procpool fails it.
EXPECTED_FAILURES = {
    "ProcessPoolForkProcessPoolExecutorTest.test_killed_child": _INTERNALS.format(
        "_processes"
    ),
    "ProcessPoolForkProcessPoolExecutorTest.test_saturation": _INTERNALS.format("_processes"),
    "ProcessPoolForkProcessPoolShutdownTest.test_context_manager_shutdown": _INTERNALS.format(
        "_processes"
    ),
    "ProcessPoolForkProcessPoolShutdownTest.test_del_shutdown": _INTERNALS.format(
        "_executor_manager_thread"
    ),
    "ProcessPoolForkProcessPoolShutdownTest.test_processes_terminate": _INTERNALS.format(
        "_processes"
    ),
    "ProcessPoolForkProcessPoolShutdownTest.test_shutdown_no_wait": _INTERNALS.format(
        "_processes"
    ),
    "ProcessPoolForkExecutorDeadlockTest.test_shutdown_deadlock_pickle": _INTERNALS.format(
        "_executor_manager_thread"
    ),
    "ProcessPoolForkProcessPoolExecutorTest.test_python_finalization_error": (
        "mocks threading's thread start so that the stdlib's second internal thread fails; "
        "procpool's threads differ, so its executor works and runs the (failing) calls"
    ),
    "ProcessPoolForkFailingInitializerTest.test_initializer": (
        "passes a multiprocessing.Queue in initargs, which procpool pickles (the stdlib "
        "hands initargs to its Process by inheritance), and reads the executor's _broken"
    ),
    "ProcessPoolForkExecutorDeadlockTest.test_error_at_task_unpickle": _BY_DESIGN,
}


def _has_package(python, env=None):
    code = "import test.test_concurrent_futures"
    try:
        r = subprocess.run(
            [python, "-c", code], capture_output=True, timeout=60, env=env, cwd=HERE
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _env_for(python):
    """An environment in which ``python`` imports this procpool and its dependencies."""
    env = dict(os.environ)
    if python == sys.executable:
        return env
    pkg_root = os.path.dirname(os.path.dirname(procpool.__file__))
    import cloudpickle

    deps = os.path.dirname(os.path.dirname(cloudpickle.__file__))
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, deps])
    return env


def _interpreter():
    if _has_package(sys.executable):
        return sys.executable, None
    candidates = []
    if os.environ.get("PROCPOOL_CPYTHON_TESTS_PYTHON"):
        candidates.append(os.environ["PROCPOOL_CPYTHON_TESTS_PYTHON"])
    for minor in (13, 12, 10):
        candidates += sorted(
            glob.glob(os.path.expanduser(f"~/.pyenv/versions/3.{minor}.*/bin/python3"))
        )
    for python in candidates:
        if os.access(python, os.X_OK) and _has_package(python, _env_for(python)):
            return python, None
    return None, (
        f"no test.test_concurrent_futures: Python {sys.version.split()[0]}'s test package "
        "lacks it, and no other CPython 3.10-3.13 with it was found "
        "(set PROCPOOL_CPYTHON_TESTS_PYTHON to one)"
    )


@pytest.mark.procpool_only
@pytest.mark.limit(300)
def test_cpython_process_pool_executor_tests(pp):
    python, why = _interpreter()
    if python is None:
        pytest.skip(why)
    r = subprocess.run(
        [python, RUNNER],
        capture_output=True,
        text=True,
        timeout=280,
        env=_env_for(python),
        cwd=HERE,
    )
    out = r.stdout
    start = max(out.rfind('{"python"'), out.rfind('{"absent"'))
    assert r.returncode == 0 and start >= 0, (r.returncode, out[-2000:], r.stderr[-4000:])
    report = json.loads(out[start:])
    if "absent" in report:
        pytest.skip(report["absent"])
    results = {
        ".".join(test_id.split(".")[-2:]): outcome
        for test_id, outcome in report["results"].items()
    }
    assert len(results) >= 40, results  # the runner found the tests
    unexpected = {t: o for t, o in results.items() if o in ("fail", "error")}
    unexpected = {t: o for t, o in unexpected.items() if t not in EXPECTED_FAILURES}
    now_passing = [t for t, o in results.items() if o == "pass" and t in EXPECTED_FAILURES]
    passed = sum(o == "pass" for o in results.values())
    summary = f"Python {report['python']}: {passed} of {len(results)} pass"
    assert not unexpected, f"{summary}; unexpected failures {unexpected}:\n{r.stderr[-8000:]}"
    assert not now_passing, f"{summary}; listed as failing but pass now: {now_passing}"
