"""procpool's Python front over MPI: ``Pool(mpi=True)``, ``ProcessPoolExecutor(mpi=True)``
and ``python -m procpool.mpi``.

MPI initializes once per process, so each scenario is a job of its own:
``mpirun -n 3 python -m procpool.mpi scripts/mpi_scenarios.py NAME`` (rank 0 runs the
scenario, whose asserts are the checks; ranks 1 and 2 are agents with two workers each),
run in its own process group under a hard time limit, then checked for its exit code and
for the workers it used being gone. The tasks are defined in the script's ``__main__``.

Needs the ``_procpool_mpi`` extension (``scripts/build-mpi-python``, run by
``scripts/setup``) and the ``mpirun`` it was built against; with Open MPI 5 or later the
jobs run with ULFM (``--with-ft ulfm``), and the lost-agent scenario runs.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

import procpool.mpi

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = os.path.join(HERE, "scripts", "mpi_scenarios.py")
#: Longest one MPI job may take before it counts as hung.
HARD_LIMIT = 60.0


def _mpirun():
    path = os.environ.get("PROCPOOL_MPIRUN") or procpool.mpi.mpirun()
    if not path:
        pytest.fail("no mpirun: install Open MPI (scripts/setup), or set PROCPOOL_MPIRUN")
    try:
        import _procpool_mpi  # noqa: F401
    except ImportError as e:
        pytest.fail(f"the _procpool_mpi extension does not load ({e}): run scripts/build-mpi-python")
    return path


_FT = {}


def fault_tolerant(mpirun):
    """Whether ``mpirun`` is Open MPI 5 or later, whose ULFM (``--with-ft ulfm``) lets a
    job survive a lost rank."""
    if mpirun not in _FT:
        try:
            v = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30)
            m = re.search(r"Open MPI\)? v?(\d+)\.", v.stdout)
            _FT[mpirun] = bool(m) and int(m.group(1)) >= 5
        except (OSError, subprocess.SubprocessError):
            _FT[mpirun] = False
    return _FT[mpirun]


def _job_env():
    env = dict(os.environ)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",  # Open MPI 4: more ranks than cores
        PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",  # Open MPI 5
        PYTHONUNBUFFERED="1",
    )
    return env


def start_job(args, ranks=3, cwd=HERE, preexec_fn=None):
    """Starts ``mpirun -n ranks python ARGS`` (with ULFM where the ``mpirun`` has it) in a
    session of its own, its output piped as text."""
    mpirun = _mpirun()
    ft = ["--with-ft", "ulfm"] if fault_tolerant(mpirun) else []
    return subprocess.Popen(
        [mpirun, *ft, "-n", str(ranks), sys.executable, *args],
        cwd=cwd,
        env=_job_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )


def run_job(args, ranks=3, limit=HARD_LIMIT, cwd=HERE):
    """Runs ``mpirun -n ranks python ARGS``; ``(returncode, stdout, stderr)``. A job past
    ``limit`` is killed with its process group and fails the test. A job whose runtime
    failed to start before any rank ran (Open MPI's PMIx server could not start its
    listener thread, seen once in CI on a busy machine) is started again, up to twice."""
    for attempt in range(3):
        p = start_job(args, ranks, cwd)
        try:
            out, err = p.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            pytest.fail(f"the MPI job {args} hung (killed after {limit:.0f} s)\n{err[-3000:]}")
        runtime_failed = (
            p.returncode != 0 and not out and "listener thread failed to start" in err
        )
        if not runtime_failed or attempt == 2:
            return p.returncode, out, err
        print(
            f"mpirun's runtime failed to start (no rank ran); starting {args} again",
            file=sys.stderr,
        )
        time.sleep(0.2)


def _pids(out):
    for line in out.splitlines():
        if line.startswith("pids: "):
            return [int(x) for x in line[6:].strip("[]").split(",") if x.strip()]
    pytest.fail(f"the scenario printed no pids:\n{out}")


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def check_scenario(name, launcher=True):
    args = ["-m", "procpool.mpi", SCENARIOS, name] if launcher else [SCENARIOS, name]
    code, out, err = run_job(args)
    assert code == 0, f"scenario {name}: exit code {code}\n{out}\n{err[-4000:]}"
    pids = _pids(out)
    assert pids, out
    # Every worker the agents ran is gone with the job.
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], f"workers left running after the job: {pids}"
    return out, err


@pytest.mark.limit(HARD_LIMIT + 10)
def test_map_apply_a_lambda_and_the_executor_across_agents():
    check_scenario("map")  # then the executor's, in the same job


@pytest.mark.limit(HARD_LIMIT + 10)
def test_a_segfault_or_exit_on_an_agent_fails_that_task_alone():
    check_scenario("faults")


@pytest.mark.limit(HARD_LIMIT + 10)
def test_a_time_limit_on_an_agent_fails_that_task_alone_and_terminate_kills_remote_workers():
    # Then the initializer, maxtasksperchild, and terminate() (the remote workers killed
    # mid-task, the agents serving the next pool), in the same job.
    check_scenario("timeout")


@pytest.mark.limit(HARD_LIMIT + 10)
def test_an_agent_sigkilled_mid_map_every_item_comes_back_once_and_the_pool_goes_on():
    if not fault_tolerant(_mpirun()):
        pytest.skip("needs Open MPI 5 or later (ULFM): without it a lost agent ends the job")
    check_scenario("lose_agent")


@pytest.mark.limit(HARD_LIMIT + 10)
def test_every_agent_sigkilled_the_pool_says_so_and_the_job_ends():
    if not fault_tolerant(_mpirun()):
        pytest.skip("needs Open MPI 5 or later (ULFM): without it a lost agent ends the job")
    check_scenario("lose_all")


@pytest.mark.limit(HARD_LIMIT + 10)
def test_without_the_launcher_module_agents_start_at_the_first_mpi_pool():
    check_scenario("rank", launcher=False)


@pytest.mark.limit(HARD_LIMIT + 10)
def test_an_error_on_rank_0_ends_the_job_with_its_traceback():
    code, out, err = run_job(["-m", "procpool.mpi", SCENARIOS, "error"])
    assert code not in (0, None), (code, out, err)
    assert "RuntimeError: the program failed on rank 0" in err, err[-3000:]


@pytest.mark.limit(HARD_LIMIT + 10)
def test_module_form_of_the_launcher_with_its_task_in_main(tmp_path):
    (tmp_path / "modjob.py").write_text(
        "import os, sys, procpool\n"
        "def cube(x):\n"
        "    return x ** 3, os.getppid()\n"
        "if __name__ == '__main__':\n"
        "    with procpool.Pool(1, mpi=True) as p:\n"
        "        out = p.map(cube, range(6), chunksize=1)\n"
        "    assert os.getpid() not in {a for _, a in out}, 'ran on rank 0'\n"
        "    print('got', [v for v, _ in out], sys.argv[1:])\n"
    )
    code, out, err = run_job(["-m", "procpool.mpi", "-m", "modjob", "y"], cwd=str(tmp_path))
    assert code == 0, (out, err[-3000:])
    assert "got [0, 1, 8, 27, 64, 125] ['y']" in out, out


@pytest.mark.limit(HARD_LIMIT + 10)
def test_code_form_of_the_launcher(tmp_path):
    code, out, err = run_job(
        [
            "-m",
            "procpool.mpi",
            "-c",
            "import procpool, sys\n"
            "with procpool.Pool(1, mpi=True) as p:\n"
            "    print('got', p.map(abs, [-1, -2, 3]), sys.argv[1:])\n",
            "x",
        ]
    )
    assert code == 0, (out, err[-3000:])
    assert "got [1, 2, 3] ['x']" in out, out


def _python(code, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "PMIX"))}
    env.pop("MPI_LOCALNRANKS", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_without_mpirun_mpi_true_is_a_local_pool_and_loads_no_mpi():
    r = _python(
        "import sys, procpool\n"
        "def maps():\n"
        "    return [l for l in open('/proc/self/maps') if 'libmpi' in l]\n"
        "assert not maps(), 'import procpool loaded libmpi'\n"
        "with procpool.Pool(2, mpi=True) as p:\n"
        "    assert p.map(abs, [-1, -2]) == [1, 2]\n"
        "with procpool.ProcessPoolExecutor(2, mpi=True) as ex:\n"
        "    assert ex.submit(abs, -3).result(timeout=30) == 3\n"
        "assert '_procpool_mpi' not in sys.modules and not maps(), maps()\n"
        "assert procpool.mpi.rank() is None\n"
        "print('ok')\n"
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@pytest.mark.parametrize("kind", ["Pool", "ProcessPoolExecutor"])
def test_under_a_launcher_without_mpi_support_the_error_says_what_to_build(kind):
    # A launcher's variable, and the extension made unimportable: as on an installation
    # from the wheel, which has no MPI support.
    r = _python(
        "import sys\n"
        "sys.modules['_procpool_mpi'] = None\n"
        "import procpool, procpool.mpi\n"
        "try:\n"
        f"    procpool.{kind}(2, mpi=True)\n"
        "except procpool.mpi.MPIUnavailable as e:\n"
        "    assert isinstance(e, ImportError)\n"
        "    print('refused:', e)\n",
        {"OMPI_COMM_WORLD_SIZE": "3"},
    )
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout, r.stdout
    assert "scripts/build-mpi-python" in r.stdout and "no MPI support" in r.stdout, r.stdout


def test_launcher_usage_and_bad_arguments():
    r = subprocess.run(
        [sys.executable, "-m", "procpool.mpi", "--help"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0 and "usage: mpirun -n N python -m procpool.mpi" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "procpool.mpi", "/nonexistent/x.py"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0 and "can't open file" in r.stderr, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "procpool.mpi", "--bogus"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode != 0 and "unknown option --bogus" in r.stderr, r.stderr


def test_without_mpirun_the_launcher_runs_the_script_alone():
    r = _python(
        "import runpy, sys\n"
        f"sys.argv = ['procpool.mpi', {SCENARIOS!r}, 'rank_alone']\n"
        "runpy.run_module('procpool.mpi', run_name='__main__')\n"
    )
    # No such scenario: the script itself runs (and fails on its own terms) on this rank.
    assert "scenario_rank_alone" in r.stderr, r.stderr
