"""``Queue``, ``SimpleQueue``, ``JoinableQueue`` and ``Pipe`` on procpool's channel.

Drop-in replacements for :class:`multiprocessing.Queue`, :class:`multiprocessing.SimpleQueue`,
:class:`multiprocessing.JoinableQueue` and :func:`multiprocessing.Pipe`. Each message is one
packet of an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket (the Rust front's channel), sent by one
system call, with no feeder thread:

* a process killed in the middle of ``put`` has queued its message whole or not at all,
  never part of it;
* several processes reading one queue each take whole messages, none twice;
* large messages travel in shared memory (a memfd), not through the socket;
* a ``Queue``'s small messages (a pickle of at most 248 bytes, no descriptor) go through a
  ring of slots in shared memory instead (``_core.Ring``, see ``crates/procpool-py/src/
  ring.rs``): no system call per message unless a reader sleeps; other messages go
  through the socket with a token in the ring, read in token order under a reader lock,
  so each consumer sees one sender's messages in order;
* a queue or pipe end can itself be sent: as a ``Process`` argument, inside another
  message, and as a ``Pool`` task argument or ``initargs`` (copied from the sending
  process with ``pidfd_getfd`` there, so that process must still be running).

Example::

    import procpool

    def produce(q):
        for i in range(3):
            q.put(i * i)

    if __name__ == "__main__":
        q = procpool.Queue()
        p = procpool.Process(target=produce, args=(q,))
        p.start()
        print([q.get(timeout=10) for _ in range(3)])   # [0, 1, 4]
        p.join()
"""

from __future__ import annotations

import io
import os
import pickle
import queue as _queue
import struct
import time

from . import _core
from . import _passfd_msg as _passfd

__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "Pipe", "Connection"]

#: ``maxsize`` of an unbounded queue (as the stdlib's ``SEM_VALUE_MAX``).
_UNBOUNDED = 2**31 - 1

#: Bytes of messages a queue's socket holds before ``put`` waits (the kernel caps it).
_CAPACITY = 4 << 20


_Pickler = None


def _pickler():
    """A pickler with the stdlib queues' reducers (its ``ForkingPickler``'s: connections,
    sockets), its dispatch table built once."""
    global _Pickler
    from multiprocessing.reduction import ForkingPickler

    table = ForkingPickler._copyreg_dispatch_table.copy()
    table.update(ForkingPickler._extra_reducers)

    class QueuePickler(pickle.Pickler):
        dispatch_table = table

    _Pickler = QueuePickler
    return QueuePickler


def _dumps(obj):
    """``(pickle, descriptors)`` of a message, pickled as the stdlib's queues pickle."""
    local = _passfd._local
    outer = local.out
    if outer is None and _plain(obj, 2):
        # Nothing the stdlib's reducers or a descriptor would take: the plain pickler.
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL), []
    fds = local.out = []
    try:
        f = io.BytesIO()
        (_Pickler or _pickler())(f, pickle.HIGHEST_PROTOCOL).dump(obj)
        return f.getvalue(), fds
    finally:
        local.out = outer


def _loads(data, fds):
    if not fds:
        return pickle.loads(data)
    with _passfd.receiving(fds):
        return pickle.loads(data)


#: Buffers at least this large travel out of band: written once into the message (its
#: memfd when large) instead of being copied into the pickle first.
_OOB_MIN = 64 * 1024
_PLAIN = b"\x00"
_FRAMED = b"\x01"


class _BigBytes:
    """A large ``bytes`` value, pickled out of band and rebuilt as ``bytes``."""

    __slots__ = ("b",)

    def __init__(self, b):
        self.b = b

    def __reduce_ex__(self, protocol):
        return (bytes, (pickle.PickleBuffer(self.b),))


_SCALARS = frozenset((int, float, complex, str, bytes, bool, type(None)))


def _plain(obj, depth) -> bool:
    """Whether ``obj`` is made of numbers, strings and bytes only (in tuples, lists and
    dicts of at most 32 entries, ``depth`` levels deep): what any pickler pickles the
    same way."""
    t = type(obj)
    if t in _SCALARS:
        return True
    if depth <= 0 or t not in (tuple, list, dict) or len(obj) > 32:
        return False
    if t is dict:
        return all(
            type(k) in _SCALARS and _plain(v, depth - 1) for k, v in obj.items()
        )
    return all(_plain(x, depth - 1) for x in obj)


def _dumps_message(obj):
    """A queue message: ``([parts], descriptors)``. ``_PLAIN`` then the pickle, or
    ``_FRAMED``, the number of out-of-band buffers (u32), the pickle's length and each
    buffer's (u64, a buffer's top bit set when it is read-only), the pickle, then the
    buffers. The receiver (``Channel.recv_message``) gives each buffer its own
    ``bytes`` (read-only) or ``bytearray``, copied once from the message."""
    t = type(obj)
    if t in _SMALL and _local.out is None:
        # A small number or string: nothing out of band, no descriptor.
        if t is not str or len(obj) < _OOB_MIN // 4:
            return [_PLAIN, _dumps_plain(obj, 5)], _NO_FDS
    big = None
    if t is bytes and len(obj) >= _OOB_MIN:
        big = obj
        obj = _BigBytes(obj)
    bufs = []

    def keep(pb):
        raw = pb.raw()
        if raw.nbytes >= _OOB_MIN:
            bufs.append(raw)
            return False
        return True

    outer = _local.out
    data = None
    fds = []
    if outer is None and _plain(obj, 2):
        # Nothing the stdlib's queue reducers or a descriptor would take: the plain
        # pickler, without a pickler object made for each message.
        data = _dumps_plain(obj, 5, buffer_callback=keep)
    if data is None:
        fds = _local.out = []
        try:
            f = io.BytesIO()
            (_Pickler or _pickler())(f, 5, buffer_callback=keep).dump(obj)
            data = f.getvalue()
        finally:
            _local.out = outer
    if not bufs:
        return [_PLAIN, data], fds
    lens = [b.nbytes | (_READ_ONLY if b.readonly else 0) for b in bufs]
    parts = [
        _FRAMED,
        struct.pack(f"<I{len(bufs) + 1}Q", len(bufs), len(data), *lens),
        data,
    ]
    if big is not None and len(bufs) == 1 and bufs[0].nbytes == len(big):
        # The message is that one large bytes object: sent as it is (its buffer, seen
        # through a PickleBuffer, would be copied below).
        parts.append(big)
        return parts, fds
    for b in bufs:
        # A bytes object's own buffer is sent as it is; others are copied once.
        parts.append(b.obj if type(b.obj) is bytes and len(b.obj) == b.nbytes else bytes(b))
    return parts, fds


_local = _passfd._local
_dumps_plain = pickle.dumps
_loads_plain = pickle.loads
_SMALL = frozenset((int, float, str, bool, type(None)))
_NO_FDS = ()
_READ_ONLY = 1 << 63


def _loads_message(data, bufs, fds):
    """The object of a message from ``Channel.recv_message``."""
    if not fds:
        return _loads_plain(data, buffers=bufs)
    with _passfd.receiving(fds):
        return _loads_plain(data, buffers=bufs)


def _wait_for(check, deadline):
    """Polls ``check()`` (a cheap test of shared memory) until it is true or ``deadline``
    (monotonic, or None) passes; whether it became true."""
    delay = 0.0001
    while True:
        if check():
            return True
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            delay = min(delay, left)
        time.sleep(delay)
        delay = min(delay * 2, 0.005)


def _deadline(block, timeout):
    if not block:
        return 0.0
    if timeout is None:
        return None
    return max(0.0, float(timeout))


class Queue:
    """A process-shared FIFO queue: :class:`multiprocessing.Queue` on procpool's channel.

    ``put`` pickles the object and sends it at once, in the calling thread (there is no
    feeder thread: an object that cannot be pickled raises in ``put``); it waits while the
    queue holds ``maxsize`` messages, or while its ring is full (4096 messages) or its
    socket is (large messages travel out of band).

    Example::

        >>> import procpool
        >>> q = procpool.Queue()
        >>> q.put("hello")
        >>> q.get(timeout=1)
        'hello'
    """

    def __init__(self, maxsize=0, *, ctx=None):
        if maxsize <= 0:
            maxsize = _UNBOUNDED
        self._maxsize = maxsize
        self._ch = _core.Channel(_CAPACITY)
        self._ring = _core.Ring()
        self._count = _core.Counter()
        self._closed = False

    # -- pickling ---------------------------------------------------------------------
    def __reduce__(self):
        return (
            _rebuild,
            (
                type(self),
                {k: v for k, v in self.__dict__.items() if k not in _NOT_STATE},
                _passfd.attach(self._ch.send_fd()),
                _passfd.attach(self._ch.recv_fd()),
                _passfd.attach(self._count.fileno()),
                _passfd.attach(self._ring.fileno()),
                self._extra_fds(),
            ),
        )

    def _extra_fds(self):
        return ()

    def _set_extra(self, refs):
        pass

    # -- the stdlib's API -------------------------------------------------------------
    def put(self, obj, block=True, timeout=None):
        """Puts ``obj`` in the queue; with ``block`` and ``timeout`` as the stdlib's.

        Raises :class:`queue.Full` when there is no room in time, ``ValueError`` when
        the queue is closed, and ``BrokenPipeError`` when no process can read it any more.
        """
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if block and timeout is None and self._ring.put_small(
            self._ch, self._count, self._maxsize, obj
        ):
            # The common case (a small number or string, room in the count), in one call.
            return
        parts, fds = _dumps_message(obj)
        count = self._count
        if block and timeout is None and count.add_below(self._maxsize):
            # The common case: room in the count, waiting for room in the socket as long
            # as needed.
            try:
                self._ring.put(self._ch, parts, fds, None)
            except BaseException:
                count.add(-1)
                raise
            return
        wait = _deadline(block, timeout)
        deadline = None if wait is None else time.monotonic() + wait
        if not count.add_below(self._maxsize):
            if not block or not _wait_for(lambda: count.add_below(self._maxsize), deadline):
                raise _queue.Full
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            sent = self._ring.put(self._ch, parts, fds, left)
        except BaseException:
            count.add(-1)
            raise
        if not sent:
            count.add(-1)
            raise _queue.Full

    def get(self, block=True, timeout=None):
        """Removes and returns an item; raises :class:`queue.Empty` when none comes in
        time (or at once when ``block`` is false)."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        r = self._ring.get(
            self._ch, None if block and timeout is None else _deadline(block, timeout)
        )
        if r is None:
            raise _queue.Empty
        self._count.take_one()
        data, bufs, fds = r
        if not fds and not bufs:
            return _loads_plain(data)
        return _loads_message(data, bufs, fds)

    def put_nowait(self, obj):
        """``put(obj, False)``."""
        return self.put(obj, False)

    def get_nowait(self):
        """``get(False)``."""
        return self.get(False)

    def qsize(self):
        """The number of messages put and not yet taken (a process killed in the middle
        of ``put`` or ``get`` can leave it one off, as the stdlib's semaphore)."""
        return max(0, self._count.get())

    def empty(self):
        """Whether no message is waiting now."""
        return self._ring.empty() and not self._ch.poll(0)

    def full(self):
        """Whether the queue holds ``maxsize`` messages."""
        return self._count.get() >= self._maxsize

    def close(self):
        """This process will put and get no more (the stdlib's ``close``)."""
        if not self._closed:
            self._closed = True
            self._ch.close_recv()

    def join_thread(self):
        """Nothing to wait for: messages are sent by ``put`` itself. As in the stdlib,
        only after :meth:`close`."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self):
        """Nothing to cancel (no feeder thread)."""

    def __repr__(self):
        return f"<procpool.{type(self).__name__} at {id(self):#x}>"


_NOT_STATE = ("_ch", "_count", "_unfinished", "_ring")


def _rebuild(cls, state, send, recv, count, ring, extra):
    self = cls.__new__(cls)
    self.__dict__.update(state)
    fds = [_passfd.take(send), _passfd.take(recv), _passfd.take(count), _passfd.take(ring)]
    try:
        self._ch = _core.Channel.from_fds(fds[0], fds[1])
        self._count = _core.Counter.from_fd(fds[2])
        self._ring = _core.Ring.from_fd(fds[3])
    finally:
        for fd in fds:
            os.close(fd)
    self._set_extra(extra)
    return self


class JoinableQueue(Queue):
    """A :class:`Queue` with ``task_done`` and ``join``, as
    :class:`multiprocessing.JoinableQueue`. ``join`` watches a counter in shared memory.

    Example::

        >>> import procpool
        >>> q = procpool.JoinableQueue()
        >>> q.put(1); q.get(); q.task_done(); q.join()
        1
    """

    def __init__(self, maxsize=0, *, ctx=None):
        super().__init__(maxsize)
        self._unfinished = _core.Counter()

    def _extra_fds(self):
        return (_passfd.attach(self._unfinished.fileno()),)

    def _set_extra(self, refs):
        fd = _passfd.take(refs[0])
        try:
            self._unfinished = _core.Counter.from_fd(fd)
        finally:
            os.close(fd)

    def put(self, obj, block=True, timeout=None):
        self._unfinished.add(1)
        try:
            super().put(obj, block, timeout)
        except BaseException:
            self._unfinished.add(-1)
            raise

    def task_done(self):
        """Says that an item taken with ``get`` is processed; ``ValueError`` when called
        more times than items were put."""
        if not self._unfinished.take_one():
            raise ValueError("task_done() called too many times")

    def join(self):
        """Waits until every item put has been marked done."""
        u = self._unfinished
        _wait_for(lambda: u.get() <= 0, None)


class SimpleQueue:
    """:class:`multiprocessing.SimpleQueue` on procpool's channel: ``put``, ``get``,
    ``empty``, ``close``.

    Example::

        >>> import procpool
        >>> q = procpool.SimpleQueue()
        >>> q.put([1, 2]); q.get()
        [1, 2]
    """

    def __init__(self, *, ctx=None):
        self._ch = _core.Channel(_CAPACITY)
        self._closed = False

    def __reduce__(self):
        return (
            _rebuild_simple,
            (_passfd.attach(self._ch.send_fd()), _passfd.attach(self._ch.recv_fd())),
        )

    def put(self, obj):
        """Puts ``obj`` (waits while the socket is full)."""
        parts, fds = _dumps_message(obj)
        self._ch.send(parts, fds, None)

    def get(self):
        """Removes and returns an item, waiting for one."""
        return _loads_message(*self._ch.recv_message(None))

    def empty(self):
        """Whether no message is waiting now."""
        return not self._ch.poll(0)

    def close(self):
        """Closes this process's ends."""
        if not self._closed:
            self._closed = True
            self._ch.close_recv()
            self._ch.close_send()

    def __repr__(self):
        return f"<procpool.SimpleQueue at {id(self):#x}>"


def _rebuild_simple(send, recv):
    self = SimpleQueue.__new__(SimpleQueue)
    s, r = _passfd.take(send), _passfd.take(recv)
    try:
        self._ch = _core.Channel.from_fds(s, r)
    finally:
        os.close(s)
        os.close(r)
    self._closed = False
    return self


class Connection:
    """One end of a :func:`Pipe`: :class:`multiprocessing.connection.Connection`'s API
    (``send``, ``recv``, ``send_bytes``, ``recv_bytes``, ``recv_bytes_into``, ``poll``,
    ``fileno``, ``close``) on procpool's channel. ``send`` and ``send_bytes`` send one
    message each; ``recv`` unpickles what ``send_bytes`` sent and the other way round, as
    in the stdlib."""

    def __init__(self, ch, readable=True, writable=True):
        self._ch = ch
        self._readable = readable
        self._writable = writable

    def __reduce__(self):
        ch = self._check_closed()
        return (
            _rebuild_conn,
            (
                _passfd.attach(ch.send_fd()) if self._writable else None,
                _passfd.attach(ch.recv_fd()) if self._readable else None,
            ),
        )

    @property
    def closed(self):
        """True if the connection is closed."""
        return self._ch is None

    @property
    def readable(self):
        """True if the connection is readable."""
        return self._readable

    @property
    def writable(self):
        """True if the connection is writable."""
        return self._writable

    def _check_closed(self):
        if self._ch is None:
            raise OSError("handle is closed")
        return self._ch

    def _check_readable(self):
        if not self._readable:
            raise OSError("connection is write-only")

    def _check_writable(self):
        if not self._writable:
            raise OSError("connection is read-only")

    def fileno(self):
        """The descriptor to wait on (``select``, ``multiprocessing.connection.wait``):
        the receiving socket, or the sending one of a write-only end."""
        ch = self._check_closed()
        return ch.recv_fd() if self._readable else ch.send_fd()

    def close(self):
        """Closes this end here."""
        if self._ch is not None:
            ch, self._ch = self._ch, None
            ch.close_send()
            ch.close_recv()

    def send_bytes(self, buf, offset=0, size=None):
        """Sends the bytes of ``buf[offset:offset + size]`` as one message."""
        ch = self._check_closed()
        self._check_writable()
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        if type(buf) is bytes and offset == 0 and size == n:
            part = buf
        else:
            part = bytes(m[offset : offset + size])
        ch.send([part], [], None)

    def send(self, obj):
        """Sends a picklable object."""
        ch = self._check_closed()
        self._check_writable()
        data, fds = _dumps(obj)
        ch.send([data], fds, None)

    def _recv(self):
        ch = self._check_closed()
        self._check_readable()
        return ch.recv(None)

    def recv_bytes(self, maxlength=None):
        """Receives one message's bytes; ``EOFError`` when the other end is closed and
        nothing is left."""
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data, fds = self._recv()
        for fd in fds:
            os.close(fd)
        if maxlength is not None and len(data) > maxlength:
            self.close()
            raise OSError("bad message length")
        return data

    def recv_bytes_into(self, buf, offset=0):
        """Receives one message's bytes into ``buf`` at ``offset``; returns their number.
        :class:`multiprocessing.BufferTooShort` (holding the bytes) when it does not fit.
        ``offset`` and the result count bytes, as in the stdlib."""
        data, fds = self._recv()
        for fd in fds:
            os.close(fd)
        with memoryview(buf) as m:
            itemsize = m.itemsize
            bytesize = itemsize * len(m)
            if offset < 0:
                raise ValueError("negative offset")
            elif offset > bytesize:
                raise ValueError("offset too large")
            n = len(data)
            if bytesize - offset < n:
                import multiprocessing

                raise multiprocessing.BufferTooShort(data)
            m.cast("B")[offset : offset + n] = data
            return n

    def recv(self):
        """Receives a pickled object."""
        return _loads(*self._recv())

    def poll(self, timeout=0.0):
        """Whether there is something to read (waiting at most ``timeout`` seconds;
        ``None``: as long as needed)."""
        ch = self._check_closed()
        self._check_readable()
        if timeout is not None:
            timeout = max(0.0, timeout)
        return ch.poll(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._ch is None else ""
        return f"<procpool.Connection {state} at {id(self):#x}>"


def _rebuild_conn(send, recv):
    s = _passfd.take(send) if send is not None else -1
    r = _passfd.take(recv) if recv is not None else -1
    try:
        ch = _core.Channel.from_fds(s, r)
    finally:
        for fd in (s, r):
            if fd >= 0:
                os.close(fd)
    return Connection(ch, readable=recv is not None, writable=send is not None)


def _split(ch, send: bool, recv: bool):
    return _core.Channel.from_fds(ch.send_fd() if send else -1, ch.recv_fd() if recv else -1)


def Pipe(duplex=True):
    """A pair of :class:`Connection` objects: both ways when ``duplex``, else
    ``(reader, writer)``, as :func:`multiprocessing.Pipe`.

    Example::

        >>> import procpool
        >>> a, b = procpool.Pipe()
        >>> a.send({"x": 1}); b.recv()
        {'x': 1}
    """
    if duplex:
        # Two channels, one each way (a channel's ends are one-way sockets).
        a, b = _core.Channel.duplex(_CAPACITY)
        return Connection(a), Connection(b)
    ch = _core.Channel(_CAPACITY)
    r = _split(ch, False, True)
    w = _split(ch, True, False)
    return Connection(r, writable=False), Connection(w, readable=False)
