"""Scenarios of procpool's Python front over MPI, run by ``test_mpi.py`` as
``mpirun -n 3 python -m procpool.mpi mpi_scenarios.py NAME`` (or without the launcher
module, as ``python mpi_scenarios.py NAME`` on every rank). Rank 0 runs scenario NAME;
its asserts are the checks (an uncaught error fails the job). Every task is defined here,
in ``__main__``: workers on the agents find them by running this script as
``__mp_main__``. Each scenario prints ``pids: [...]`` (the workers that ran tasks) for the
test to check they are gone after the job.
"""

import concurrent.futures
import ctypes
import os
import sys
import time

import procpool

PER_AGENT = 2
AGENTS = {1, 2}
USED = set()


def where():
    return int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "-1")))


def square(x):
    return x * x


def square_where(x):
    return x * x, where(), os.getpid()


def add(a, b):
    return a + b


def divide(a, b):
    return a / b


def crash(x):
    if x == 13:
        ctypes.string_at(0)  # SIGSEGV in this worker
    if x == 17:
        os._exit(7)
    return x + 100, os.getpid()


def nap(x):
    if x == 3:
        time.sleep(60)
    return x, os.getpid()


def read_seed(x):
    return x + SEED, os.getpid()


SEED = 0


def mpi_loaded(_):
    with open("/proc/self/maps") as f:
        return any("libmpi" in line for line in f), os.getpid()


def nested(x):
    # In a worker on an agent (the launcher's variables inherited): a local pool.
    with procpool.Pool(1, mpi=True) as p:
        return p.apply(square, (x,)), "_procpool_mpi" in sys.modules, os.getpid()


def set_seed(v):
    global SEED
    SEED = v


def note(results):
    for r in results:
        USED.add(r[-1])
    return results


def scenario_map():
    with procpool.Pool(PER_AGENT, mpi=True) as pool:
        assert pool._processes == PER_AGENT * len(AGENTS), pool._processes
        n = 20_000
        out = note(pool.map(square_where, range(n)))
        assert [v for v, *_ in out] == [i * i for i in range(n)]
        assert {r for _, r, _ in out} <= AGENTS, {r for _, r, _ in out}
        # One item per job: both agents take part.
        one = note(list(pool.imap(square_where, range(400), chunksize=1)))
        assert [v for v, *_ in one] == [i * i for i in range(400)]
        assert {r for _, r, _ in one} == AGENTS, {r for _, r, _ in one}
        got = sorted(pool.imap_unordered(square, range(1000), chunksize=7))
        assert got == sorted(i * i for i in range(1000))
        assert pool.starmap(add, [(i, i) for i in range(100)]) == [2 * i for i in range(100)]
        assert pool.apply(add, (2, 3)) == 5
        r = pool.apply_async(square_where, (9,))
        assert r.get(timeout=30)[0] == 81
        assert pool.map_async(square, range(50)).get(timeout=30) == [i * i for i in range(50)]
        # Functions by value (a lambda) and a task's own exception.
        assert pool.map(lambda x: x + 1, range(10)) == list(range(1, 11))
        try:
            pool.apply(divide, (1, 0))
        except ZeroDivisionError:
            pass
        else:
            raise AssertionError("1/0 on an agent did not raise ZeroDivisionError")
        # A large argument and result both ways (several MiB cross MPI).
        big = bytes(range(256)) * (16 << 12)
        assert pool.apply(len, (big,)) == len(big)
        assert pool.apply(bytes, (len(big),)) == bytes(len(big))
        # The workers are plain procpool._core workers: no MPI library in them.
        assert not any(v for v, _ in note(pool.map(mpi_loaded, range(8), chunksize=1)))
        v, loaded, pid = pool.apply(nested, (6,))
        assert (v, loaded) == (36, False), (v, loaded)
        USED.add(pid)
        # Open files of this host cannot travel to another: refused, the task alone.
        try:
            pool.apply(square, (procpool.Lock(),))
        except procpool.PoolError as e:
            assert "other hosts" in str(e), e
        else:
            raise AssertionError("a Lock argument went to an agent")
        assert pool.apply(square, (4,)) == 16
        # One MPI pool at a time: a second one is refused while this one is open.
        try:
            procpool.Pool(1, mpi=True)
        except procpool.PoolError as e:
            assert "already open" in str(e), e
        else:
            raise AssertionError("a second MPI pool opened beside the first")
    try:
        procpool.Pool(1, mpi=True, initializer=set_seed, initargs=(procpool.Lock(),))
    except ValueError as e:
        assert "other hosts" in str(e), e
    else:
        raise AssertionError("a Lock in initargs went to the agents")
    # A second pool on the same agents, then the executor.
    with procpool.Pool(1, mpi=True) as pool:
        assert pool._processes == len(AGENTS)
        assert pool.map(square, range(100)) == [i * i for i in range(100)]
    scenario_executor()


def scenario_executor():
    with procpool.ProcessPoolExecutor(PER_AGENT, mpi=True) as ex:
        assert ex._max_workers == PER_AGENT * len(AGENTS), ex._max_workers
        futures = [ex.submit(square_where, i) for i in range(200)]
        done = [f.result(timeout=30) for f in concurrent.futures.as_completed(futures)]
        note(done)
        assert sorted(v for v, *_ in done) == sorted(i * i for i in range(200))
        assert {r for _, r, _ in done} == AGENTS
        assert list(ex.map(square, range(500), chunksize=10)) == [i * i for i in range(500)]
        assert list(ex.map(add, range(50), range(50))) == [2 * i for i in range(50)]
        f = ex.submit(divide, 1, 0)
        assert isinstance(f.exception(timeout=30), ZeroDivisionError)
    print("pids:", sorted(USED))


def scenario_faults():
    with procpool.Pool(PER_AGENT, mpi=True) as pool:
        for chunksize in (1, None, 8):
            it = pool.imap(crash, range(40), chunksize=chunksize)
            for i in range(40):
                try:
                    v, pid = next(it)
                except procpool.WorkerDied as e:
                    assert i in (13, 17), (i, e)
                    if i == 13:
                        assert e.signal == 11 and e.exitcode is None, (e.signal, e.exitcode)
                    else:
                        assert e.exitcode == 7 and e.signal is None, (e.signal, e.exitcode)
                else:
                    assert i not in (13, 17), i
                    assert v == i + 100
                    USED.add(pid)
        # Through apply_async: the crash fails that call alone; the pool goes on.
        bad = pool.apply_async(crash, (13,))
        goods = [pool.apply_async(crash, (i,)) for i in range(5)]
        try:
            bad.get(timeout=30)
        except procpool.WorkerDied:
            pass
        else:
            raise AssertionError("a segfault on an agent was not WorkerDied")
        assert [g.get(timeout=30)[0] for g in goods] == [i + 100 for i in range(5)]
    # Retried once on a fresh worker: still dies, and fails with WorkerDied all the same.
    with procpool.Pool(PER_AGENT, mpi=True, retries=1) as pool:
        out = []
        for r in [pool.apply_async(crash, (i,)) for i in (12, 13, 14)]:
            try:
                out.append(r.get(timeout=30)[0])
            except procpool.WorkerDied:
                out.append("died")
        assert out == [112, "died", 114], out
    with procpool.ProcessPoolExecutor(PER_AGENT, mpi=True) as ex:
        f = ex.submit(crash, 13)
        g = ex.submit(crash, 1)
        assert isinstance(f.exception(timeout=30), procpool.WorkerDied)
        assert g.result(timeout=30)[0] == 101
    print("pids:", sorted(USED))


def scenario_timeout():
    t0 = time.monotonic()
    with procpool.Pool(PER_AGENT, mpi=True, timeout=1.0) as pool:
        rs = [pool.apply_async(nap, (i,)) for i in range(8)]
        for i, r in enumerate(rs):
            try:
                v, pid = r.get(timeout=30)
            except procpool.TaskTimeoutError:
                assert i == 3, i
            else:
                assert i != 3 and v == i
                USED.add(pid)
        out = []
        for i in range(6):
            try:
                out.append(pool.map(nap, [i], timeout=0.5)[0][0])
            except procpool.TaskTimeoutError:
                out.append("timed out")
        assert out == [0, 1, 2, "timed out", 4, 5], out
    took = time.monotonic() - t0
    assert took < 20, f"the time limits took {took:.1f}s to act"
    with procpool.Pool(PER_AGENT, mpi=True, initializer=set_seed, initargs=(1000,)) as pool:
        got = pool.map(read_seed, range(20), chunksize=1)
        assert [v for v, _ in got] == [1000 + i for i in range(20)]
        USED.update(pid for _, pid in got)
    # maxtasksperchild on the agents: each task on a fresh worker there.
    with procpool.Pool(1, mpi=True, maxtasksperchild=1) as pool:
        got = pool.map(read_seed, range(6), chunksize=1)
        pids = [pid for _, pid in got]
        assert len(set(pids)) == 6, pids
        USED.update(pids)
    scenario_terminate()


def sleep_noting(d):
    with open(os.path.join(d, str(os.getpid())), "w"):
        pass
    time.sleep(60)


def scenario_terminate():
    import tempfile

    d = tempfile.mkdtemp()
    pool = procpool.Pool(PER_AGENT, mpi=True)
    r = pool.map_async(sleep_noting, [d] * 4, chunksize=1)
    deadline = time.monotonic() + 20
    while len(os.listdir(d)) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    running = [int(p) for p in os.listdir(d)]
    assert len(running) == 4, running
    t = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - t < 10, "terminate waited for the tasks"
    try:
        r.get(timeout=10)
    except Exception:
        pass
    else:
        raise AssertionError("a terminated map returned results")
    # The remote workers that ran the tasks were killed.
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in running) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = [p for p in running if os.path.exists(f"/proc/{p}")]
    assert not left, f"remote workers still running after terminate: {left}"
    # The agents serve the next pool.
    with procpool.Pool(PER_AGENT, mpi=True) as pool:
        assert pool.map(square, range(10)) == [i * i for i in range(10)]
    # An executor's pending calls are cancelled; a running one ends with the executor.
    ex = procpool.ProcessPoolExecutor(1, mpi=True)
    futures = [ex.submit(square, i) for i in range(4)]
    assert [f.result(timeout=30) for f in futures] == [0, 1, 4, 9]
    ex.shutdown(wait=True, cancel_futures=True)
    USED.update(running)
    print("pids:", sorted(USED))


def double_slowly(x):
    time.sleep(0.0003)
    return x, 2 * x, where(), os.getppid(), os.getpid()


def scenario_lose_agent():
    # Under `mpirun --with-ft ulfm`: rank 2's agent is SIGKILLed in the middle of a map of
    # 10 000 items. Every item comes back exactly once, with its value (a job that had
    # started there is one attempt; retries=1 runs it again elsewhere), and a second map
    # runs on the agent left.
    import signal

    n = 10_000
    with procpool.Pool(PER_AGENT, mpi=True, retries=1) as pool:
        got = {}
        agents = {}
        killed = None
        for x, v, r, agent, pid in pool.imap_unordered(double_slowly, range(n)):
            assert x not in got, f"item {x} came back twice"
            got[x] = v
            agents[r] = agent
            USED.add(pid)
            if killed is None and len(got) >= n // 5 and 2 in agents:
                killed = agents[2]
                os.kill(killed, signal.SIGKILL)
        assert killed is not None, f"rank 2 ran nothing: {sorted(agents)}"
        assert len(got) == n and all(got[x] == 2 * x for x in range(n)), len(got)
        after = note(pool.map(double_slowly, range(500)))
        assert [v for _, v, *_ in after] == [2 * x for x in range(500)]
        assert {r for _, _, r, *_ in after} == {1}, {r for _, _, r, *_ in after}
        agents = pool._core.engine.stats()["agents"]
        assert (agents["started"], agents["alive"], agents["survives_loss"]) == (2, 1, True), agents
        assert len(agents["lost"]) == 1 and "rank 2" in agents["lost"][0], agents
    # The lost agent's workers are among those the test checks are gone.
    print("pids:", sorted(USED))


def scenario_lose_all():
    # Under `mpirun --with-ft ulfm`, without retries: both agents SIGKILLed mid-map. The
    # tasks they held fail with AgentLost (a WorkerDied), never a wrong or missing value
    # in silence, and the pool then refuses work with PoolError saying every agent was
    # lost; no hang, and the job ends normally.
    import signal

    with procpool.Pool(PER_AGENT, mpi=True) as pool:
        agents = {}
        got, failed = 0, []
        it = pool.imap_unordered(double_slowly, range(10_000), chunksize=1)
        while True:
            try:
                x, v, r, agent, pid = next(it)
            except StopIteration:
                break
            except (procpool.AgentLost, procpool.PoolError) as e:
                failed.append(e)
                break
            assert v == 2 * x
            got += 1
            agents[r] = agent
            USED.add(pid)
            if got == 500:
                assert set(agents) == AGENTS, agents
                for a in agents.values():
                    os.kill(a, signal.SIGKILL)
        assert failed, "a map whose agents were all killed finished"
        try:
            pool.apply(square, (3,))
        except procpool.PoolError as e:
            assert "every agent" in str(e), e
        else:
            raise AssertionError("a pool with no agent left ran a task")
    print("pids:", sorted(USED))


def scenario_rank():
    # Run as `python mpi_scenarios.py rank` on every rank (no launcher module): the
    # agents become agents at the first MPI pool.
    with procpool.Pool(PER_AGENT, mpi=True) as pool:
        out = note(pool.map(square_where, range(100), chunksize=1))
        assert {r for _, r, _ in out} <= AGENTS and out[5][0] == 25
    assert procpool.mpi.rank() == (0, 3), procpool.mpi.rank()
    print("pids:", sorted(USED))


def scenario_error():
    # An error in the program on rank 0: the job ends (no hang), non-zero.
    with procpool.Pool(PER_AGENT, mpi=True) as pool:
        assert pool.apply(square, (3,)) == 9
        raise RuntimeError("the program failed on rank 0")


if __name__ == "__main__":
    globals()["scenario_" + sys.argv[1]]()
