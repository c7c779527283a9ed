"""The template process (private): one per parent process, started once, which forks
each worker.

A fresh interpreter costs tens of milliseconds; a fork of this warm, single-threaded
process (procpool and cloudpickle already imported) costs about a millisecond. The fork
is made with ``CLONE_PARENT`` (by ``procpool._core``), so each worker is a child of the
pool's own process, which watches it, reaps it and kills it as it would any worker.

Requests come on standard input, a Unix socket: the worker's socket end (by
``SCM_RIGHTS``, followed by the descriptors the pool's ``initargs`` refer to) and a body: ``u32`` length of the parent's settings (a pickle of the
worker's ``sys.path``, working directory and environment), the settings, then the
engine's variables as ``KEY=VALUE\\0`` pairs. The answer is the worker's pid as an
``i64`` (a negative errno when the fork failed).
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import struct
import sys


def main() -> None:
    # Everything a worker needs is imported once, here, before any fork.
    from . import _bootstrap, _core, _errors, _passfd, _passfd_msg, _pickle, _worker  # noqa: F401
    from . import process, queues  # noqa: F401
    from multiprocessing import spawn  # noqa: F401

    _core._die_with_parent(int(os.environ.pop("PROCPOOL_TEMPLATE_PARENT", "0")))
    # A terminal's Ctrl-C is the parent's business.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = socket.socket(fileno=os.dup(0))
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)  # takes descriptor 0 back
    applied = None
    while True:
        req = _recv_request(ctl)
        if req is None:
            os._exit(0)  # the parent closed its end
        fd, body, extra = req
        (n,) = struct.unpack_from("<I", body)
        if body[4 : 4 + n] != applied:
            # The parent's settings, applied here once (not in each worker after its
            # fork, where every object touched costs a copied page).
            applied = body[4 : 4 + n]
            _apply(pickle.loads(applied))
            # What exists now is never collected in a worker: its garbage collector does
            # not walk (and so copy) the template's objects.
            gc.freeze()
        try:
            pid = _core._fork()
        except OSError as e:
            os.close(fd)
            _close_all(extra)
            ctl.sendall(struct.pack("<q", -(e.errno or 1)))
            continue
        if pid == 0:
            ctl.close()
            _child(fd, body, extra)  # never returns
        os.close(fd)
        _close_all(extra)
        ctl.sendall(struct.pack("<q", pid))


def _close_all(fds) -> None:
    for fd in fds:
        os.close(fd)


def _recv_request(ctl: socket.socket):
    """``(worker socket, body, descriptors for the initializer)``, or ``None``."""
    try:
        head, fds, _flags, _addr = socket.recv_fds(ctl, 4, 253)
    except OSError:
        return None
    if len(head) < 4 or len(fds) < 1:
        _close_all(fds)
        return None
    (n,) = struct.unpack("<I", head)
    body = bytearray()
    while len(body) < n:
        chunk = ctl.recv(n - len(body))
        if not chunk:
            _close_all(fds)
            return None
        body += chunk
    return fds[0], bytes(body), fds[1:]


def _child(fd: int, body: bytes, extra) -> None:
    code = 70
    try:
        from . import _passfd

        _passfd.adopt_init_fds(extra)
        os.setsid()
        os.dup2(fd, 0)
        os.close(fd)
        (n,) = struct.unpack_from("<I", body)
        for kv in body[4 + n :].split(b"\0"):  # this worker's own variables
            if kv:
                k, _, v = kv.partition(b"=")
                os.environ[os.fsdecode(k)] = os.fsdecode(v)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from . import _bootstrap, _core, _worker

        if os.environ.get("PROCPOOL_PROCESS"):
            from . import process

            code = process._child_main()
        else:
            _bootstrap.load_main(_applied.get("main"))
            code = _core._serve_worker()
        _worker.flush()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


#: The parent's settings last applied (see ``_apply``).
_applied: dict = {}


def _apply(prep: dict) -> None:
    """Makes this process look like the parent for the workers it forks next."""
    global _applied
    _applied = prep
    env = prep["environ"]
    for k in [k for k in os.environ if k not in env]:
        del os.environ[k]
    for k, v in env.items():
        if os.environ.get(k) != v:
            os.environ[k] = v
    sys.path[:] = prep["sys_path"]
    if "authkey" in prep:  # the parent's, for its Manager proxies and Listeners
        import multiprocessing

        multiprocessing.current_process().authkey = prep["authkey"]
    try:
        os.chdir(prep["cwd"])
    except OSError:
        pass


def prep() -> bytes:
    """What a worker of this process needs to look like it: ``sys.path``, the working
    directory, the environment, ``multiprocessing``'s authentication key and how to
    import the main module (as of the pool's creation)."""
    import multiprocessing

    from ._bootstrap import main_info

    return pickle.dumps(
        {
            "sys_path": list(sys.path),
            "cwd": os.getcwd(),
            "environ": dict(os.environ),
            "authkey": bytes(multiprocessing.current_process().authkey),
            "main": main_info(),
        },
        protocol=5,
    )


if __name__ == "__main__":
    main()
