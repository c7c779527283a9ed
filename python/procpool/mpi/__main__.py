"""``mpirun -n N python -m procpool.mpi script.py [args]``: rank 0 runs the script, the
other ranks serve its MPI pools as agents (see :mod:`procpool.mpi`).

Also ``-m module [args]`` (run a module as ``__main__``) and ``-c code [args]``.
"""

import os
import runpy
import sys
import types

USAGE = """\
usage: mpirun -n N python -m procpool.mpi script.py [args...]
       mpirun -n N python -m procpool.mpi -m module [args...]
       mpirun -n N python -m procpool.mpi -c code [args...]

Rank 0 runs the program as __main__; ranks 1..N-1 serve as agents running the workers
of its procpool.Pool(mpi=True) and ProcessPoolExecutor(mpi=True). Without mpirun, the
program runs alone and its MPI pools are local.
"""


def _parse(argv):
    if not argv or argv[0] in ("-h", "--help"):
        return None
    if argv[0] in ("-m", "-c"):
        if len(argv) < 2:
            raise SystemExit(f"procpool.mpi: {argv[0]} needs an argument\n\n{USAGE}")
        return {"-m": "module", "-c": "code"}[argv[0]], argv[1], argv[2:]
    if argv[0].startswith("-"):
        raise SystemExit(f"procpool.mpi: unknown option {argv[0]}\n\n{USAGE}")
    return "path", argv[0], argv[1:]


def _stand_in_main(kind, target):
    """On an agent: a ``__main__`` that tells workers where the program's main module is
    (``_bootstrap.main_info``), without running it here."""
    main = types.ModuleType("__main__")
    main.__spec__ = None
    if kind == "path":
        main.__file__ = os.path.abspath(target)
    elif kind == "module":
        import importlib.util

        main.__spec__ = importlib.util.find_spec(target)
    sys.modules["__main__"] = main


def main(argv=None):
    parsed = _parse(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        print(USAGE, end="")
        return 0
    kind, target, rest = parsed
    if kind == "path":
        if not os.path.exists(target):
            raise SystemExit(f"procpool.mpi: can't open file {target!r}: no such file")
        # As `python script.py`: the script's directory first on the path.
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        sys.argv = [target, *rest]
    elif kind == "module":
        sys.path[0] = os.getcwd()
        sys.argv = [target, *rest]
    else:
        sys.path[0] = ""
        sys.argv = ["-c", *rest]

    from . import _init, launched

    if launched():
        _stand_in_main(kind, target)
        _init()  # ranks other than 0 serve here and never return
    if kind == "path":
        runpy.run_path(target, run_name="__main__")
    elif kind == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        main_module = types.ModuleType("__main__")
        sys.modules["__main__"] = main_module
        exec(compile(target, "<string>", "exec"), main_module.__dict__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
