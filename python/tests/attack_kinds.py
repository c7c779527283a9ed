"""Task functions returning values that must never come back as another kind."""

import array
import ctypes
import io
import mmap
import os
import socket
import sys
import tempfile
import threading


def make(kind):
    if kind == "socket":
        return socket.socket()
    if kind == "socketpair":
        return socket.socketpair()[0]
    if kind == "lock":
        return threading.Lock()
    if kind == "rlock":
        return threading.RLock()
    if kind == "generator":
        return (i for i in range(3))
    if kind == "mmap":
        m = mmap.mmap(-1, 4096)
        m[:5] = b"hello"
        return m
    if kind == "mv_bytes":
        return memoryview(b"abcdef")
    if kind == "mv_array":
        return memoryview(array.array("i", [1, 2, 3]))
    if kind == "mv_ctypes":
        return memoryview((ctypes.c_int * 3)(1, 2, 3))
    if kind == "mv_mmap":
        m = mmap.mmap(-1, 4096)
        return memoryview(m)
    if kind == "mv_cast":
        return memoryview(bytearray(16)).cast("d")
    if kind == "file_text":
        f = tempfile.TemporaryFile("w+")
        f.write("secret")
        f.seek(0)
        return f
    if kind == "file_bin":
        f = tempfile.TemporaryFile("w+b")
        f.write(b"secret")
        f.seek(0)
        return f
    if kind == "file_raw":
        fd, path = tempfile.mkstemp()
        os.write(fd, b"secret")
        os.close(fd)
        f = open(path, "rb", buffering=0)
        os.unlink(path)
        return f
    if kind == "stringio":
        return io.StringIO("fine")
    if kind == "bytesio":
        return io.BytesIO(b"fine")
    if kind == "stdout":
        return sys.stdout
    if kind == "devnull":
        return open(os.devnull)
    if kind == "frame":
        return sys._getframe()
    if kind == "event":
        return threading.Event()
    if kind == "condition":
        return threading.Condition()
    if kind == "thread":
        return threading.Thread(target=print)
    if kind == "ctypes_ptr":
        return ctypes.pointer(ctypes.c_int(5))
    raise ValueError(kind)


def identity_kind(x):
    return type(x).__name__


def sized(n):
    """A result of ``n`` bytes."""
    return b"r" * n


def length(b):
    return len(b)
