"""Every ``Example::`` block in the public API's docstrings runs, and examples/compute.py
runs as a program."""

import inspect
import os
import re
import subprocess
import sys
import textwrap

import pytest

import procpool
import procpool._shared
import procpool.executor
import procpool.mpi
import procpool.pool
import procpool.results
import procpool.sharedctypes
import procpool.synchronize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _examples():
    found = {}

    def grab(obj, name):
        doc = (inspect.getdoc(obj) or "") + "\n"
        for i, m in enumerate(re.finditer(r"Example::\n\n((?:    .*\n|\n)+)", doc)):
            found.setdefault(textwrap.dedent(m.group(1)), f"{name}#{i}")

    for mod in (
        procpool,
        procpool.pool,
        procpool.results,
        procpool.executor,
        procpool.mpi,
        procpool.synchronize,
        procpool.sharedctypes,
        procpool._shared,
    ):
        grab(mod, mod.__name__)
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", "").split(".")[0] != "procpool":
                continue
            grab(obj, name)
            if inspect.isclass(obj):
                for mname, member in vars(obj).items():
                    if callable(member) and not mname.startswith("_"):
                        grab(member, f"{name}.{mname}")
    return sorted((name, code) for code, name in found.items())


EXAMPLES = _examples()


def test_the_public_api_has_examples():
    names = {name.split("#")[0] for name, _ in EXAMPLES}
    for required in [
        "procpool",
        "Pool",
        "Pool.map",
        "Pool.imap",
        "Pool.apply_async",
        "ProcessPoolExecutor",
        "ProcessPoolExecutor.submit",
        "ProcessPoolExecutor.map",
        "ProcessPoolExecutor.shutdown",
        "cpu_count",
        "procpool.synchronize",
        "Lock",
        "RLock",
        "Semaphore",
        "BoundedSemaphore",
        "Event",
        "Condition",
        "Barrier",
        "Value",
        "Array",
        "RawValue",
        "RawArray",
        "shared",
        "SharedHandle",
        "procpool.mpi",
        "MPIUnavailable",
        "launched",
        "rank",
        "mpirun",
    ]:
        assert required in names


@pytest.mark.parametrize("name, code", EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_docstring_example_runs(name, code, capsys):
    code = code.replace("10_000_000", "10_000")  # the seed's size, made quick
    if ">>>" in code:
        import doctest

        parser = doctest.DocTestParser()
        test = parser.get_doctest(code, {"procpool": procpool}, name, None, 0)
        runner = doctest.DocTestRunner()
        runner.run(test)
        assert runner.failures == 0, name
    else:
        env = {"__name__": "__main__"}
        exec(compile("import procpool, concurrent.futures\n" + code, name, "exec"), env)


def test_examples_compute_runs_as_a_program():
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "compute.py"),
            "--tasks",
            "4",
            "--n",
            "20000",
            "--workers",
            "2",
            "--compare",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(eval(lines[0])) == 4
    assert "speedup" in lines[1]
