"""The template process (private): one per parent process, started once, which forks
each worker.

A fresh interpreter costs tens of milliseconds; a fork of this warm, single-threaded
process (procpool already imported) costs about a millisecond. The fork
is made with ``CLONE_PARENT`` (by ``procpool._core``), so each worker is a child of the
pool's own process, which watches it, reaps it and kills it as it would any worker.

The template is started as a new interpreter (``launcher.rs``), or, for the first pool or
process of a program that runs one thread, as a fork of the program (:func:`fork_here`,
made to look like that interpreter by :func:`_forked`).

Requests come on standard input (or, forked, on the socket it was given), a Unix socket: the worker's socket end (by
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
import types


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


def main(ctl=None, applied=None) -> None:
    """The template's loop. Started with ``python -c`` (``ctl`` on standard input), or
    (``ctl`` and ``applied`` given) in a fork of the caller made by :func:`fork_here`."""
    global _current
    forked = ctl is not None
    # Everything a worker needs is imported once, here, before any fork (a fork of the
    # caller has most of it: the rest is imported when first needed, see ``_imports``).
    from . import _bootstrap, _core, _passfd  # noqa: F401

    if not forked:
        from . import _errors, _passfd_msg, _pickle, _worker  # noqa: F401
        from . import process, queues  # noqa: F401
        from multiprocessing import spawn  # noqa: F401
        import runpy  # noqa: F401 - runs the caller's main module

        may_preload = not os.environ.pop("PROCPOOL_TEMPLATE_NO_PRELOAD", "")
        _core._die_with_parent(int(os.environ.pop("PROCPOOL_TEMPLATE_PARENT", "0")))
        ctl = socket.socket(fileno=os.dup(0))
        os.close(0)
        os.open(os.devnull, os.O_RDONLY)  # takes descriptor 0 back
    else:
        may_preload = True
        _current = pickle.loads(applied)
        gc.freeze()
    # A terminal's Ctrl-C is the parent's business.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A library's fork handler may have started a thread in this fork: then no fork here.
    threaded = forked and len(os.listdir("/proc/self/task")) != 1
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
                threaded = True
            # What exists now is never collected in a worker: its garbage collector does
            # not walk (and so copy) the template's objects.
            gc.freeze()
        if threaded:
            # A preloaded module started a thread: no fork from here.
            os.close(fd)
            _close_all(extra)
            ctl.sendall(struct.pack("<q", -THREADED))
            os._exit(0)
        if forked:
            _imports(body[4 + n :])
        if b"PROCPOOL_SPARE=" in body[4 + n :]:
            # A spare process (see ``launcher.rs`` ``_request_spare``): nobody waits
            # for it, so the caller's main script is compiled first, for it to run.
            _bootstrap.compile_main(_current.get("main"))
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
        path = _main_path()
        if path and (_bootstrap.main_code is None or _bootstrap.main_code[0] != path):
            # While no request waits: the caller's main script, compiled once for the
            # children forked from now on.
            import select

            if not select.select([ctl], [], [], 0)[0]:
                _bootstrap.compile_main(_current.get("main"))


def _main_path():
    return (_current.get("main") or {}).get("path")


def _imports(env: bytes) -> None:
    """In a template forked from the caller: imports, once, what the next child needs
    and the caller had not imported (a ``Process`` needs more than a pool worker)."""
    if "runpy" not in sys.modules:
        # What runs the caller's main module: once here, not in each child that needs
        # ``__main__``.
        import runpy  # noqa: F401
    if b"PROCPOOL_PROCESS=" in env:
        if "procpool.process" not in sys.modules:
            from multiprocessing import spawn  # noqa: F401

            from . import _passfd_msg, process  # noqa: F401
    elif "procpool._worker" not in sys.modules:
        from . import _worker  # noqa: F401


#: A program using more memory than this starts its template as a new interpreter: a
#: template forked from it would share its pages for as long as the program runs, so
#: that each page the program writes from then on is copied (its data, loaded before
#: its first pool and changed after, would be held twice).
FORK_MAX_RSS = 256 << 20


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return FORK_MAX_RSS + 1


def fork_here(prep: bytes) -> bool:
    """Starts this process's template as a fork of this process (a millisecond, where a
    new interpreter costs tens) when that is safe: this process runs one thread (its
    main thread), so no lock can be held by a thread that the fork leaves behind. The
    fork is made to look like the template a new interpreter would be (see
    :func:`_forked`). Whether it was started; if not, the template will be a new
    interpreter (``launcher.rs``)."""
    import threading

    from . import _core

    if (
        os.environ.get("PROCPOOL_TEMPLATE") == "exec"
        or _core._template_running()
        or threading.current_thread() is not threading.main_thread()
        or len(os.listdir("/proc/self/task")) != 1
        or _resident_bytes() > FORK_MAX_RSS
    ):
        return False
    for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
        try:
            stream.flush()
        except Exception:
            pass
    parent = os.getpid()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = os.fork()
    except OSError:
        mine.close()
        theirs.close()
        return False
    if pid == 0:
        code = 70
        try:
            mine.close()
            _forked(theirs, parent, prep)  # never returns
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    theirs.close()
    try:
        os.setpgid(pid, pid)  # as the child does: no race with a kill of its group
    except OSError:
        pass
    _core._adopt_template(pid, mine.detach())
    return True


#: What a template forked from the caller keeps of the caller's modules and objects it
#: set aside, so that nothing of the caller's is ever freed there (and in its workers),
#: which could run finalizers that act on the caller's resources.
_kept: list = []


def _forked(ctl: socket.socket, parent: int, prep: bytes) -> None:
    """In a fork of the caller, made to look like a template started as a new
    interpreter that preloaded the caller's installed modules:

    * its own process group, killed when the caller's thread that forked it ends;
    * no descriptor of the caller's but the inheritable ones and standard output and
      error: the others (``O_CLOEXEC``: what a new interpreter would not get) point to
      ``/dev/null`` from now on, so that the template holds no pipe, socket or lock of
      the caller's open (a pipe's reader would wait for an end of file forever);
      standard input is ``/dev/null``;
    * the signal handlers of a new interpreter (the caller's Python handlers dropped);
    * the caller's own modules (not the standard library, not an installed package,
      not procpool) forgotten, so that workers import them anew, as before; and
      ``__main__`` empty, as the workers' and processes' own is set up at their start;
    * ``multiprocessing``'s finalizers and children of the caller forgotten.
    """
    os.setpgid(0, 0)
    from . import _core

    _core._die_with_parent(parent)
    # The caller's Python handlers (which an exec would reset; an ignored signal stays
    # ignored through an exec too).
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, TypeError):
            pass
    try:
        signal.set_wakeup_fd(-1)
    except (OSError, ValueError):
        pass
    keep = ctl.fileno()
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    os.dup2(null, 0)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd in (keep, null):
            continue
        try:
            if not os.get_inheritable(fd):
                os.dup2(null, fd, inheritable=False)
        except OSError:  # the listing's own descriptor, closed by now
            pass
    os.close(null)
    _forget_modules()
    _reopen_log_files()
    main(ctl, prep)


def _forget_modules() -> None:
    stdlib = os.path.dirname(os.__file__) + os.sep
    for name, mod in list(sys.modules.items()):
        if name in ("__main__", "__mp_main__"):
            continue
        f = getattr(mod, "__file__", None)
        if (
            not isinstance(f, str)
            or name == "procpool"
            or name.startswith("procpool.")
            or f.startswith(stdlib)
            or ("-packages" + os.sep) in f
        ):
            continue
        _kept.append(sys.modules.pop(name))
    _kept.append(sys.modules.get("__main__"))
    sys.modules.pop("__mp_main__", None)
    main = types.ModuleType("__main__")
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    mp = sys.modules.get("multiprocessing.util")
    if mp is not None:
        _kept.append(dict(mp._finalizer_registry))
        mp._finalizer_registry.clear()
    mp = sys.modules.get("multiprocessing.process")
    if mp is not None:
        _kept.append(set(mp._children))
        mp._children.clear()


def _reopen_log_files() -> None:
    """The caller's ``logging`` file handlers: their file (now ``/dev/null`` here) is
    opened again, appending, by the first record a worker writes."""
    logging = sys.modules.get("logging")
    if logging is None:
        return
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.FileHandler) and h.stream is not None:
                _kept.append(h.stream)
                h.stream = None
                h.mode = "a"


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
        if os.environ.pop("PROCPOOL_PROCESS", None):
            spare = bool(os.environ.pop("PROCPOOL_SPARE", None))
            from . import process

            code = process._child_main(spare)
        else:
            from . import _bootstrap, _core

            _bootstrap.lazy_main(_current.get("main"))
            code = _core._serve_worker()
        for f in (sys.stdout, sys.stderr):  # before the exit, which flushes nothing
            try:
                if f is not None:
                    f.flush()
            except Exception:
                pass
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
    if "argv" in prep:  # the main module, run again in a child, often reads it
        sys.argv[:] = prep["argv"]
    if "authkey" in prep:  # the parent's, for its Manager proxies and Listeners
        import multiprocessing

        multiprocessing.current_process().authkey = prep["authkey"]
    try:
        os.chdir(prep["cwd"])
    except OSError:
        pass


#: ``(key, environment, prep)``: the last :func:`prep`, and what it was made from.
_prep_cache = None


def prep() -> bytes:
    """What a worker of this process needs to look like it: ``sys.argv`` (as ``spawn``
    passes it), ``sys.path``, the working directory, the environment and
    ``multiprocessing``'s authentication key (as of the pool's creation).

    The last answer is given again while none of these changed and no module was
    loaded or dropped (the environment compared as ``os.environ`` keeps it, without
    decoding it again)."""
    global _prep_cache
    import multiprocessing

    from ._bootstrap import main_info

    key = (
        list(sys.path),
        list(getattr(sys, "argv", ())),
        os.getcwd(),
        bytes(multiprocessing.current_process().authkey),
        main_info(),
        len(sys.modules),
    )
    data = getattr(os.environ, "_data", None)
    c = _prep_cache
    if c is not None and data is not None and c[0] == key and c[1] == data:
        return c[2]
    out = pickle.dumps(
        {
            "sys_path": key[0],
            "argv": key[1],
            "cwd": key[2],
            "environ": dict(os.environ),
            "authkey": key[3],
            "main": key[4],
            "preload": preload_list(),
        },
        protocol=5,
    )
    if data is not None:
        _prep_cache = (key, dict(data), out)
    return out


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
