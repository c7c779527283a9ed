"""A value never comes back as something else, and objects that carry the parent's
identity work in a worker (issue 17 items 6 and 8).

cloudpickle (procpool's by-value pickler) would send an open file as an ``io.StringIO``
of its contents and a memoryview as ``bytes``; procpool refuses both, as the standard
pickler does (``MaybeEncodingError`` for a result, the pickling error for an argument).
A ``Manager`` proxy needs the parent's ``authkey`` in the worker; a function of a module
loaded from a file path through importlib goes by value (a worker cannot import it by
name). Each test runs on procpool and on the standard library (the oracle)."""

import importlib.util
import io
import multiprocessing
import os
import socket
import sys
import threading

import pytest

from multiprocessing.pool import MaybeEncodingError


def open_file(path):
    return open(path)


def ident(x):
    return x


def kind_of(x):
    return type(x).__name__


def gen():
    yield 1


def make_gen(_):
    return gen()


def make_lock(_):
    return threading.Lock()


def make_socket(_):
    return socket.socket()


def _skip_stdlib_socket(pool, socket_case):
    if socket_case and type(pool).__module__.startswith("multiprocessing"):
        # The stdlib's pickler passes a socket by duplicating its descriptor through the
        # parent's resource sharer; procpool has none and refuses it.
        pytest.skip("multiprocessing passes sockets by descriptor; procpool refuses them")


def put(d, key):
    d[key] = key * 2
    return sorted(d.keys())


@pytest.mark.parametrize("factory", [open_file, make_gen, make_lock, make_socket])
def test_an_unpicklable_result_is_refused_never_substituted(make_pool, factory, tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("contents")
    pool = make_pool(2)
    _skip_stdlib_socket(pool, factory is make_socket)
    with pytest.raises(MaybeEncodingError):
        pool.apply(factory, (str(path),))
    with pytest.raises(MaybeEncodingError):
        pool.map(factory, [str(path)] * 3)
    assert pool.map(ident, [1, 2]) == [1, 2]  # the pool goes on


def test_an_open_file_result_fails_the_executor_call_with_the_pickling_error(
    make_executor, tmp_path
):
    path = tmp_path / "f.txt"
    path.write_text("contents")
    ex = make_executor(2)
    exc = ex.submit(open_file, str(path)).exception(timeout=20)
    assert isinstance(exc, TypeError) and not isinstance(exc, MaybeEncodingError), exc
    assert ex.submit(ident, 3).result(timeout=20) == 3


@pytest.mark.parametrize("what", ["file", "memoryview", "generator", "lock", "socket"])
def test_an_unpicklable_argument_is_refused(make_pool, what, tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("contents")
    with open(path) as f, socket.socket() as s:
        arg = {
            "file": f,
            "memoryview": memoryview(b"abc"),
            "generator": gen(),
            "lock": threading.Lock(),
            "socket": s,
        }[what]
        pool = make_pool(2)
        _skip_stdlib_socket(pool, what == "socket")
        with pytest.raises(TypeError):
            pool.apply(kind_of, (arg,))
        with pytest.raises(TypeError):
            pool.map(kind_of, [1, arg, 3], chunksize=1)
        assert pool.apply(kind_of, (io.StringIO("x"),)) == "StringIO"  # a value that pickles


@pytest.mark.limit(60)
def test_a_manager_proxy_works_in_a_worker(make_pool):
    with multiprocessing.Manager() as manager:
        d = manager.dict()
        pool = make_pool(2)
        assert pool.apply(put, (d, "a")) == ["a"]
        pool.starmap(put, [(d, "b"), (d, "c")])
        assert dict(d) == {"a": "aa", "b": "bb", "c": "cc"}


def test_a_function_of_a_module_loaded_from_a_path_runs_in_a_worker(make_pool, tmp_path):
    src = tmp_path / "not_on_sys_path.py"
    src.write_text("FACTOR = 3\n\ndef triple(x):\n    return FACTOR * x\n")
    name = "procpool_test_loaded_by_path"
    spec = importlib.util.spec_from_file_location(name, src)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        pool = make_pool(2)
        if pool.__class__.__module__.startswith("multiprocessing"):
            # The forked workers of the stdlib inherit the module itself.
            assert pool.map(module.triple, [1, 2]) == [3, 6]
            return
        assert pool.map(module.triple, [1, 2, 3]) == [3, 6, 9]
        assert pool.apply(module.triple, (5,)) == 15
    finally:
        del sys.modules[name]


def worker_view(name):
    import os

    return os.getcwd(), os.environ.get(name), bytes(multiprocessing.current_process().authkey)


@pytest.mark.procpool_only
def test_each_pool_takes_the_parent_s_settings_of_its_creation(pp, tmp_path, monkeypatch):
    """Workers have the environment, working directory and authkey the parent had when
    their pool was created, through each change (the template applies them once)."""
    name = "PROCPOOL_TEST_SETTING"
    monkeypatch.setenv(name, "one")
    with pp.Pool(1, maxtasksperchild=1) as pool:
        views = pool.map(worker_view, [name] * 3, chunksize=1)  # three workers
    assert {v[:2] for v in views} == {(os.getcwd(), "one")}
    assert {v[2] for v in views} == {bytes(multiprocessing.current_process().authkey)}
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(name)
    with pp.Pool(1) as pool:
        assert pool.apply(worker_view, (name,))[:2] == (str(tmp_path), None)
    monkeypatch.setenv(name, "two")
    with pp.Pool(1) as pool:
        assert pool.apply(worker_view, (name,))[:2] == (str(tmp_path), "two")
