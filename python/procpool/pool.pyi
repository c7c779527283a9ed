import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")
_S = TypeVar("_S")
_IterT = TypeVar("_IterT", bound=IMapIterator[Any])
_PoolT = TypeVar("_PoolT", bound=Pool)

__all__ = [
    "Pool",
    "ApplyResult",
    "AsyncResult",
    "MapResult",
    "IMapIterator",
    "IMapUnorderedIterator",
    "cpu_count",
]

def cpu_count() -> int: ...

class ApplyResult(Generic[_T]):
    def __init__(
        self,
        pool: Pool,
        callback: Callable[[_T], object] | None,
        error_callback: Callable[[BaseException], object] | None,
    ) -> None: ...
    def ready(self) -> bool: ...
    def successful(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> None: ...
    def get(self, timeout: float | None = None) -> _T: ...
    def __class_getitem__(cls, item: Any) -> types.GenericAlias: ...

AsyncResult = ApplyResult

class MapResult(ApplyResult[list[_T]]): ...

class IMapIterator(Iterator[_T]):
    def __init__(self, pool: Pool, run: Any, source: Any) -> None: ...
    def __iter__(self: _IterT) -> _IterT: ...
    def next(self, timeout: float | None = None) -> _T: ...
    def __next__(self, timeout: float | None = None) -> _T: ...

class IMapUnorderedIterator(IMapIterator[_T]): ...

class Pool:
    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any | None = None,
        *,
        timeout: float | None = None,
        retries: int = 0,
        max_message_size: int | None = None,
        mpi: bool = False,
    ) -> None: ...
    @property
    def _processes(self) -> int: ...
    @property
    def _state(self) -> str: ...
    def pids(self) -> list[int]: ...
    def apply(
        self,
        func: Callable[..., _T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        *,
        timeout: float | None = None,
    ) -> _T: ...
    def apply_async(
        self,
        func: Callable[..., _T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        callback: Callable[[_T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
    ) -> ApplyResult[_T]: ...
    def map(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
    ) -> list[_T]: ...
    def map_async(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = None,
        callback: Callable[[list[_T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
    ) -> MapResult[_T]: ...
    def starmap(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
    ) -> list[_T]: ...
    def starmap_async(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[_T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
    ) -> MapResult[_T]: ...
    def imap(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
    ) -> IMapIterator[_T]: ...
    def imap_unordered(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
    ) -> IMapUnorderedIterator[_T]: ...
    def close(self) -> None: ...
    def __del__(self, _warn: Any = ...) -> None: ...
    def terminate(self) -> None: ...
    def join(self) -> None: ...
    def __enter__(self: _PoolT) -> _PoolT: ...
    def __exit__(self, exc_type: object, exc_val: object, exc_tb: object) -> None: ...
