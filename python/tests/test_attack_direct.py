"""Direct calls from the Python front, attacked with real processes.

A single call (``Pool.apply``, ``apply_async``, ``Executor.submit``) made while a worker is
idle and nothing is queued goes from the caller straight to that worker, and the worker's
result wakes the caller without the supervisor in between. These tests kill the worker
holding such a call, let its task write junk into its link, and race many callers,
checking that every call ends with its own value or an error that says what happened,
that no call runs twice, and that the pool goes on.
"""

import collections
import os
import signal
import threading

import direct_tasks
import pytest
import tasks


def read_tags(path):
    if not os.path.exists(path):
        return collections.Counter()
    with open(path) as f:
        return collections.Counter(line.strip() for line in f if line.strip())


@pytest.mark.limit(60)
def test_worker_killed_holding_a_blocking_apply(make_pp_pool, pp, tmp_path):
    pool = make_pp_pool(2)
    log = str(tmp_path / "log")
    for i in range(8):
        assert pool.apply(tasks.square, (i,)) == i * i  # an idle worker: a direct call
        with pytest.raises(pp.WorkerDied) as info:
            pool.apply(direct_tasks.log_then_die, (log, f"k{i}"))
        assert info.value.signal == signal.SIGKILL
    # Each killed call ran once (no retry was asked for), and the pool is whole.
    assert read_tags(log) == collections.Counter(f"k{i}" for i in range(8))
    assert pool.map(tasks.square, range(20)) == [x * x for x in range(20)]
    assert len(pool.pids()) == 2


@pytest.mark.limit(60)
def test_worker_exits_holding_apply_async_and_submit(make_pp_pool, pp):
    pool = make_pp_pool(1)
    assert pool.apply_async(tasks.square, (3,)).get(timeout=20) == 9
    with pytest.raises(pp.WorkerDied) as info:
        pool.apply_async(tasks.exit_with, (5,)).get(timeout=20)
    assert info.value.exitcode == 5
    assert pool.apply_async(tasks.square, (4,)).get(timeout=20) == 16
    with pp.ProcessPoolExecutor(1) as ex:
        assert ex.submit(tasks.square, 5).result(timeout=20) == 25
        assert isinstance(ex.submit(tasks.exit_with, 2).exception(timeout=20), pp.WorkerDied)
        assert ex.submit(tasks.square, 6).result(timeout=20) == 36


@pytest.mark.limit(60)
def test_time_limit_of_a_direct_call(make_pp_pool, pp):
    # The supervisor keeps the time limit of a job it did not send.
    pool = make_pp_pool(1)
    assert pool.apply(tasks.square, (2,)) == 4
    with pytest.raises(pp.TaskTimeoutError):
        pool.apply(tasks.spin_forever, timeout=0.5)
    assert pool.apply(tasks.square, (7,)) == 49


@pytest.mark.limit(60)
def test_stray_bytes_on_the_link_never_pass_for_a_result(make_pp_pool, pp):
    pool = make_pp_pool(1)
    for i in range(5):
        # The worker broke its link: its call fails, and says so.
        with pytest.raises(pp.PoolError, match="broke the protocol"):
            pool.apply(direct_tasks.stray_bytes, (i,))
        assert pool.apply(tasks.square, (i,)) == i * i


@pytest.mark.limit(90)
def test_racing_callers_and_a_killer_each_call_runs_once(make_pp_pool, pp, tmp_path):
    """Blocking applies from 4 threads and apply_async from another, while a worker is
    SIGKILLed every 20 ms: each call returns its own tag or fails with WorkerDied, and no
    call ran twice. The callers go on until the killer has struck 5 times."""
    pool = make_pp_pool(2)
    log = str(tmp_path / "log")
    outcomes = {}  # tag -> "ok" | "died"
    lock = threading.Lock()
    errors = []
    kills = [0]
    enough = threading.Event()
    MAX_CALLS = 3000

    def record(tag, outcome):
        with lock:
            assert tag not in outcomes
            outcomes[tag] = outcome

    def caller(t):
        try:
            i = 0
            while i < MAX_CALLS and not enough.is_set():
                tag = f"s{t}-{i}"
                i += 1
                try:
                    got = pool.apply(direct_tasks.log_call, (log, tag, 0.002))
                except pp.WorkerDied:
                    record(tag, "died")
                else:
                    assert got == tag, (got, tag)
                    record(tag, "ok")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def async_caller():
        try:
            i = 0
            while i < MAX_CALLS and not enough.is_set():
                tag = f"a{i}"
                i += 1
                r = pool.apply_async(direct_tasks.log_call, (log, tag, 0.002))
                try:
                    got = r.get(timeout=30)
                except pp.WorkerDied:
                    record(tag, "died")
                else:
                    assert got == tag, (got, tag)
                    record(tag, "ok")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    stop = threading.Event()

    def killer():
        while not stop.wait(0.02):
            pids = pool.pids()
            if pids:
                try:
                    os.kill(pids[kills[0] % len(pids)], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                kills[0] += 1
                if kills[0] >= 5:
                    enough.set()
                    return

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
    threads.append(threading.Thread(target=async_caller))
    k = threading.Thread(target=killer)
    for t in threads:
        t.start()
    k.start()
    for t in threads:
        t.join(80)
    stop.set()
    k.join(10)
    assert not any(t.is_alive() for t in threads), "a call never came back"
    assert not errors, errors
    assert kills[0] >= 5
    assert collections.Counter(outcomes.values())["ok"] > 0
    ran = read_tags(log)
    for tag, outcome in outcomes.items():
        if outcome == "ok":
            assert ran[tag] == 1, (tag, ran[tag])
        else:
            assert ran[tag] <= 1, (tag, ran[tag])
    assert set(ran) <= set(outcomes)
    assert pool.apply(tasks.square, (9,)) == 81
