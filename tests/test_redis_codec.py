"""What crosses processes in the Redis backend: refusals with clear messages, the function
allow-list, record encoding, client URLs and their redaction (no Redis server needed)."""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from observable_tasks import TaskError, TaskStatus
from observable_tasks.backends.redis import (
    FunctionNotAllowedError,
    FunctionPolicy,
    JsonSerializer,
    SerializationError,
    Serializer,
    TaskRecord,
    connect,
    decode_record,
    encode_record,
    function_ref,
    redact,
)
from observable_tasks.backends.redis.codec import encode_payload
from observable_tasks.backends.redis.records import error_info


def portable(x: int) -> int:
    return x


class Holder:
    def method(self) -> None: ...

    @classmethod
    def cm(cls) -> None: ...

    @staticmethod
    def sm() -> None: ...


def _bad_decorator(func: Any) -> Any:
    def wrapper(*a: Any) -> Any:
        return func(*a)

    return wrapper


@_bad_decorator
def decorated(x: int) -> int:
    return x


def test_function_ref_of_portable_functions() -> None:
    assert function_ref(portable) == f"{__name__}:portable"
    assert function_ref(Holder.cm) == f"{__name__}:Holder.cm"
    assert function_ref(Holder.sm) == f"{__name__}:Holder.sm"
    assert function_ref(Holder.method) == f"{__name__}:Holder.method"  # unbound: a function
    assert function_ref(math.sqrt) == "math:sqrt"


def _nested() -> Any:
    def inner() -> None: ...

    return inner


class _CallMe:
    def __call__(self) -> None: ...


@pytest.mark.parametrize(
    ("func", "why"),
    [
        (lambda: None, "lambda"),
        (_nested(), "inside another function"),
        (Holder().method, "bound to an instance"),
        (functools.partial(portable, 1), "partial"),
        (_CallMe(), "_CallMe object"),
        (decorated, "functools.wraps"),
    ],
    ids=["lambda", "nested", "bound", "partial", "callable-object", "no-wraps"],
)
def test_function_ref_refuses_what_cannot_cross_processes(func: Any, why: str) -> None:
    with pytest.raises(TypeError, match="cannot run in another process") as info:
        function_ref(func)
    assert why in str(info.value)


def renamed() -> None: ...


renamed.__qualname__ = "not_here"


def test_function_ref_refuses_a_name_that_does_not_lead_back() -> None:
    with pytest.raises(TypeError, match=f"{__name__}:not_here does not lead back"):
        function_ref(renamed)


def test_function_ref_refuses_main_and_non_callables(monkeypatch: pytest.MonkeyPatch) -> None:
    def f() -> None: ...

    f.__qualname__ = "f"
    monkeypatch.setattr(f, "__module__", "__main__")
    with pytest.raises(TypeError, match="__main__"):
        function_ref(f)
    with pytest.raises(TypeError, match="not callable"):
        function_ref(42)  # type: ignore[arg-type]


@pytest.fixture
def myapp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package ``myapp_ot`` with ``tasks.send``; and ``evil_ot``, which records its import."""
    pkg = tmp_path / "myapp_ot"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import os\nfrom subprocess import run\n")
    (pkg / "tasks.py").write_text("def send(to):\n    return 'sent ' + to\n")
    (tmp_path / "evil_ot.py").write_text("import builtins\nbuiltins.EVIL_OT_IMPORTED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("myapp_ot", "myapp_ot.tasks", "evil_ot"):
        sys.modules.pop(name, None)


def test_policy_resolves_registered_functions_and_allowed_packages(myapp: Path) -> None:
    policy = FunctionPolicy(allow_modules=["myapp_ot"], functions=[portable])
    assert policy.resolve(f"{__name__}:portable") is portable
    assert policy.register(Holder.cm) == f"{__name__}:Holder.cm"
    assert policy.resolve(f"{__name__}:Holder.cm") == Holder.cm
    assert policy.resolve("myapp_ot.tasks:send")("x") == "sent x"


@pytest.mark.parametrize(
    "ref",
    [
        "os:system",
        "evil_ot:anything",
        "myapp_otx.tasks:send",  # a prefix of the name is not the package
        "myapp_ot:os.system",  # reached through a module the package imported
        "myapp_ot:run",  # imported from subprocess: not defined in the package
        "myapp_ot.tasks:send.__globals__",
        "myapp_ot.tasks:nope",
        "myapp_ot.tasks",
        "myapp_ot.tasks:send; rm -rf /",
        "",
    ],
)
def test_policy_refuses_everything_else(myapp: Path, ref: str) -> None:
    policy = FunctionPolicy(allow_modules=["myapp_ot"])
    before = set(sys.modules)
    with pytest.raises(FunctionNotAllowedError):
        policy.resolve(ref)
    assert not hasattr(__builtins__, "EVIL_OT_IMPORTED")
    assert "evil_ot" not in sys.modules
    assert set(sys.modules) - before <= {"myapp_ot", "myapp_ot.tasks"}


def test_policy_message_says_why(myapp: Path) -> None:
    policy = FunctionPolicy(allow_modules=["myapp_ot"])
    with pytest.raises(FunctionNotAllowedError, match=r"'os:system' is not allowed.*myapp_ot"):
        policy.resolve("os:system")
    assert not policy.allows("os:system")
    assert policy.allows("myapp_ot.tasks:send")


def test_json_serializer_is_a_serializer_and_refuses_nan() -> None:
    ser = JsonSerializer()
    assert isinstance(ser, Serializer)
    assert ser.loads(ser.dumps({"é": [1, 2.5, None]})) == {"é": [1, 2.5, None]}
    with pytest.raises(ValueError, match="Out of range"):
        ser.dumps(float("nan"))


def test_payload_errors_name_the_argument() -> None:
    ser = JsonSerializer()
    assert ser.loads(encode_payload((1, "a"), {"k": [1]}, ser)) == [[1, "a"], {"k": [1]}]
    with pytest.raises(SerializationError, match=r"argument 'tags' of task send \(set\)"):
        encode_payload((1,), {"tags": {1, 2}}, ser, task="task send")
    with pytest.raises(
        SerializationError, match=r"positional argument 1 of task \(float\).*Out of range"
    ):
        encode_payload((1, float("nan")), {}, ser)
    with pytest.raises(TypeError):  # SerializationError is a TypeError
        encode_payload((object(),), {}, ser)


def test_record_round_trip() -> None:
    rec = TaskRecord(
        id="a" * 32,
        func="myapp:f",
        name="job",
        args=[1, "x"],
        kwargs={"k": {"n": None}},
        status=TaskStatus.RUNNING,
        progress=42.5,
        attempts=2,
        max_attempts=3,
        timeout=1.5,
        ttl=3600.0,
        created=1700000000.123456,
        started=1700000001.5,
        worker="host:1",
        msg="1-0",
        cancel=True,
        headers={"traceparent": "00-x-y-01"},
        result={"ok": 1},
        error={"type": "E", "message": "m", "code": None, "details": {}},
    )
    fields = encode_record(rec)
    assert all(isinstance(v, bytes) for v in fields.values())
    assert decode_record(fields) == rec
    as_text = {k: v.decode() for k, v in fields.items()}
    assert decode_record(as_text) == rec  # a decode_responses=True client works too
    done = TaskRecord(id="b", func="m:f", status=TaskStatus.COMPLETED, args=[1])
    assert "payload" not in encode_record(done)  # finished records carry no arguments


def test_record_result_that_cannot_be_encoded_is_named() -> None:
    rec = TaskRecord(id="b", func="m:f", name="export", result={1, 2})
    with pytest.raises(SerializationError, match="the result of task export"):
        encode_record(rec)


def test_error_info() -> None:
    info = error_info(TaskError("no stock", code="OUT_OF_STOCK", details={"sku": 1}))
    assert info == {
        "type": "TaskError",
        "message": "no stock",
        "code": "OUT_OF_STOCK",
        "details": {"sku": 1},
    }
    odd = error_info(TaskError("x", details={"when": object()}))
    assert set(odd["details"]) == {"repr"}
    assert error_info(ValueError("bad"))["code"] is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:s3cret@h/1", "redis://user:***@h/1"),
        ("redis://s3cret@h", "redis://***@h"),
        ("rediss://h:6380/0?password=s3cret&db=2", "rediss://h:6380/0?password=***&db=2"),
        ("unix:///run/r.sock?db=1&password=s3cret", "unix:///run/r.sock?db=1&password=***"),
        ("redis://h:6379", "redis://h:6379"),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected
    assert "s3cret" not in redact(url)


async def test_connect_accepts_urls_clients_and_pools() -> None:
    client = connect("redis://:pw@127.0.0.1:1/0")
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["password"], kwargs["decode_responses"]) == ("pw", False)
    await client.aclose()
    tls = connect("rediss://127.0.0.1:1/0")
    assert tls.connection_pool.connection_class.__name__ == "SSLConnection"
    await tls.aclose()
    blocking = connect("redis://127.0.0.1:1/0", max_connections=7)
    assert isinstance(blocking.connection_pool, aioredis.BlockingConnectionPool)
    assert blocking.connection_pool.max_connections == 7
    await blocking.aclose()
    ready = aioredis.Redis()
    assert connect(ready) is ready
    await ready.aclose()
    pool = aioredis.ConnectionPool(host="127.0.0.1", port=1)
    assert connect(pool).connection_pool is pool
    await pool.aclose()


def test_connect_refuses_other_urls_without_leaking_the_password() -> None:
    with pytest.raises(ValueError, match="not a Redis URL") as info:
        connect("http://:s3cret@h/")
    assert "s3cret" not in str(info.value)
    with pytest.raises(TypeError):
        connect(42)  # type: ignore[arg-type]
