"""prepare(): checking a call at creation time, task_id injection, sync vs async."""

from __future__ import annotations

import functools
import gc
import threading
import warnings
from typing import Any

import pytest

from observable_tasks.invocation import function_name, prepare


async def add(a: int, b: int = 1) -> int:
    return a + b


async def with_task_id(data: str, task_id: str) -> str:
    return f"{data}:{task_id}"


def sync_add(a: int, b: int) -> int:
    return a + b


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        return x * 3


async def test_async_function_runs_with_bound_arguments() -> None:
    inv = prepare(add, (2,), {"b": 5})
    assert inv.is_async
    assert not inv.wants_task_id
    assert await inv.start("t1") == 7


async def test_task_id_is_injected_when_declared_and_not_given() -> None:
    inv = prepare(with_task_id, (), {"data": "d"})
    assert inv.wants_task_id
    assert await inv.start("abc") == "d:abc"


async def test_explicit_task_id_keyword_is_respected() -> None:
    inv = prepare(with_task_id, (), {"data": "d", "task_id": "mine"})
    assert not inv.wants_task_id
    assert await inv.start("abc") == "d:mine"


async def test_explicit_task_id_positional_is_respected() -> None:
    inv = prepare(with_task_id, ("d", "mine"), {})
    assert not inv.wants_task_id
    assert await inv.start("abc") == "d:mine"


async def test_sync_function_runs_in_a_worker_thread() -> None:
    seen: list[int] = []

    def work(a: int) -> int:
        seen.append(threading.get_ident())
        return a * 2

    inv = prepare(work, (21,), {})
    assert not inv.is_async
    assert await inv.start("t") == 42
    assert seen
    assert seen[0] != threading.get_ident()


async def test_callable_object_with_async_call_and_partial() -> None:
    inv = prepare(AsyncCallable(), (2,), {})
    assert inv.is_async
    assert await inv.start("t") == 6

    part = prepare(functools.partial(add, 10), (), {"b": 2})
    assert part.is_async
    assert await part.start("t") == 12


async def test_builtin_without_signature_is_accepted() -> None:
    inv = prepare(max, ([3, 9, 4],), {})
    assert await inv.start("t") == 9


@pytest.mark.parametrize(
    ("func", "args", "kwargs", "match"),
    [
        (42, (), {}, "callable"),
        ("not a function", (), {}, "callable"),
        (add, (), {}, "cannot call"),  # missing a
        (add, (1, 2, 3), {}, "cannot call"),  # too many
        (add, (1,), {"c": 3}, "no parameter"),  # unknown keyword
        (add, (1,), {"nme": "typo"}, "nme"),
        (sync_add, (1,), {}, "cannot call"),
    ],
)
def test_bad_calls_raise_type_error(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        prepare(func, args, kwargs)


def test_var_keyword_functions_accept_any_keyword() -> None:
    async def flexible(**kwargs: Any) -> dict[str, Any]:
        return kwargs

    prepare(flexible, (), {"anything": 1})  # does not raise


def test_coroutine_object_is_rejected_without_a_never_awaited_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match="coroutine object"):
            prepare(add(1), (), {})
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_function_name_is_module_and_qualname() -> None:
    assert function_name(add) == f"{__name__}.add"
    assert function_name(functools.partial(add, 1)) == f"{__name__}.add"
    assert function_name(AsyncCallable()).endswith("AsyncCallable")


def _logged(func: Any) -> Any:
    """A typical decorator: every wrapper it makes shares one code object."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    return wrapper


@_logged
async def send_email(address: str) -> str:
    return address


@_logged
async def resize(path: str, to: int) -> str:
    return f"{path}@{to}"


async def test_decorated_functions_sharing_a_code_object_are_told_apart() -> None:
    first = prepare(send_email, ("a@b",), {})
    second = prepare(resize, ("x.png", 100), {})
    assert first.name.endswith("send_email")
    assert second.name.endswith("resize")
    assert await second.start("t") == "x.png@100"
    with pytest.raises(TypeError, match="cannot call"):
        prepare(send_email, ("a@b", 2), {})
