"""A worker's or process's start (private): the caller's main module, and the guard
against a main module that starts processes at import time.

Workers and processes see the caller's ``__main__`` as the ``spawn`` start method shows
it: the script is run again under the name ``__mp_main__`` (so its
``if __name__ == "__main__":`` block does not run), then stands as ``__main__``; functions
and classes defined there are found by name. A worker or process runs it when it first
needs a name from it (:func:`lazy_main`), so that one whose tasks never refer to
``__main__`` starts without running it. While that runs (and while a worker reads
its task), starting a pool or a process is the mark of a main module without that guard,
which would start processes without end: :func:`check` raises the stdlib's
``RuntimeError`` instead.
"""

from __future__ import annotations

import os
import sys
import types

#: True while this process imports the caller's main module or reads its task.
inheriting = False

#: The exception the caller's main module raised here, if it did: each task of this
#: worker fails with it (the parent sees it), instead of a confusing lookup error.
main_error = None

_ADVICE = """
        An attempt has been made to start a new process before the
        current process has finished its bootstrapping phase.

        This probably means that you are not using fork to start your
        child processes and you have forgotten to use the proper idiom
        in the main module:

            if __name__ == '__main__':
                freeze_support()
                ...

        The "freeze_support()" line can be omitted if the program
        is not going to be frozen to produce an executable.

        To fix this issue, refer to the "Safe importing of main module"
        section in https://docs.python.org/3/library/multiprocessing.html
        """


def check() -> None:
    """Raises the stdlib's ``RuntimeError`` when this process is still starting up (see
    the module docs)."""
    if inheriting:
        raise RuntimeError(_ADVICE)
    mp = sys.modules.get("multiprocessing.process")
    if mp is not None and getattr(mp.current_process(), "_inheriting", False):
        raise RuntimeError(_ADVICE)


def main_info() -> dict:
    """How a child finds the caller's main module (as ``spawn`` records it): a module
    name (``python -m``) or a script's path; nothing for the REPL, ``-c``, a notebook or
    a program read from standard input (``python - < prog.py``, whose ``__file__`` is
    ``'<stdin>'``): none of those has a file to run again, so its functions go by value."""
    m = sys.modules.get("__main__")
    if m is None:
        return {}
    spec = getattr(m, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None and name != "__main__":
        return {"name": name}
    path = getattr(m, "__file__", None)
    if path and path.startswith("<") and path.endswith(">"):
        return {}  # '<stdin>' and the like: not a file
    if path and os.path.basename(path) != "ipython":
        if not os.path.isabs(path):
            path = os.path.join(os.getcwd(), path)
        return {"path": os.path.normpath(path)}
    return {}


#: ``(path, mtime_ns, size, code)``: the caller's main script, compiled once by the
#: template (see ``_template._compile_main``) for the children it forks.
main_code = None


def _cached_code(path: str):
    """The compiled code of the script at ``path``, if the template compiled this very
    file (same modification time and size)."""
    c = main_code
    if c is None or c[0] != path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return c[3] if (st.st_mtime_ns, st.st_size) == c[1:3] else None


def _is_script(path: str) -> bool:
    """Whether ``runpy.run_path`` would compile ``path`` as a source file (not a zip
    file or a directory with a ``__main__``)."""
    return path.endswith(".py") and os.path.isfile(path)


def _script_code(path: str):
    """The code of the script at ``path``: the template's, or compiled here; None for
    what is not a plain script."""
    code = _cached_code(path)
    if code is None and _is_script(path):
        import io

        with io.open_code(os.path.abspath(path)) as f:
            # dont_inherit: none of this module's __future__ flags (as runpy compiles).
            code = compile(f.read(), path, "exec", dont_inherit=True)
    return code


def compile_main(info: dict) -> None:
    """In the template: compiles the caller's main script (when it is a plain source
    file, as ``runpy.run_path`` would), so that each child that needs its main module
    runs it without reading and compiling it again."""
    global main_code
    path = (info or {}).get("path")
    if not path or (main_code is not None and main_code[0] == path):
        return
    main_code = (path, -1, -1, None)  # tried once, whatever comes of it
    try:
        if not _is_script(path):
            return  # a zip file or a directory: runpy's own way
        st = os.stat(path)
        code = _script_code(path)
    except BaseException:  # the child will meet the error itself, and report it
        return
    main_code = (path, st.st_mtime_ns, st.st_size, code)


def importable_main() -> bool:
    """Whether children can import the caller's main module (see :func:`main_info`)."""
    return bool(main_info())


def load_main(info: dict, quiet: bool = False) -> None:
    """In a child: runs the caller's main module as ``__mp_main__`` and makes it
    ``__main__``; an exception it raises is kept in :data:`main_error` (and printed)."""
    global inheriting, main_error
    if not info:
        return
    import runpy

    inheriting = True
    try:
        name = info.get("name")
        if name is not None:
            if name == "__main__" or name.endswith(".__main__"):
                return  # a package's __main__: nothing to find there (as spawn)
            content = runpy.run_module(name, run_name="__mp_main__", alter_sys=True)
        else:
            path = info["path"]
            run = getattr(runpy, "_run_module_code", None)
            code = _script_code(path) if run is not None else None
            if code is not None:
                # What run_path does with a script (less importing pkgutil, and reading
                # and compiling the script when the template did).
                content = run(code, None, "__mp_main__", pkg_name="", script_name=path)
            else:
                content = runpy.run_path(path, run_name="__mp_main__")
        module = types.ModuleType("__mp_main__")
        module.__dict__.update(content)
        sys.modules["__main__"] = sys.modules["__mp_main__"] = module
    except BaseException as e:  # the module's own failure, reported with each task
        main_error = e
        if not quiet:
            import traceback

            traceback.print_exc()
    finally:
        inheriting = False


class _LazyMain(types.ModuleType):
    """Stands for the caller's main module in a pool worker until a name is looked up
    in it: then the module is run (see :func:`load_main`) and the name found there."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        info = self.__dict__.get("_procpool_info")
        if sys.modules.get("__main__") is self:
            outer = inheriting
            load_main(info, quiet=True)
            _restore(outer)
        if main_error is not None:
            raise main_error
        real = sys.modules.get("__main__")
        if real is self or real is None:
            raise AttributeError(name)
        return getattr(real, name)


def _restore(value):
    global inheriting
    inheriting = value


def lazy_main(info: dict) -> None:
    """In a pool worker: the caller's main module, run on first use (see the module
    docs)."""
    if not info:
        return
    m = _LazyMain("__mp_main__")
    m._procpool_info = info
    sys.modules["__main__"] = sys.modules["__mp_main__"] = m
