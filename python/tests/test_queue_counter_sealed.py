"""A queue's shared counters (its message count, a JoinableQueue's unfinished tasks) are
memfds sealed at one page: a peer holding the queue cannot shrink them under the processes
that map them (each would fault, SIGBUS, at its next put or get), and a descriptor that is
not such a memfd is refused."""

import os

import pytest

import procpool
from procpool import _core


def test_a_counter_cannot_be_shrunk_or_grown():
    c = _core.Counter()
    with pytest.raises(PermissionError):
        os.ftruncate(c.fileno(), 0)
    with pytest.raises(PermissionError):
        os.ftruncate(c.fileno(), 1 << 20)
    c.add(3)
    assert c.get() == 3


def test_a_joinable_queue_survives_a_peer_that_tries_to_shrink_its_counters():
    q = procpool.JoinableQueue()
    q.put(1)
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "procpool-counter" in target:
            with pytest.raises(PermissionError):
                os.ftruncate(int(fd), 0)
    assert q.get(timeout=5) == 1
    q.task_done()
    q.join()


def test_an_unsealed_memfd_is_not_taken_for_a_counter():
    fd = os.memfd_create("procpool-counter")
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(ValueError, match="not a procpool counter"):
            _core.Counter.from_fd(fd)
    finally:
        os.close(fd)
