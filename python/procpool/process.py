"""``procpool.Process``: a drop-in replacement for :class:`multiprocessing.Process`.

A process is forked from procpool's template interpreter (as pool workers are: about a
millisecond, whatever the size of the caller), sees the caller's main module as the
``spawn`` start method shows it (run again as ``__mp_main__``, its guarded block skipped),
and gets its target and arguments pickled (by reference where they have a name, so a
``__main__`` class holding a lock goes by reference). With procpool's guarantees:

* the main module is run (as ``__mp_main__``) only if the target needs a name from it;
* no orphan: when the parent dies (even by SIGKILL), the process and every process it
  started die too;
* the processes it started die with it when it is reaped (its process group);
* ``exitcode`` as the stdlib's: 0, ``sys.exit(n)``'s ``n``, 1 after an uncaught exception
  (printed as the stdlib prints it), ``-N`` after signal ``N``;
* ``sentinel`` is a process descriptor (pidfd), usable with ``select`` and
  :func:`multiprocessing.connection.wait`.

From the second ``start()`` on, the template keeps a spare process ready (forked while the
process just started runs; it waits for its target without using the CPU), which the
next ``start()`` uses when the caller's settings (environment, working directory,
``sys.path``, ``sys.argv``, authentication key, imported packages) are those it was forked
with; else it is killed and reaped and a new process is forked. ``PROCPOOL_PROCESS_SPARE=0``
in the environment keeps none.

Example::

    import procpool

    def greet(name):
        print("hello", name)

    if __name__ == "__main__":
        p = procpool.Process(target=greet, args=("world",))
        p.start()
        p.join()
        assert p.exitcode == 0
"""

from __future__ import annotations

import atexit
import io
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import types

from multiprocessing import process as _mp_process
from multiprocessing import util as _util

from . import _bootstrap, _core
from . import _passfd_msg as _passfd

__all__ = ["Process", "current_process", "parent_process", "active_children"]

#: Whether a spare process is kept ready for the next :class:`Process` (set
#: ``PROCPOOL_PROCESS_SPARE=0`` for none; see the README's "What differs").
_SPARE = os.environ.get("PROCPOOL_PROCESS_SPARE", "1") != "0"

#: How many processes this process has started.
_starts = 0

current_process = _mp_process.current_process
parent_process = _mp_process.parent_process
active_children = _mp_process.active_children


class _Popen:
    """The running process behind a :class:`Process` (the stdlib's ``Popen`` protocol:
    ``pid``, ``sentinel``, ``poll``, ``wait``, ``terminate``, ``kill``, ``close``)."""

    method = "procpool"

    def __init__(self, process_obj):
        _util._flush_std_streams()
        self.returncode = None
        self.finalizer = None
        self._reaping = threading.Lock()
        self._fds = []
        from multiprocessing import context, spawn

        prep = spawn.get_preparation_data(process_obj._name)
        info = _bootstrap.main_info()
        prep.pop("init_main_from_name", None)
        prep.pop("init_main_from_path", None)
        prep.pop("start_method", None)
        buf = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            pickle.dump((prep, info), buf, protocol=pickle.HIGHEST_PROTOCOL)
            head = buf.getvalue()
            fds = _dump_process(buf, process_obj)
            if fds is None:
                # The stdlib's pickler refused (a lambda or closure as the target): by
                # value with cloudpickle, as a fork would allow.
                from ._pickle import _cloud

                buf = io.BytesIO()
                buf.write(head)
                fds = _dump_process(buf, process_obj, _cloud())
        finally:
            context.set_spawning_popen(None)
        body = buf.getvalue()
        from . import _template

        prep = _template.prep()
        _template.fork_here(prep)
        # The spare process when one waits with these settings (see ``_request_spare``),
        # else a new one.
        self.pid, sock, self.sentinel = _core._launch_process(prep)
        mine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, sock)
        self._sock = mine
        try:
            # The process writes where this process writes now (as a fork would).
            std = [fd for fd in (1, 2) if _valid(fd)]
            mask = sum(1 << (fd - 1) for fd in std)
            socket.send_fds(mine, [struct.pack("<QI", len(body), mask)], fds + std)
            mine.sendall(body)
        except OSError:
            pass  # the process died at once: its exit code says how
        self.finalizer = _util.Finalize(self, _close_all, (self.sentinel, mine))
        global _starts
        _starts += 1
        if _SPARE and _starts > 1:
            # The next process, forked by the template while this one runs (from the
            # second start on: a program that starts one process wastes none).
            _core._request_spare(prep)
        global _interrupted
        if _interrupted is None:
            # Registered after ``multiprocessing.util``'s exit function, so run before
            # it joins the children.
            _interrupted = False
            atexit.register(_at_exit)

    # The stdlib's pickling protocol for objects that hold descriptors (``Connection``,
    # ``multiprocessing.Queue``) while a process is being started.
    class DupFd:
        def __init__(self, slot):
            self.slot = slot

        def detach(self):
            return _passfd.take(("slot", self.slot))

    def duplicate_for_child(self, fd):
        out = getattr(_passfd._local, "out", None)
        if out is None:  # pragma: no cover - only called while pickling in __init__
            raise RuntimeError("duplicate_for_child called outside of a process start")
        out.append(fd)
        return len(out) - 1

    def poll(self, flag=os.WNOHANG):
        if self.returncode is None:
            if flag == 0:
                # Waits for the end on the pidfd, so that the lock below is never held
                # while the process runs (another thread's ``is_alive`` would wait).
                select.select([self.sentinel], [], [])
            # One thread reaps; the others read what it found (without the lock, a
            # second ``join`` raised ChildProcessError or set ``exitcode`` to 255).
            with self._reaping:
                if self.returncode is None:
                    self._reap(flag)
        return self.returncode

    def _reap(self, flag):
        try:
            r = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | flag)
        except ChildProcessError:
            self._reaped_elsewhere()
            return
        if r is None:
            return
        # Ended, not reaped: its group id is still ours. What it started dies with it.
        _kill_group(self.pid)
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            self._reaped_elsewhere()
            return
        self.returncode = os.waitstatus_to_exitcode(status)

    def _reaped_elsewhere(self):
        # The kernel reaped it (this program sets SIGCHLD to SIG_IGN), or the program
        # did (``os.wait()``): the status is on the pidfd (Linux 6.15 and later), else
        # unknown (255). Its group is killed as the engine does for a worker.
        _kill_group(self.pid)
        code = _pidfd_exit_code(self.sentinel)
        self.returncode = 255 if code is None else code

    def wait(self, timeout=None):
        if self.returncode is None:
            try:
                wait = None if timeout is None else max(0.0, timeout)
                r, _, _ = select.select([self.sentinel], [], [], wait)
                if not r:
                    return None
                return self.poll(0)  # it has ended: the blocking reap is at once
            except KeyboardInterrupt as e:
                _interrupt_children(e)
                raise
        return self.returncode

    def _send_signal(self, sig):
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self):
        self._send_signal(signal.SIGTERM)

    def kill(self):
        self._send_signal(signal.SIGKILL)

    def close(self):
        if self.finalizer is not None:
            self.finalizer()


#: The KeyboardInterrupt last passed on by :func:`_interrupt_children` (None until the
#: first process starts; then ``False`` until a Ctrl-C).
_interrupted = None


def _interrupt_children(exc=None):
    """Ctrl-C reached this process (``exc``, its KeyboardInterrupt): passes it on to its
    live procpool processes, as the terminal's SIGINT reaches a standard library child
    (in the same process group). Theirs is a session of their own, so without this a
    program interrupted in ``join()`` would then wait at exit, in ``multiprocessing``'s
    join of its children, for a child that never saw the Ctrl-C: for ever if that child
    waits too."""
    global _interrupted
    if exc is not None:
        if exc is _interrupted:
            return  # passed on already (in ``join``, then at exit)
        _interrupted = exc
    for p in list(_mp_process._children):
        popen = getattr(p, "_popen", None)
        if isinstance(popen, _Popen) and popen.returncode is None:
            popen._send_signal(signal.SIGINT)


def _at_exit():
    # The program ends with an uncaught KeyboardInterrupt: a Ctrl-C the children did
    # not get, unless it was passed on in ``join``.
    exc = getattr(sys, "last_value", None)
    if isinstance(exc, KeyboardInterrupt):
        _interrupt_children(exc)


def _by_reference_pickler():
    from multiprocessing.reduction import ForkingPickler

    from ._pickle import _main_by_reference

    class ByReference(ForkingPickler):
        """The stdlib's pickler, refusing what the child could not find by name: a
        function or class of a ``__main__`` the child cannot import (``-c``, the REPL)."""

        def reducer_override(self, obj):
            if (
                isinstance(obj, (type, types.FunctionType))
                and getattr(obj, "__module__", None) == "__main__"
                and not _main_by_reference(obj)
            ):
                raise pickle.PicklingError("not importable in the child")
            return NotImplemented

    return ByReference


def _ByReference(*args):
    global _ByReference
    _ByReference = _by_reference_pickler()
    return _ByReference(*args)


def _dump_process(buf, obj, pickler=None):
    """Pickles ``obj`` into ``buf`` (after what it holds): the descriptors attached, or
    None when the stdlib's pickler (the default) refuses it."""
    with _passfd.sending() as fds:
        try:
            (pickler or _ByReference)(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
        except Exception:
            if pickler is not None:
                raise
            return None
        return list(fds)


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


#: ``PIDFD_GET_INFO`` (``_IOWR(0xFF, 11, struct pidfd_info)``, 64 bytes) and its
#: ``PIDFD_INFO_EXIT`` bit.
_PIDFD_GET_INFO = 0xC040FF0B
_PIDFD_INFO_EXIT = 1 << 3


def _pidfd_exit_code(pidfd):
    """The exit code the kernel keeps on a pidfd once its process was reaped (Linux 6.15
    and later), or None."""
    import fcntl

    info = bytearray(struct.pack("<Q56x", _PIDFD_INFO_EXIT))
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, info, True)
    except (OSError, OverflowError):
        return None
    (mask,) = struct.unpack_from("<Q", info)
    if not mask & _PIDFD_INFO_EXIT:
        return None
    (status,) = struct.unpack_from("<i", info, 60)
    return os.waitstatus_to_exitcode(status)


def _valid(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _close_all(pidfd, sock):
    try:
        os.close(pidfd)
    except OSError:
        pass
    sock.close()


class Process(_mp_process.BaseProcess):
    """A process running ``target(*args, **kwargs)`` (or a subclass's ``run``), started
    from procpool's template: :class:`multiprocessing.Process`'s API (``start``,
    ``join``, ``is_alive``, ``terminate``, ``kill``, ``close``, ``exitcode``, ``pid``,
    ``name``, ``daemon``, ``authkey``, ``sentinel``) and behaviour, with the guarantees
    of the module docs.

    Example::

        >>> import procpool, os
        >>> p = procpool.Process(target=os._exit, args=(3,))
        >>> p.start(); p.join(); p.exitcode
        3
    """

    _start_method = None

    @staticmethod
    def _Popen(process_obj):
        _bootstrap.check()
        return _Popen(process_obj)

    @staticmethod
    def _after_fork():
        pass


def _child_main(spare: bool = False) -> int:
    """In a process forked from the template for a :class:`Process`: reads what to run
    from standard input (a socket from the parent), runs it, returns the exit code. A
    spare process (``spare``) first writes its pid there, for the parent to find it if
    the template dies before telling it."""
    _core._die_with_parent_group()
    sock = socket.socket(fileno=os.dup(0))
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)
    try:
        if spare:
            sock.sendall(struct.pack("<q", os.getpid()))
        head, fds, _flags, _addr = socket.recv_fds(sock, 12, 255)
        if len(head) < 12:
            return 70
        n, mask = struct.unpack("<QI", head)
        for fd in (2, 1):
            if mask & (1 << (fd - 1)) and fds:
                std = fds.pop()
                os.dup2(std, fd)
                os.close(std)
        body = bytearray()
        while len(body) < n:
            chunk = sock.recv(min(n - len(body), 1 << 20))
            if not chunk:
                return 70
            body += chunk
    except OSError:
        return 70
    from multiprocessing import spawn

    current = _mp_process.current_process()
    current._inheriting = True
    try:
        stream = io.BytesIO(body)
        prep, info = pickle.load(stream)
        spawn.prepare(prep)
        # The main module is run when the target first needs a name from it.
        _bootstrap.lazy_main(info)
        _bootstrap.inheriting = True
        try:
            with _passfd.receiving(fds):
                obj = pickle.load(stream)
        except BaseException:
            import traceback

            traceback.print_exc()
            return 1
        finally:
            _bootstrap.inheriting = False
    finally:
        try:
            del current._inheriting
        except AttributeError:
            pass
    return obj._bootstrap(parent_sentinel=sock.fileno())
