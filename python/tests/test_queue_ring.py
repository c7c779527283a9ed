"""The shared-memory ring of a Queue's small messages, attacked: senders and readers
killed at the worst moments, several readers, mixed small and large messages, Ctrl-C on a
full ring, and no reader left."""

import os
import pickle
import queue
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import procpool

BIG = b"B" * 300_000


def _mixed(i):
    """Message `i` of a stream that takes every path: ring, socket, descriptors."""
    k = i % 5
    if k == 0:
        return i
    if k == 1:
        return (i, BIG)  # large: shared memory through the socket
    if k == 2:
        return (i, "s" * 400)  # too big for a slot, inline in the socket
    if k == 3:
        return f"{i}"
    return (i, None)


def _put_mixed(q, n, start=0):
    for i in range(start, start + n):
        q.put(_mixed(i))


def _key(m):
    return int(m) if isinstance(m, (int, str)) else m[0]


@pytest.mark.limit(60)
def test_one_sender_mixing_small_and_large_messages_keeps_its_order():
    q = procpool.Queue()
    p = procpool.Process(target=_put_mixed, args=(q, 400))
    p.start()
    got = [q.get(timeout=20) for _ in range(400)]
    p.join(20)
    assert [_key(m) for m in got] == list(range(400))
    assert got == [_mixed(i) for i in range(400)]
    # And within one process, where a reader that finds the ring empty must not take a
    # socket message before the small ones sent earlier.
    for i in range(50):
        q.put(i)
        q.put((i, BIG))
    assert [_key(q.get(timeout=5)) for _ in range(100)] == [i for i in range(50) for _ in (0, 1)]


def _drain_to(q, out, stop):
    mine = []
    while True:
        m = q.get(timeout=20)
        if m == stop:
            break
        mine.append(_key(m))
    out.put(mine)


@pytest.mark.limit(90)
def test_several_readers_of_mixed_messages_never_split_or_repeat_one():
    q, out = procpool.Queue(), procpool.Queue()
    readers = [procpool.Process(target=_drain_to, args=(q, out, "stop")) for _ in range(3)]
    writers = [procpool.Process(target=_put_mixed, args=(q, 300, k * 1000)) for k in range(2)]
    for p in readers + writers:
        p.start()
    for p in writers:
        p.join(30)
        assert p.exitcode == 0
    for _ in readers:
        q.put("stop")
    seen = []
    for _ in readers:
        seen += out.get(timeout=30)
    for p in readers:
        p.join(20)
    assert sorted(seen) == list(range(300)) + list(range(1000, 1300))


def _hold_and_hang(q, ready, inflight):
    q._ring._hold_lock_forever(inflight)
    if inflight:
        # The socket message goes out; the sender dies before its token.
        q._ch.send([b"\x00", pickle.dumps("orphan", 5)], [], None)
    ready.put("holding")
    time.sleep(60)


@pytest.mark.limit(60)
@pytest.mark.parametrize("inflight", [False, True])
def test_a_sender_killed_holding_the_ring_lock_does_not_block_the_queue(inflight):
    q, ready = procpool.Queue(), procpool.Queue()
    q.put("before")
    p = procpool.Process(target=_hold_and_hang, args=(q, ready, inflight))
    p.start()
    assert ready.get(timeout=20) == "holding"
    os.kill(p.pid, signal.SIGKILL)
    p.join(20)
    t = time.monotonic()
    q.put("after")  # takes the lock over from the dead holder
    assert time.monotonic() - t < 5
    got = [q.get(timeout=5), q.get(timeout=5)]
    if inflight:
        got.append(q.get(timeout=5))
        assert got == ["before", "orphan", "after"]  # whole, and in order
    else:
        assert got == ["before", "after"]
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)


def _take_token_and_hang(q, ready):
    ready.put(q._ring._take_and_drop())
    time.sleep(60)


@pytest.mark.limit(60)
def test_a_reader_killed_after_taking_a_token_leaves_the_message_to_others():
    q, ready = procpool.Queue(), procpool.Queue()
    q.put(BIG)  # a socket message and its token
    q.put("small")
    p = procpool.Process(target=_take_token_and_hang, args=(q, ready))
    p.start()
    assert ready.get(timeout=20) == "token"
    os.kill(p.pid, signal.SIGKILL)
    p.join(20)
    got = [q.get(timeout=5), q.get(timeout=5)]
    # The message whose token died with its reader comes late, whole, never lost.
    assert got == ["small", BIG]
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)


def _put_counting(q, tag):
    i = 0
    while True:
        q.put((tag, i) if i % 7 else (tag, i, BIG))
        i += 1


@pytest.mark.limit(90)
def test_senders_killed_mid_stream_leave_whole_messages_in_order_and_the_queue_going():
    q = procpool.Queue()
    for tag in range(6):
        p = procpool.Process(target=_put_counting, args=(q, tag))
        p.start()
        first = q.get(timeout=20)
        assert first[:2] == (tag, 0)
        time.sleep(0.02 * (tag % 3))
        os.kill(p.pid, signal.SIGKILL)  # anywhere: in put, holding the lock, sending
        p.join(20)
        assert p.exitcode == -signal.SIGKILL
        last = 0
        while True:
            try:
                m = q.get(timeout=0.5)
            except queue.Empty:
                break
            assert m[0] == tag and m[1] == last + 1, (m[:2], last)
            if len(m) == 3:
                assert m[2] == BIG
            last = m[1]
        q.put(("alive", tag))  # the next sender is never blocked by the dead one
        assert q.get(timeout=5) == ("alive", tag)


def _read_and_report(q, out):
    while True:
        m = q.get(timeout=20)
        out.put(_key(m))


@pytest.mark.limit(90)
def test_readers_killed_mid_stream_never_make_a_message_come_twice():
    q, out = procpool.Queue(), procpool.Queue()
    n = 1500
    readers = [procpool.Process(target=_read_and_report, args=(q, out)) for _ in range(3)]
    for p in readers:
        p.start()
    _put_mixed(q, n // 3)
    for p in readers[:2]:
        os.kill(p.pid, signal.SIGKILL)  # in the middle of reading
        p.join(20)
    _put_mixed(q, n - n // 3, n // 3)
    seen = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        try:
            seen.append(out.get(timeout=2))
        except queue.Empty:
            if q.empty():
                break
    readers[2].kill()
    readers[2].join(20)
    assert len(seen) == len(set(seen))
    assert set(seen) <= set(range(n))
    # The killed readers may each have taken a message (and reported it or not): the
    # survivor read everything else.
    assert len(seen) >= n - 2 * 2, sorted(set(range(n)) - set(seen))


SCRIPT_FULL = """
import procpool, sys
q = procpool.Queue()
print("filling", flush=True)
try:
    for i in range(100_000):
        q.put(i)
except KeyboardInterrupt:
    print("interrupted", i, flush=True)
    sys.exit(3)
"""


def _interrupted(script, ready, settle):
    """Runs `script`, waits for its line `ready` and `settle` seconds more (it must still
    be running), sends SIGINT; returns (exit code, stdout, stderr, seconds to exit)."""
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == ready
        time.sleep(settle)
        assert p.poll() is None
        t = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
        return p.returncode, out, err, time.monotonic() - t
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.limit(60)
def test_ctrl_c_interrupts_a_put_blocked_on_a_full_ring():
    # The ring fills (4096 messages) and put sleeps.
    code, out, err, took = _interrupted(SCRIPT_FULL, "filling", 1.5)
    assert took < 2
    assert code == 3, err
    assert out.startswith("interrupted"), out
    assert 4000 <= int(out.split()[1]) <= 5000


SCRIPT_THREADS = """
import procpool, sys, threading, time
q = procpool.Queue()
big = b"x" * 300_000
threading.Thread(target=lambda: [q.put(big) for _ in range(1000)], daemon=True).start()
time.sleep(1.0)  # the thread fills the socket and waits there, holding the sender lock
print("putting", flush=True)
try:
    q.put(big)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
"""


@pytest.mark.limit(60)
def test_ctrl_c_interrupts_a_put_waiting_for_another_thread_of_its_process():
    code, out, err, took = _interrupted(SCRIPT_THREADS, "putting", 0.5)
    assert took < 2
    assert (code, out.strip()) == (3, "interrupted"), err


def test_put_nowait_does_not_wait_for_a_sender_blocked_on_a_full_socket():
    import threading

    q = procpool.Queue()
    t = threading.Thread(target=lambda: [q.put(BIG) for _ in range(100)], daemon=True)
    t.start()  # fills the socket (about 64 large messages), then waits holding the lock
    deadline = time.monotonic() + 20
    while q._ch.poll(0) is False or q.qsize() < 40:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    assert t.is_alive()
    start = time.monotonic()
    with pytest.raises(queue.Full):
        q.put_nowait(1)
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.2)
    assert time.monotonic() - start < 2
    # Every message comes; then nothing more (the sender may still be on its way out of
    # its last `put` when the last message is read: not a reason to read on).
    for _ in range(100):
        assert q.get(timeout=10) == BIG
    t.join(10)
    assert not t.is_alive()
    assert q.empty()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)


def test_a_full_ring_with_no_reader_left_tells_the_sender():
    q = procpool.Queue()
    q._ch.close_recv()  # the last receiving end
    with pytest.raises(BrokenPipeError):
        for i in range(10_000):
            q.put(i)
    assert i >= 4096


def test_put_with_a_timeout_on_a_full_ring_raises_full_and_get_nowait_empties_it():
    q = procpool.Queue()
    n = 0
    with pytest.raises(queue.Full):
        while True:
            q.put(n, timeout=0.1)
            n += 1
    assert n >= 4096
    got = [q.get_nowait() for _ in range(n)]
    assert got == list(range(n))
    with pytest.raises(queue.Empty):
        q.get_nowait()
    assert q.empty()


def test_a_forged_ring_is_refused():
    import tempfile

    with tempfile.TemporaryFile() as f:
        f.truncate(1 << 20)
        with pytest.raises(ValueError, match="ring"):
            procpool._core.Ring.from_fd(f.fileno())
    r = procpool._core.Ring()
    fd = os.memfd_create("x")
    try:
        os.ftruncate(fd, os.fstat(r.fileno()).st_size)
        with pytest.raises(ValueError, match="ring"):
            procpool._core.Ring.from_fd(fd)  # not sealed: a peer could shrink it
    finally:
        os.close(fd)
    assert procpool._core.Ring.from_fd(r.fileno()).empty()


def _get_forever(q, ready):
    ready.put("reading")
    q.get()


@pytest.mark.limit(60)
def test_a_reader_killed_asleep_is_not_counted_as_a_sleeper_for_long():
    q, ready = procpool.Queue(), procpool.Queue()
    left_behind = 0
    for _ in range(3):
        p = procpool.Process(target=_get_forever, args=(q, ready))
        p.start()
        assert ready.get(timeout=20) == "reading"
        deadline = time.monotonic() + 10
        while q._ring._sleepers()[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert q._ring._sleepers()[0] == 1  # asleep in get
        os.kill(p.pid, signal.SIGKILL)
        p.join(20)
        # Its count stays behind (unless it was between two sleeps).
        left_behind += q._ring._sleepers()[0]
        for i in range(200):  # each put would pay a wake-up system call for it
            q.put(i)
        assert q._ring._sleepers()[0] == 0
        assert [q.get(timeout=5) for _ in range(200)] == list(range(200))
    assert left_behind >= 1
