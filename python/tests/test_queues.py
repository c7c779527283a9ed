"""procpool's Queue, SimpleQueue, JoinableQueue and Pipe: the stdlib's semantics, and
the channel's guarantees under real kills."""

import os
import queue
import signal
import threading
import time

import pytest

import procpool


def _put_many(q, n, size):
    for i in range(n):
        q.put((i, b"x" * size))


def _put_big_forever(q, ready):
    big = b"z" * (64 << 20)
    ready.put("go")
    while True:
        q.put(big)


def _get_one(q, out):
    out.put(q.get(timeout=20))
    time.sleep(60)


def _echo(conn):
    while True:
        try:
            x = conn.recv()
        except EOFError:
            return
        conn.send(x)


def _initializer(q):
    global _INIT_Q
    _INIT_Q = q


def _put_from_initialized_worker(x):
    _INIT_Q.put(x)
    return x


def _put_to(q, x):
    q.put(x)
    return x


def test_queue_semantics():
    q = procpool.Queue(maxsize=2)
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put(1)
    q.put_nowait([2])
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    assert q.get() == 1 and q.get_nowait() == [2]
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(False)
    q.close()
    q.join_thread()
    q.cancel_join_thread()
    with pytest.raises(ValueError):
        q.put(1)


def test_queue_between_processes_small_and_large():
    q = procpool.Queue()
    p = procpool.Process(target=_put_many, args=(q, 20, 3 << 20))
    p.start()
    got = [q.get(timeout=20) for _ in range(20)]
    p.join(20)
    assert [i for i, _ in got] == list(range(20))
    assert all(b == b"x" * (3 << 20) for _, b in got)


def test_queue_in_a_queue_and_in_pool_tasks_and_initargs():
    outer, inner = procpool.Queue(), procpool.Queue()
    outer.put(inner)
    procpool.Process(target=_put_many, args=(outer.get(timeout=5), 1, 1)).start()
    assert inner.get(timeout=20) == (0, b"x")
    q = procpool.Queue()
    with procpool.Pool(1, initializer=_initializer, initargs=(q,)) as pool:
        assert pool.apply(_put_from_initialized_worker, (7,)) == 7
        assert pool.apply(_put_to, (q, 8)) == 8
    assert sorted([q.get(timeout=10), q.get(timeout=10)]) == [7, 8]


def test_joinable_queue():
    q = procpool.JoinableQueue()
    for i in range(5):
        q.put(i)
    done = []

    def worker():
        for _ in range(5):
            q.get(timeout=5)
            q.task_done()
        done.append(True)

    t = threading.Thread(target=worker)
    t.start()
    q.join()
    t.join(10)
    assert done
    with pytest.raises(ValueError):
        q.task_done()


def test_simple_queue():
    q = procpool.SimpleQueue()
    assert q.empty()
    q.put({"a": 1})
    assert not q.empty()
    assert q.get() == {"a": 1}
    q.close()


def test_pipe_duplex_and_simplex():
    a, b = procpool.Pipe()
    p = procpool.Process(target=_echo, args=(b,))
    p.start()
    b.close()
    for obj in (1, "two", [3.0], b"y" * (2 << 20)):
        a.send(obj)
        assert a.recv() == obj
    a.close()
    p.join(20)
    assert p.exitcode == 0
    r, w = procpool.Pipe(duplex=False)
    assert not r.writable and not w.readable
    with pytest.raises(OSError):
        r.send(1)
    w.send_bytes(b"0123456789", 2, 5)
    assert r.poll(5) and r.recv_bytes() == b"23456"
    w.send_bytes(b"abcdef")
    buf = bytearray(10)
    assert r.recv_bytes_into(buf, 2) == 6 and buf[2:8] == b"abcdef"
    w.send_bytes(b"x" * 20)
    import multiprocessing

    with pytest.raises(multiprocessing.BufferTooShort):
        r.recv_bytes_into(bytearray(4))
    assert not r.poll()
    w.close()
    with pytest.raises(EOFError):
        r.recv()
    from multiprocessing.connection import wait

    x, y = procpool.Pipe()
    y.send(1)
    assert wait([x], 5) == [x]


def test_reader_gone_tells_the_writer():
    r, w = procpool.Pipe(duplex=False)
    r.close()
    with pytest.raises(BrokenPipeError):
        w.send(1)


@pytest.mark.limit(90)
def test_producer_killed_mid_put_of_64_mib_leaves_whole_messages_only():
    q, ready = procpool.Queue(), procpool.Queue()
    p = procpool.Process(target=_put_big_forever, args=(q, ready))
    p.start()
    assert ready.get(timeout=20) == "go"
    got = 0
    deadline = time.monotonic() + 30
    while got < 2 and time.monotonic() < deadline:
        try:
            m = q.get(timeout=1)
        except queue.Empty:
            continue
        assert len(m) == 64 << 20 and m.count(b"z") == len(m)
        got += 1
    os.kill(p.pid, signal.SIGKILL)  # most likely in the middle of writing the next one
    p.join(20)
    assert p.exitcode == -signal.SIGKILL
    while True:
        try:
            m = q.get(timeout=0.5)
        except queue.Empty:
            break
        assert len(m) == 64 << 20 and m.count(b"z") == len(m)


def test_many_readers_never_split_or_repeat():
    q, out = procpool.Queue(), procpool.Queue()
    n = 200
    for i in range(n):
        q.put(i)
    readers = [procpool.Process(target=_drain, args=(q, out)) for _ in range(3)]
    for p in readers:
        p.start()
    seen = []
    for _ in range(3):
        seen += out.get(timeout=30)
    for p in readers:
        p.join(20)
    assert sorted(seen) == list(range(n))


def _drain(q, out):
    mine = []
    while True:
        try:
            mine.append(q.get(timeout=0.3))
        except queue.Empty:
            break
    out.put(mine)


def _fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.limit(120)
def test_500_cycles_leave_descriptors_and_threads_as_they_were():
    def cycle():
        q = procpool.Queue()
        a, b = procpool.Pipe()
        j = procpool.JoinableQueue(3)
        s = procpool.SimpleQueue()
        q.put(a)
        q.get().send(1)
        b.recv()
        j.put(1)
        j.get()
        j.task_done()
        s.put(q)
        s.get().put(2)
        q.get()
        for x in (q, a, b, s):
            x.close()

    cycle()
    fds, threads = _fds(), threading.active_count()
    for _ in range(500):
        cycle()
    assert _fds() == fds and threading.active_count() == threads


def _read_one_then_hang(r):
    r.recv_bytes()
    time.sleep(60)


def _fill(w, out):
    try:
        while True:
            w.send_bytes(b"f" * 4096)
    except BrokenPipeError:
        out.put("told")


@pytest.mark.limit(60)
def test_reader_killed_while_writer_blocks_on_a_full_pipe_tells_the_writer():
    r, w = procpool.Pipe(duplex=False)
    out = procpool.Queue()
    reader = procpool.Process(target=_read_one_then_hang, args=(r,))
    writer = procpool.Process(target=_fill, args=(w, out))
    reader.start()
    writer.start()
    r.close()  # only the reader process holds the reading end now
    w.close()
    time.sleep(0.5)  # the writer fills the pipe and blocks
    assert writer.is_alive()
    reader.kill()
    reader.join(20)
    assert out.get(timeout=20) == "told"
    writer.join(20)
    assert writer.exitcode == 0


@pytest.mark.limit(60)
def test_a_full_queue_put_with_a_timeout_raises_full_when_its_reader_is_killed():
    q = procpool.Queue(maxsize=3)
    out = procpool.Queue()
    reader = procpool.Process(target=_get_one, args=(q, out))
    reader.start()
    q.put(0)
    assert out.get(timeout=20) == 0
    reader.kill()
    reader.join(20)
    for i in range(3):
        q.put(i)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.2)


def _cycle_process(q):
    q.put(os.getpid())


@pytest.mark.limit(120)
def test_process_cycles_leave_descriptors_threads_and_children_as_they_were():
    q = procpool.Queue()
    p = procpool.Process(target=_cycle_process, args=(q,))
    p.start()
    q.get(timeout=20)
    p.join(20)
    p.close()
    fds, threads = _fds(), threading.active_count()
    for _ in range(50):
        p = procpool.Process(target=_cycle_process, args=(q,))
        p.start()
        assert q.get(timeout=20) == p.pid
        p.join(20)
        assert p.exitcode == 0
        p.close()
    assert _fds() == fds and threading.active_count() == threads
    assert procpool.active_children() == []


def test_numpy_and_large_bytes_out_of_band_come_back_equal_and_writable():
    np = pytest.importorskip("numpy")
    q = procpool.Queue()
    a = np.arange(100_000, dtype=np.float64)
    q.put(a)
    b = q.get(timeout=5)
    assert (a == b).all()
    b[0] = 7.0  # writable, as the stdlib's copy is
    big = bytes(range(256)) * 1024
    q.put(big)
    got = q.get(timeout=5)
    assert type(got) is bytes and got == big
    q.put((big, [big]))
    assert q.get(timeout=5) == (big, [big])
