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


#: Thread pools of numerical libraries, limited to one thread in the template (and so in
#: every worker) before anything can import them, as loky limits its workers': a library
#: that starts its pool at import (OpenBLAS) would otherwise leave threads in the
#: template, and a fork of a threaded process can deadlock.
BLAS_LIMITS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "BLIS_NUM_THREADS",
)

#: What the template answers instead of a pid when preloading left it with threads: the
#: parent starts a new template that preloads nothing (see ``launcher.rs``).
THREADED = 11  # EAGAIN


#: The parent's settings last applied (see ``prep``): a forked worker reads its
#: ``main`` there.
_current: dict = {}


def main() -> None:
    global _current
    # Everything a worker needs is imported once, here, before any fork.
    from . import _bootstrap, _core, _errors, _passfd, _passfd_msg, _pickle, _worker  # noqa: F401
    from . import process, queues  # noqa: F401
    from multiprocessing import spawn  # noqa: F401

    may_preload = not os.environ.pop("PROCPOOL_TEMPLATE_NO_PRELOAD", "")

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
            _current = pickle.loads(applied)
            _apply(_current)
            if may_preload and not _preload(_current.get("preload", ())):
                # A preloaded module started a thread: no fork from here.
                os.close(fd)
                _close_all(extra)
                ctl.sendall(struct.pack("<q", -THREADED))
                os._exit(0)
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


_preloaded = set()


def _preload(names) -> bool:
    """Imports, once, the modules the parent had loaded (``prep["preload"]``), so that
    workers are forked with them (as ``forkserver``'s preload), with the thread pools of
    numerical libraries limited to one thread while they load (:data:`BLAS_LIMITS`).
    Whether the template is still single-threaded (checked in ``/proc/self/task``, where
    every thread shows)."""
    new = [m for m in names if m not in _preloaded and m not in sys.modules]
    if not new:
        return True
    import importlib

    saved = {var: os.environ.get(var) for var in BLAS_LIMITS}
    for var in BLAS_LIMITS:
        os.environ[var] = "1"
    try:
        for name in new:
            _preloaded.add(name)
            try:
                importlib.import_module(name)
            except BaseException:  # not importable here: the worker will say so
                pass
    finally:
        for var, v in saved.items():
            if v is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = v
    return len(os.listdir("/proc/self/task")) == 1


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

        if os.environ.pop("PROCPOOL_PROCESS", None):
            from . import process

            code = process._child_main()
        else:
            _bootstrap.lazy_main(_current.get("main"))
            code = _core._serve_worker()
        _worker.flush()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _apply(prep: dict) -> None:
    """Makes this process look like the parent for the workers it forks next."""
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
    directory, the environment and ``multiprocessing``'s authentication key (as of the
    pool's creation)."""
    import multiprocessing

    from ._bootstrap import main_info

    return pickle.dumps(
        {
            "sys_path": list(sys.path),
            "cwd": os.getcwd(),
            "environ": dict(os.environ),
            "authkey": bytes(multiprocessing.current_process().authkey),
            "main": main_info(),
            "preload": preload_list(),
        },
        protocol=5,
    )


#: Never preloaded: packages known to start threads when imported.
_NO_PRELOAD = {"torch", "tensorflow", "jax", "jaxlib", "ray", "dask", "distributed", "pytest"}


_verdicts: dict = {}


def preload_list() -> list:
    """The top-level packages this process has loaded from the installation (the
    standard library and ``site-packages``/``dist-packages``, not the program's own
    modules, whose import may have effects), for the template to load before forking
    workers. Each module is judged once."""
    stdlib = getattr(sys, "stdlib_module_names", ())
    out = []
    for name, mod in list(sys.modules.items()):
        ok = _verdicts.get(name)
        if ok is None:
            ok = False
            if "." not in name and not name.startswith("_") and name not in _NO_PRELOAD:
                if name in stdlib:
                    ok = True
                else:
                    f = getattr(mod, "__file__", None) or ""
                    ok = "-packages" + os.sep in f
            _verdicts[name] = ok
        if ok:
            out.append(name)
    return out


if __name__ == "__main__":
    main()
