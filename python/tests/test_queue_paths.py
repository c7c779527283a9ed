"""The Queue and Pipe receive paths: out-of-band buffers read straight from shared
memory into their own objects, memfds reused across message sizes, forged queue
messages, and a reader killed in the middle of a large message."""

import os
import pickle
import queue
import signal
import time

import pytest

import procpool

#: Sizes that go inline, into a reused memfd, and into a memfd of their own (> 2 MiB).
SIZES = [1 << 20, 100_000, 2 << 20, 70_000, 1_500_000, 3 << 20, 65_600, 10, 300_000]


def _payload(i, size):
    head = i.to_bytes(4, "little")
    return head + bytes([i % 251]) * (size - 4) if size >= 4 else head[:size]


def _put_sizes(q, rounds):
    i = 0
    for _ in range(rounds):
        for size in SIZES:
            q.put((i, _payload(i, size)))
            i += 1


def _check(i, got, size):
    assert type(got) is bytes
    assert len(got) == size, (i, len(got), size)
    assert got == _payload(i, size), f"message {i} of {size} bytes came back changed"


@pytest.mark.limit(60)
def test_large_messages_of_changing_sizes_come_back_exact_across_processes():
    # The producer runs ahead of the reader by far more messages than a queue holds,
    # so memfds are reused for smaller and larger messages than they last held.
    q = procpool.Queue()
    rounds = 12
    p = procpool.Process(target=_put_sizes, args=(q, rounds))
    p.start()
    time.sleep(0.5)  # let the queue fill up
    for i in range(rounds * len(SIZES)):
        j, got = q.get(timeout=20)
        assert j == i
        _check(i, got, SIZES[i % len(SIZES)])
    p.join(20)
    assert p.exitcode == 0


def test_out_of_band_buffers_keep_their_kind_and_writability():
    q = procpool.Queue()
    ro = bytes(range(256)) * 1024
    rw = bytearray(b"w" * 200_000)
    q.put((ro, rw, pickle.PickleBuffer(bytearray(b"p" * 100_000)), "s", 1))
    a, b, c, s, n = q.get(timeout=5)
    assert type(a) is bytes and a == ro
    assert type(b) is bytearray and b == rw
    b[0] = 0  # writable
    assert bytes(c) == b"p" * 100_000 and not memoryview(c).readonly
    assert (s, n) == ("s", 1)
    for obj in ["x" * 100_000, 2**200, None, 1.5, True, ("t", [1, {2: b"3"}])]:
        q.put(obj)
        assert q.get(timeout=5) == obj


@pytest.mark.parametrize(
    "parts",
    [
        [b"\x01", b"\xff\xff\xff\xff"],  # four billion buffers in a short message
        [b"\x01", (1).to_bytes(4, "little") + (3).to_bytes(8, "little") + (1 << 62).to_bytes(8, "little"), b"abc"],
        [b"\x01", (0).to_bytes(4, "little") + (10).to_bytes(8, "little"), b"abc"],  # short
        [b"\x01", (0).to_bytes(4, "little") + (2).to_bytes(8, "little"), b"abc" * 40_000],  # long
        # a pickle length with the read-only flag of a buffer
        [b"\x01", (0).to_bytes(4, "little") + ((1 << 63) | 3).to_bytes(8, "little"), b"abc"],
        [b"\x07", b"whatever"],
        [b""],
    ],
)
def test_a_forged_queue_message_is_an_error_and_the_queue_goes_on(parts):
    q = procpool.Queue()
    q._ch.send(parts, (), None)
    q._count.add(1)
    with pytest.raises(OSError, match="could not be read"):
        q.get(timeout=5)
    q.put("next")
    assert q.get(timeout=5) == "next"


def test_pipe_bytes_small_and_large():
    a, b = procpool.Pipe()
    for size in (0, 1, 70_000, 1 << 20, 3 << 20):
        data = os.urandom(size)
        a.send_bytes(data)
        got = b.recv_bytes()
        assert type(got) is bytes and got == data
        a.send_bytes(data)
        buf = bytearray(size + 8)
        assert b.recv_bytes_into(buf, 8) == size and buf[8:] == data
        a.send(data)
        assert b.recv() == data


def _read_big_forever(q, out):
    out.put("reading")
    while True:
        m = q.get()
        out.put(len(m))


def _put_big(q, n, size):
    for i in range(n):
        q.put(bytes([i % 251]) * size)


@pytest.mark.limit(90)
def test_a_reader_killed_mid_large_message_leaves_whole_messages_for_the_others():
    q, out = procpool.Queue(), procpool.Queue()
    size = 48 << 20
    reader = procpool.Process(target=_read_big_forever, args=(q, out))
    reader.start()
    assert out.get(timeout=20) == "reading"
    n = 6
    producer = procpool.Process(target=_put_big, args=(q, n, size))
    producer.start()
    assert out.get(timeout=30) == size  # it read one; it is now most likely copying the next
    os.kill(reader.pid, signal.SIGKILL)
    reader.join(20)
    assert reader.exitcode == -signal.SIGKILL
    got = []
    while True:
        try:
            m = q.get(timeout=3)
        except queue.Empty:
            break
        assert len(m) == size and m.count(m[:1]) == size
        got.append(m[0])
    producer.join(20)
    assert producer.exitcode == 0
    # Whatever the killed reader had taken is gone; the rest came whole, in order.
    assert 1 <= len(got) <= n - 1
    assert got == sorted(got)
    # The queue (and its memfds) still carry messages of every size.
    for size in SIZES:
        q.put(_payload(3, size))
        _check(3, q.get(timeout=5), size)
