from types import CodeType
from typing import Any

CREATED: int
SUSPENDED: int
SUSPENDED_YIELD_FROM: int
EXECUTING: int
COMPLETED: int
CLEARED: int
PY_VERSION_HEX: int

def read(
    gen: object, /
) -> tuple[int, int, tuple[Any, ...], int, BaseException | None, Any, CodeType | None]: ...
def write(
    gen: object,
    state: int,
    lasti: int,
    slots: tuple[Any, ...],
    nullmask: int,
    exc_value: BaseException | None,
    /,
) -> None: ...
def unwrap(obj: object, /) -> tuple[Any, Any, int]: ...
def discard(gen: object, /) -> None: ...
def is_iterator(obj: object, /) -> bool: ...
def reduce_dispatch(
    reducers: dict[type, Any],
    reachable: set[Any],
    prepared: dict[Any, Any],
    reduce_exception: Any,
    obj: object,
    /,
) -> Any: ...
