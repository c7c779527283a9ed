"""procpool.Queue's shared-memory ring (crates/procpool-py/src/ring.rs), attacked with real
processes: readers and senders SIGKILLed at random moments, a lock holder stopped, a
process forked while another thread is inside put, os._exit in the middle of a put,
many producers and consumers across processes and threads, messages of every size
around the slot's limit, Pool workers, Ctrl-C in every wait, and a scribbler that
garbles the ring's memory.

What each checks: no message lost or duplicated beyond what a killed reader itself took,
order per producer, no torn message, no hang (each test has a hard limit), no leaked
descriptor or memfd, a blocked wait nearly idle, Ctrl-C prompt.
"""

import os
import pickle
import queue
import random
import resource
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

import procpool

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from attack4_ringmem import HEAD, INFLIGHT, OWNER, SLOT, SLOTS, TAIL, RingMem  # noqa: E402

# Message sizes: around the slot's 248-byte limit (the pickle of (p, i, blob) crosses it
# somewhere in 200..260), inline socket messages, out-of-band memfds, several MiB.
SIZES = list(range(200, 262, 3)) + [0, 1, 300, 4000, 70_000, 1, 2, 3]
BIG_EVERY = 97  # every so many messages, one of 3 MiB
BIG = 3 << 20


def _size(i):
    if i % BIG_EVERY == BIG_EVERY - 1:
        return BIG
    return SIZES[i % len(SIZES)]


def _blob(p, i):
    n = _size(i)
    word = ((p * 1_000_003 + i) & 0xFFFFFFFFFFFF).to_bytes(8, "little")
    return (word * (n // 8 + 1))[:n]


def _msg(p, i):
    return (p, i, _blob(p, i))


def _check(m):
    """(producer, index) of a message, after checking it came whole."""
    p, i, b = m
    assert type(b) is bytes and b == _blob(p, i), f"message {(p, i)} came back torn"
    return p, i


def _fork(fn, *args):
    """Runs fn(*args) in a forked child that ends with os._exit (0, or 1 on an error)."""
    pid = os.fork()
    if pid == 0:
        # The test's SIGALRM handler (a Python exception) cannot stop a child stuck in
        # native code: a child's alarm ends it for real.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        code = 0
        try:
            fn(*args)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def _reap(pid, timeout=20.0):
    """Waits for a child (killing it past `timeout`): its wait status."""
    end = time.monotonic() + timeout
    while True:
        got, st = os.waitpid(pid, os.WNOHANG)
        if got:
            return st
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1]
        time.sleep(0.005)


def _exited_ok(st):
    return os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0


def _records(path):
    """Lines of `p i` records appended by several processes (O_APPEND: whole lines)."""
    with open(path) as f:
        return [tuple(int(x) for x in line.split()) for line in f if line.strip()]


def _appender(path):
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _drain(q, timeout=0.5):
    out = []
    while True:
        try:
            out.append(q.get(timeout=timeout))
        except queue.Empty:
            return out


def _ring_fds():
    """Descriptors of this process that are a queue ring's memfd."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "procpool-queue-ring" in os.readlink(f"/proc/self/fd/{fd}"):
                n += 1
        except OSError:
            pass
    return n


# -- many producers and consumers, every size ------------------------------------------


def _produce(q, p, n):
    for i in range(n):
        q.put(_msg(p, i))


@pytest.mark.limit(60)
def test_producers_in_processes_and_threads_keep_their_order_and_every_byte():
    q = procpool.Queue()
    n = 300
    kids = [_fork(_produce, q, p, n) for p in range(3)]
    threads = [threading.Thread(target=_produce, args=(q, p, n)) for p in (10, 11)]
    for t in threads:
        t.start()
    last = {}
    for _ in range(5 * n):
        p, i = _check(q.get(timeout=20))
        assert i == last.get(p, -1) + 1, f"producer {p}: {i} after {last.get(p)}"
        last[p] = i
    for t in threads:
        t.join(20)
    for pid in kids:
        assert _exited_ok(_reap(pid))
    assert q.empty() and q.qsize() == 0
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)


def _consume(q, path, tid):
    fd = _appender(path)
    while True:
        m = q.get(timeout=20)
        if m is None:
            return
        p, i = _check(m)
        os.write(fd, f"{p} {i} {tid}\n".encode())


def _consume_threads(q, path, k):
    me = os.getpid() * 100
    ts = [threading.Thread(target=_consume, args=(q, path, me + t)) for t in range(k)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _produce_threads(q, base, k, n):
    ts = [threading.Thread(target=_produce, args=(q, base + t, n)) for t in range(k)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


@pytest.mark.limit(60)
def test_many_producers_and_consumers_across_processes_and_threads(tmp_path):
    q = procpool.Queue()
    path = str(tmp_path / "got")
    n = 200
    producers = [_fork(_produce_threads, q, 10 * k, 3, n) for k in range(2)]
    consumers = [_fork(_consume_threads, q, path, 2) for _ in range(2)]
    for pid in producers:
        assert _exited_ok(_reap(pid))
    for _ in range(4):
        q.put(None)
    for pid in consumers:
        assert _exited_ok(_reap(pid))
    got = _records(path)
    keys = [(p, i) for p, i, _ in got]
    assert len(keys) == len(set(keys)), "a message came twice"
    want = {(10 * k + t, i) for k in range(2) for t in range(3) for i in range(n)}
    assert set(keys) == want
    # Each consuming thread sees each producer's messages in their order (socket
    # messages are read in their tokens' order, under the ring's reader lock).
    last = {}
    for p, i, tid in got:
        assert i > last.get((tid, p), -1), f"consumer {tid}: producer {p}'s {i} late"
        last[(tid, p)] = i
    assert q.empty()


# -- readers killed ---------------------------------------------------------------------


@pytest.mark.limit(60)
def test_readers_killed_at_random_moments_lose_at_most_what_they_took(tmp_path):
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    q = procpool.Queue()
    path = str(tmp_path / "got")
    n = 700
    producers = [_fork(_produce, q, p, n) for p in range(2)]
    readers = [_fork(_consume, q, path, r) for r in range(3)]
    kills = 0
    end = time.monotonic() + 1.2
    while time.monotonic() < end:
        time.sleep(rnd.uniform(0.005, 0.05))
        victim = readers.pop(rnd.randrange(len(readers)))
        os.kill(victim, signal.SIGKILL)
        _reap(victim)
        kills += 1
        readers.append(_fork(_consume, q, path, 100 + kills))
    for pid in producers:
        assert _exited_ok(_reap(pid)), f"seed {seed}"
    for _ in readers:
        q.put(None)
    for pid in readers:
        assert _exited_ok(_reap(pid)), f"seed {seed}"
    left = [_check(m) for m in _drain(q) if m is not None]
    keys = [(p, i) for p, i, _ in _records(path)] + left
    assert len(keys) == len(set(keys)), f"a message came twice (seed {seed})"
    missing = {(p, i) for p in range(2) for i in range(n)} - set(keys)
    assert len(missing) <= kills, f"{len(missing)} lost for {kills} kills (seed {seed})"
    assert q.empty(), f"a message stays behind (seed {seed})"


# -- senders killed ---------------------------------------------------------------------


def _produce_logged(q, p, path):
    fd = _appender(path)
    i = 0
    while True:
        q.put(_msg(p, i))
        os.write(fd, f"{p} {i}\n".encode())
        i += 1


def _thread_then_exit(q, p, path, after):
    # A thread puts; the main thread ends the process with os._exit in the middle.
    threading.Thread(target=_produce_logged, args=(q, p, path), daemon=True).start()
    time.sleep(after)
    os._exit(7)


@pytest.mark.limit(60)
def test_senders_killed_at_random_moments_leave_whole_messages_in_order(tmp_path):
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    q = procpool.Queue()
    done_path = str(tmp_path / "done")
    got_path = str(tmp_path / "got")
    consumer = _fork(_consume, q, got_path, 0)
    live = {}
    next_id = 0
    for _ in range(3):
        live[next_id] = _fork(_produce_logged, q, next_id, done_path)
        next_id += 1
    end = time.monotonic() + 1.2
    while time.monotonic() < end:
        time.sleep(rnd.uniform(0.002, 0.04))
        victim = rnd.choice(sorted(live))
        if rnd.random() < 0.3:
            os.kill(live[victim], signal.SIGSTOP)  # stopped a while first
            time.sleep(0.01)
        os.kill(live.pop(victim), signal.SIGKILL)
        if rnd.random() < 0.2:
            pid = _fork(_thread_then_exit, q, next_id, done_path, rnd.uniform(0, 0.03))
        else:
            pid = _fork(_produce_logged, q, next_id, done_path)
        live[next_id] = pid
        next_id += 1
    for pid in live.values():
        os.kill(pid, signal.SIGKILL)
    for pid in list(live.values()):
        _reap(pid)
    # Every process ended with a put of its own maybe half done: the queue goes on.
    q.put(None)
    assert _exited_ok(_reap(consumer)), f"seed {seed}"
    late = [_check(m) for m in _drain(q)]
    got = [(p, i) for p, i, _ in _records(got_path)] + late
    done = {}
    for p, i in _records(done_path):
        done[p] = max(done.get(p, -1), i)
    assert len(got) == len(set(got)), f"a message came twice (seed {seed})"
    by = {}
    for p, i in got:
        by.setdefault(p, []).append(i)
    for p in range(next_id):
        seq = by.get(p, [])
        # Whole messages only, in order, the last maybe lost with its sender, none
        # skipped (a sender killed inside its socket send leaves its token void).
        assert seq == list(range(len(seq))), f"producer {p}: {seq} (seed {seed})"
        assert done.get(p, -1) + 1 <= len(seq) <= done.get(p, -1) + 2, (p, seed)
    assert q.empty(), f"a message stays behind (seed {seed})"


def _hold_sending_and_exit(q):
    # Exactly what a sender killed inside its socket send, before the message went,
    # leaves: the lock held by a dead process, a send marked in flight.
    q._ring._hold_lock_forever(True)
    os._exit(0)


def _pairs(n):
    out = []
    for i in range(n):
        out += [("small", i), ("large", i, b"L" * 1000)]
    return out


@pytest.mark.limit(20)
def test_a_sender_killed_inside_its_socket_send_does_not_reorder_later_messages():
    q = procpool.Queue()
    assert _exited_ok(_reap(_fork(_hold_sending_and_exit, q)))
    want = _pairs(20)
    for m in want:
        q.put(m)  # the first takes the lock over: a token for the dead send
    got = [q.get(timeout=5) for _ in want]
    assert got == want


@pytest.mark.limit(20)
def test_a_reader_killed_after_taking_a_token_delays_only_its_own_message():
    q = procpool.Queue()
    q.put(("taken", b"T" * 1000))
    assert q._ring._take_and_drop() == "token"  # as a reader killed right there
    want = _pairs(20)
    for m in want:
        q.put(m)
    got = [q.get(timeout=5) for _ in range(len(want) + 1)]
    assert [m for m in got if m[0] != "taken"] == want


@pytest.mark.limit(20)
def test_a_reader_slow_after_taking_a_token_keeps_every_consumer_in_order():
    # No kill: a reader preempted between taking a token and reading the socket. Another
    # consumer's next token must not read that token's message (the stdlib reads its
    # pipe under a lock: never out of order).
    q = procpool.Queue()
    want = [("large", 0, b"L" * 1000), ("small", 1), ("large", 2, b"L" * 1000)]
    for m in want:
        q.put(m)
    slow = {}

    def reader():
        slow["got"] = q._ring._get_token_slowly(q._ch, 0.3)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.1)  # the thread holds the first token, asleep
    assert q.get(timeout=5) == ("small", 1)
    assert q.get(timeout=5) == ("large", 2, b"L" * 1000)
    t.join(5)
    data, bufs, fds = slow["got"]
    assert pickle.loads(data) == ("large", 0, b"L" * 1000) and not bufs and not fds


def _take_token_and_exit(q, path):
    with open(path, "w") as f:
        f.write(str(q._ring._take_holding_reader_lock()))
    os._exit(0)


@pytest.mark.limit(20)
def test_a_reader_killed_holding_a_token_and_the_reader_lock_loses_nothing(tmp_path):
    # A reader that dies between taking a token and reading its socket message leaves
    # the reader lock held and the token owed: the next reader takes the lock over and
    # reads that message first, in its place in the order.
    q = procpool.Queue()
    q.put(("taken", b"T" * 1000))
    want = _pairs(20)
    for m in want:
        q.put(m)
    path = str(tmp_path / "took")
    assert _exited_ok(_reap(_fork(_take_token_and_exit, q, path)))
    with open(path) as f:
        assert f.read() == "token"
    got = [q.get(timeout=5) for _ in range(len(want) + 1)]
    assert got == [("taken", b"T" * 1000)] + want
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)


def _send_tagged_then_exit(q):
    # A sender killed between its socket send (tagged with its token's position, as
    # ring.rs sends) and its token.
    mem = RingMem(q)
    q._ring._hold_lock_forever(True)
    tag = b"\x02" + mem.u64(TAIL).to_bytes(8, "little")
    q._ch.send([tag, b"\x00", pickle.dumps(("dead", b"D" * 1000))], [], None)
    os._exit(0)


@pytest.mark.limit(20)
@pytest.mark.parametrize("read_first", [False, True])
def test_a_sender_killed_after_its_socket_send_keeps_its_place_and_later_order(read_first):
    # The lock's next holder publishes the dead sender's token and voids it: the token
    # reads the message that came before the void marker, and nothing shifts. Read
    # before that (the ring empty), the message marks its token served ahead.
    q = procpool.Queue()
    q.put(("small", -1))
    assert _exited_ok(_reap(_fork(_send_tagged_then_exit, q)))
    got = [q.get(timeout=5), q.get(timeout=5)] if read_first else []
    want = _pairs(20)
    for m in want:
        q.put(m)
    got += [q.get(timeout=5) for _ in range(len(want) + 2 - len(got))]
    assert got == [("small", -1), ("dead", b"D" * 1000)] + want
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert q.empty()


def _send_then_exit(q):
    # A sender killed between its socket send and its token.
    q._ring._hold_lock_forever(True)
    q._ch.send([b"\x00", pickle.dumps("orphan")], [], None)
    os._exit(0)


@pytest.mark.limit(20)
def test_a_message_whose_sender_died_before_its_token_is_read_without_a_new_put():
    # Fixed: readers skipped stuck socket messages while the dead sender's in-flight
    # mark stayed set, so the message waited for some other process to put.
    q = procpool.Queue()
    assert _exited_ok(_reap(_fork(_send_then_exit, q)))
    assert q.get(timeout=5) == "orphan"
    q.put("after")  # the lock is taken over; its token for the dead send is spent
    assert q.get(timeout=5) == "after"
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)


# -- a stopped lock holder, a full socket, fork with threads ----------------------------


def _put_get_forever(q):
    while True:
        q.put(0)
        q.get()


def _take_lock_and_wait(q, w):
    q._ring._hold_lock_forever(False)
    os.write(w, b"x")
    while True:
        time.sleep(60)


def _stop_while_holding(q, mem):
    """A child that took the sender lock, stopped while it holds it: its pid. (Catching a
    child looping put/get while it held the lock took up to thousands of tries, and
    failed on a loaded machine: the lock is held for microseconds.)"""
    r, w = os.pipe()
    try:
        pid = _fork(_take_lock_and_wait, q, w)
        ready, _, _ = select.select([r], [], [], 10)
        if not ready or mem.holder_pid != pid:
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
            pytest.fail("the child did not take the sender lock")
        os.kill(pid, signal.SIGSTOP)
        return pid
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.limit(30)
def test_put_with_a_timeout_keeps_it_while_a_stopped_process_holds_the_lock():
    # Fixed: put waited for the sender lock without looking at its timeout.
    q = procpool.Queue()
    mem = RingMem(q)
    pid = _stop_while_holding(q, mem)
    try:
        for call in (lambda: q.put(1, timeout=0.3), lambda: q.put_nowait(1)):
            t = time.monotonic()
            with pytest.raises(queue.Full):
                call()
            assert time.monotonic() - t < 3
        # Killed, the holder no longer blocks anybody.
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
        q.put("after", timeout=5)
        assert "after" in _drain(q, 0.3)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
        except ProcessLookupError:
            pass
        mem.close()


def _fill_socket(q, n=4000):
    # 2000-byte messages go through the socket: with no reader, about 4 MiB fill it.
    for _ in range(n):
        q.put(b"x" * 2000)


@pytest.mark.limit(30)
def test_put_with_a_timeout_keeps_it_while_the_holder_waits_on_a_full_socket():
    # Fixed: the other process holds the lock inside its send; put(timeout) hung.
    q = procpool.Queue()
    pid = _fork(_fill_socket, q)
    try:
        while q.qsize() < 900:
            time.sleep(0.01)
        time.sleep(0.1)
        t = time.monotonic()
        with pytest.raises(queue.Full):
            q.put(1, timeout=0.3)
        with pytest.raises(queue.Full):
            q.put(b"y" * 100_000, timeout=0.3)
        assert time.monotonic() - t < 3
    finally:
        os.kill(pid, signal.SIGKILL)
        _reap(pid)


@pytest.mark.limit(30)
def test_a_child_forked_while_a_thread_is_inside_put_can_put():
    # Fixed: the child inherited the in-process turn locked by the parent's thread,
    # and its first put hung for good.
    q = procpool.Queue()
    filler = threading.Thread(target=_fill_socket, args=(q, 3000), daemon=True)
    filler.start()
    while q.qsize() < 900:
        time.sleep(0.01)
    time.sleep(0.1)  # the thread now waits inside its send, holding the turn
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(5)
        q.put("from the child")
        os._exit(0)
    got = []
    t = time.monotonic()
    while len(got) < 3001 and time.monotonic() - t < 15:
        try:
            got.append(q.get(timeout=0.5))
        except queue.Empty:
            pass
    st = _reap(pid)
    assert _exited_ok(st), f"the child's put hung (status {st})"
    filler.join(5)
    assert "from the child" in got and len(got) == 3001


def _grandchild_roundtrip(q, out):
    # A child that got the queue by pickling forks a grandchild that uses it.
    pid = os.fork()
    if pid == 0:
        try:
            q.put(("grandchild", os.getpid(), b"g" * 100_000))
            q.put("small from the grandchild")
            out.put(q.get(timeout=10))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


@pytest.mark.limit(30)
def test_a_grandchild_forked_from_a_process_child_uses_the_queue():
    q, out = procpool.Queue(), procpool.Queue()
    q.put("from the parent")
    p = procpool.Process(target=_grandchild_roundtrip, args=(q, out))
    p.start()
    assert out.get(timeout=15) == "from the parent"
    who, _, b = q.get(timeout=10)
    assert who == "grandchild" and b == b"g" * 100_000
    assert q.get(timeout=10) == "small from the grandchild"
    p.join(10)
    assert p.exitcode == 0


# -- Pool workers, messages inside messages, maxsize, JoinableQueue --------------------


def _pool_put(q, p):
    for i in range(40):
        q.put(_msg(p, i))
    return p


@pytest.mark.limit(60)
def test_queue_in_pool_tasks_and_inside_messages_with_maxsize():
    q = procpool.Queue(maxsize=5)
    carrier = procpool.Queue()
    carrier.put(("a queue inside a message", q))
    _, q2 = carrier.get(timeout=5)
    with procpool.Pool(2) as pool:
        res = pool.starmap_async(_pool_put, [(q2, p) for p in range(4)], chunksize=1)
        last = {}
        for _ in range(160):
            assert q.qsize() <= 5
            p, i = _check(q.get(timeout=20))
            assert i == last.get(p, -1) + 1
            last[p] = i
        assert sorted(res.get(20)) == [0, 1, 2, 3]
    assert q.empty()


def _take_and_die(q):
    q.get(timeout=10)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.limit(30)
def test_put_with_a_timeout_on_a_full_queue_whose_readers_are_dead():
    q = procpool.Queue(maxsize=3)
    for i in range(4):
        if i == 3:
            _reap(_fork(_take_and_die, q))
        q.put(i, timeout=5)
    for block in (True, False):
        t = time.monotonic()
        with pytest.raises(queue.Full):
            q.put(b"x" * 300, block, timeout=0.3)
        assert time.monotonic() - t < 3
    assert [q.get(timeout=5) for _ in range(3)] == [1, 2, 3]


def _joinable_worker(q):
    while True:
        m = q.get(timeout=10)
        q.task_done()
        if m is None:
            return


@pytest.mark.limit(30)
def test_joinable_queue_counts_every_size_and_survives_a_killed_worker():
    q = procpool.JoinableQueue()
    victim = _fork(_put_get_forever, q)  # puts and takes (no task_done): killed
    time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    _reap(victim)
    _drain(q, 0.2)
    while q._unfinished.get() > 0:
        q.task_done()
    w = _fork(_joinable_worker, q)
    for i in range(60):
        q.put(_msg(0, i))
    q.put(None)
    q.join()
    assert _exited_ok(_reap(w))


# -- close, leaks, idle CPU ----------------------------------------------------------------


def _use_and_exit(q):
    q.put(("child", b"c" * 80_000))
    q.put("small")
    os._exit(0)


@pytest.mark.limit(30)
def test_queues_made_used_passed_and_dropped_leave_no_descriptor_or_memfd():
    import gc

    gc.collect()
    before_fds = set(os.listdir("/proc/self/fd"))
    before_shm = set(os.listdir("/dev/shm"))
    before_rings = _ring_fds()
    for k in range(25):
        q = procpool.Queue(maxsize=10 if k % 2 else 0)
        c = procpool.Queue()
        c.put(q)
        q2 = c.get(timeout=5)
        _reap(_fork(_use_and_exit, q2))
        assert q.get(timeout=5)[1] == b"c" * 80_000
        assert q2.get(timeout=5) == "small"
        q.put(b"x" * 5_000_000)
        assert len(q2.get(timeout=5)) == 5_000_000
        q.close()
        q.join_thread()
        with pytest.raises(ValueError):
            q.put(1)
        del q, q2, c
    gc.collect()
    assert _ring_fds() <= before_rings
    assert set(os.listdir("/proc/self/fd")) - before_fds == set()
    assert set(os.listdir("/dev/shm")) - before_shm == set()


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _idle_cpu_of(wait):
    """Starts `wait()` (about 2 s) in a child: (pid, pipe) to read its CPU seconds from."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(10)
        try:
            os.close(r)
            t = _cpu()
            try:
                wait()
            except (queue.Empty, queue.Full):
                pass
            os.write(w, repr(_cpu() - t).encode())
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


@pytest.mark.limit(40)
def test_blocked_waits_are_nearly_idle():
    q = procpool.Queue()
    full = procpool.Queue(maxsize=1)
    full.put(0)
    ring_full = procpool.Queue()
    for i in range(SLOTS):
        ring_full.put(i)
    j = procpool.JoinableQueue()
    j.put(1)

    def join_2s():
        t = threading.Timer(2.0, lambda: j.task_done())
        t.start()
        j.join()
        t.join()

    waits = {
        "get": lambda: q.get(timeout=2),
        "put on maxsize": lambda: full.put(1, timeout=2),
        "put on a full ring": lambda: ring_full.put(1, timeout=2),
        "JoinableQueue.join": join_2s,
    }
    started = {name: _idle_cpu_of(wait) for name, wait in waits.items()}
    for name, (pid, r) in started.items():
        assert _exited_ok(_reap(pid))
        with os.fdopen(r) as f:
            cpu = float(f.read() or "nan")
        # A generous bound: a busy-wait would take about 2 s.
        assert cpu < 0.25, f"{name}: {cpu:.3f} s of CPU in 2 s"


# -- Ctrl-C in every wait ---------------------------------------------------------------

CTRL_C_WAITS = [
    "get",
    "get_timeout",
    "full_ring",
    "full_socket",
    "maxsize",
    "join",
    "stopped_holder",
    "turn",
]


@pytest.mark.limit(25)
@pytest.mark.parametrize("wait", CTRL_C_WAITS)
def test_ctrl_c_interrupts_every_wait_promptly(wait):
    p = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, "attack4_ctrl_c.py"), wait],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert p.stdout.readline().strip() == "blocked", p.stderr.read()
        time.sleep(0.4)
        assert p.poll() is None
        t = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
        took = time.monotonic() - t
        assert p.returncode == 3 and "interrupted" in out, (out, err)
        assert took < 2, f"Ctrl-C took {took:.1f} s"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        else:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- a scribbler ----------------------------------------------------------------------------


@pytest.mark.limit(20)
@pytest.mark.parametrize("tail", ["ahead", "behind"])
def test_a_scribbled_tail_makes_put_and_get_raise_not_hang(tail):
    # Fixed for put: it waited for room forever.
    q = procpool.Queue()
    q.put(1)
    q.get()
    mem = RingMem(q)
    h = mem.u64(HEAD)
    mem.set_u64(TAIL, h + SLOTS + 5 if tail == "ahead" else h - 1)
    for call in (lambda: q.put(2), lambda: q.get(timeout=1), lambda: q.put(b"z" * 500)):
        t = time.monotonic()
        with pytest.raises(OSError, match="garbled"):
            call()
        assert time.monotonic() - t < 2
    mem.close()


@pytest.mark.limit(20)
@pytest.mark.parametrize("where", ["kind", "len", "marker"])
def test_a_scribbled_slot_header_raises_and_the_queue_goes_on(where):
    q = procpool.Queue()
    q.put("garbled")
    q.put("next")
    mem = RingMem(q)
    at = mem.slot_at(mem.u64(HEAD))
    if where == "kind":
        mem.set_u32(at, 77)
    elif where == "len":
        mem.set_u32(at + 4, SLOT * 4)
    else:
        mem.m[at + 8] = 9  # not a pickle's marker
    with pytest.raises(OSError, match="could not be read"):
        q.get(timeout=1)
    assert q.get(timeout=1) == "next"
    mem.close()


def _scribbled_reader(q, path, seed):
    """Reads until told to stop, counting what each get did; never crashes, never hangs."""
    fd = _appender(path)
    signal.alarm(15)
    counts = {"ok": 0, "error": 0, "empty": 0}
    while True:
        try:
            m = q.get(timeout=0.2)
        except queue.Empty:
            counts["empty"] += 1
            continue
        except Exception:
            counts["error"] += 1
            continue
        if m == "stop":
            break
        counts["ok"] += 1
    os.write(fd, repr(counts).encode())


def _scribbled_writer(q, n):
    signal.alarm(15)
    for i in range(n):
        try:
            q.put(_msg(1, i) if i % 7 else i, timeout=0.5)
        except (queue.Full, OSError):
            pass


@pytest.mark.limit(40)
def test_a_scribbler_garbling_the_ring_never_crashes_or_hangs_a_reader(tmp_path):
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    q = procpool.Queue()
    mem = RingMem(q)
    path = str(tmp_path / "counts")
    reader = _fork(_scribbled_reader, q, path, seed)
    writer = _fork(_scribbled_writer, q, 3000)
    end = time.monotonic() + 1.2
    while time.monotonic() < end:
        time.sleep(rnd.uniform(0.001, 0.01))
        what = rnd.random()
        if what < 0.6:
            # Garbage in a slot near the head (headers and payloads).
            at = mem.slot_at(mem.u64(HEAD) + rnd.randrange(8)) + rnd.randrange(SLOT // 8) * 8
            mem.set_u64(at, rnd.getrandbits(64))
        elif what < 0.75:
            mem.set_u64(TAIL, mem.u64(HEAD) + rnd.choice([-3, SLOTS + 10, 1 << 40]))
            time.sleep(0.005)
            mem.set_u64(TAIL, mem.u64(HEAD))  # repaired, as far as a scribbler goes
        elif what < 0.85:
            mem.set_u64(OWNER, rnd.getrandbits(64))
        else:
            mem.set_u32(INFLIGHT, rnd.getrandbits(32))
    st_w = _reap(writer, 20)
    assert _exited_ok(st_w), f"the writer: status {st_w} (seed {seed})"
    mem.set_u64(TAIL, mem.u64(HEAD))
    mem.set_u64(OWNER, 0)
    mem.set_u32(INFLIGHT, 0)
    q.put("stop", timeout=5)
    st_r = _reap(reader, 20)
    assert _exited_ok(st_r), f"the reader: status {st_r} (seed {seed})"
    with open(path) as f:
        counts = eval(f.read())  # noqa: S307 - our own repr
    assert counts["ok"] + counts["error"] > 0, counts
    mem.close()


# -- a consumer that only polls --------------------------------------------------------


@pytest.mark.limit(20)
def test_a_stuck_message_reaches_a_consumer_that_polls_with_get_nowait():
    q = procpool.Queue()
    q.put(("large", b"L" * 1000))
    assert q._ring._take_and_drop() == "token"  # a reader killed right after the token
    end = time.monotonic() + 1
    while time.monotonic() < end:
        try:
            assert q.get_nowait() == ("large", b"L" * 1000)
            return
        except queue.Empty:
            time.sleep(0.02)
    pytest.fail("get_nowait never returned the message")


def _sleep_in_get(q):
    q.get()


@pytest.mark.limit(20)
def test_a_reader_killed_asleep_does_not_leave_every_put_a_wake_up_for_good():
    q = procpool.Queue()
    mem = RingMem(q)
    from attack4_ringmem import RSLEEP

    pid = _fork(_sleep_in_get, q)
    end = time.monotonic() + 5
    while mem.u32(RSLEEP) == 0 and time.monotonic() < end:
        time.sleep(0.01)
    assert mem.u32(RSLEEP) == 1, "the reader never slept"
    os.kill(pid, signal.SIGKILL)
    _reap(pid)
    for i in range(200):
        q.put(i)
    # The count of sleepers went back to 0 (else each put pays a futex wake-up).
    assert mem.u32(RSLEEP) == 0
    assert _drain(q, 0.2) == list(range(200))
    mem.close()
