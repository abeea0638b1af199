"""The JSON log chain's fast parts: orjson rendering as json.dumps did, and the timestamp."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import re

import structlog

from observable_tasks.telemetry import configure_logging
from observable_tasks.telemetry._render import UtcIsoTimestamper, dumps


def test_dumps_is_compact_ascii_json() -> None:
    record = {"event": "task.completed", "task_name": "café ☕", "n": 1, "x": 0.25}
    text = dumps(record)
    assert text.isascii()
    assert json.loads(text) == record
    assert dumps({"a": 1, "b": [1, 2]}) == '{"a":1,"b":[1,2]}'


def test_what_orjson_refuses_falls_back_to_json() -> None:
    # Keys that are not strings, integers beyond 64 bits: json.dumps takes them, so must we.
    assert json.loads(dumps({1: "one", "big": 2**70})) == {"1": "one", "big": 2**70}
    deep: list[object] = []
    for _ in range(300):  # deeper than orjson nests
        deep = [deep]
    assert dumps({"deep": deep}).count("[") == 301


def test_unknown_types_go_to_default_dataclass_fields_hidden_from_repr_stay_hidden() -> None:
    @dataclasses.dataclass
    class Login:
        user: str
        password: str = dataclasses.field(repr=False, default="hunter2")

    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    text = dumps({"login": Login("ann"), "when": when, "s": {1}}, default=repr)
    assert "hunter2" not in text
    assert json.loads(text) == {"login": repr(Login("ann")), "when": repr(when), "s": "{1}"}


def test_timestamp_is_utc_iso_with_microseconds() -> None:
    stamp = UtcIsoTimestamper()
    for _ in range(3):
        before = datetime.datetime.now(datetime.timezone.utc)
        value = stamp(None, "info", {})["timestamp"]
        after = datetime.datetime.now(datetime.timezone.utc)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", value)
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        assert before - datetime.timedelta(milliseconds=1) <= parsed <= after


def test_configure_logging_json_lines_render_through_orjson() -> None:
    out = io.StringIO()
    saved = structlog.get_config()
    try:
        configure_logging(json=True, stream=out, cache_loggers=False)
        structlog.get_logger("t").info("hello", name="ü", big=2**70)
    finally:
        structlog.configure(**saved)
    line = out.getvalue()
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert line.isascii()
    record = json.loads(line)
    assert (record["event"], record["name"], record["big"]) == ("hello", "ü", 2**70)
    assert record["level"] == "info"
    assert record["timestamp"].endswith("Z")


async def test_task_lines_name_their_spans_trace_flags_without_a_lookup() -> None:
    from telemetry_kit import instrumented

    from observable_tasks.telemetry.logs import add_trace_context

    async def work() -> int:
        return 1

    with instrumented() as kit:
        task = await kit.manager.create_task(work)
        await kit.manager.wait_for_task(task.id)
        (send,) = kit.send_spans()
        (process,) = kit.process_spans()
        (created,) = kit.events("task.created")
        (completed,) = kit.events("task.completed")
    assert created["span_id"] == format(send.context.span_id, "016x")
    assert created["trace_flags"] == format(send.context.trace_flags, "02x")
    assert completed["span_id"] == format(process.context.span_id, "016x")
    assert completed["trace_flags"] == format(process.context.trace_flags, "02x")
    # An event naming all three is left alone (no span is current here).
    given = {"trace_id": "a" * 32, "span_id": "b" * 16, "trace_flags": "01"}
    assert add_trace_context(None, "info", dict(given)) == given
    assert add_trace_context(None, "info", {"x": 1}) == {"x": 1}
