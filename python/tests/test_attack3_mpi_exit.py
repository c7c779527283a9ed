"""Rank 0 of a ``python -m procpool.mpi`` job leaving abruptly: with ``os._exit`` (no exit
handler, no MPI_Finalize), its pool open idle or with a task running, or before any pool.
The job must end within seconds and leave no worker, as it does when rank 0 is
SIGKILLed, with ULFM on (``mpirun --with-ft ulfm``, where the runtime reports no such
exit) as without."""

import os

import pytest

import proctools
from test_mpi import _pids, run_job

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scripts", "attack3_mpi.py")


@pytest.mark.limit(25)
@pytest.mark.parametrize("how", ["idle", "busy", "no_pool", "kill"])
def test_rank_0_leaving_by_os_exit_with_its_pool_open_ends_the_job(how):
    # Every rank of these jobs runs on this host, where the agents watch rank 0's process
    # (see crates/procpool/src/mpi/caller.rs); agents on other hosts cannot (README, MPI).
    # Killed, it ends in about 2.5 s; left by os._exit, in about 3 s (it hung for ever
    # under ULFM before the agents watched rank 0); 15 s is a hang on a loaded machine.
    limit = 15
    code, out, err = run_job(["-m", "procpool.mpi", SCRIPT, "hard_exit", how], limit=limit)
    assert code != 0, (code, out, err[-2000:])
    left = proctools.wait_gone([i for i in map(proctools.identity, _pids(out)) if i], 5)
    assert not left, f"workers left running after the job: {left}"


@pytest.mark.limit(90)
def test_rank_0_killed_in_job_after_job_ends_each_job():
    # The agents that lose a SIGKILLed rank 0 leave by themselves. When they ended the
    # job with MPI_Abort instead, Open MPI 5's prterun deadlocked on its own lock after
    # every rank had gone in about 1 job in 40: a hang the single job above rarely meets.
    # Eight jobs in a row (about 2 s each); each must end, leaving no worker.
    for round in range(8):
        code, out, err = run_job(["-m", "procpool.mpi", SCRIPT, "hard_exit", "kill"], limit=15)
        assert code != 0, (round, code, out, err[-2000:])
        left = proctools.wait_gone([i for i in map(proctools.identity, _pids(out)) if i], 5)
        assert not left, f"job {round}: workers left running after the job: {left}"
