"""The console's admin API, page and event stream, served by uvicorn over TCP, on both
backends (memory, and Redis with a real redis-server)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import uvicorn
from helpers import LiveServer, free_port, wait_until
from nexios import NexiosApp
from nexios.http import Request, Response

from observable_tasks import (
    RetryPolicy,
    TaskConfig,
    current_task,
    setup_tasks,
    update_task_progress,
)
from observable_tasks.console import ConsoleOptions

XSS = "<img src=x onerror=alert(1)>"
GATES: dict[str, asyncio.Event] = {}
# Retries, delayed starts and keys: both backends.
RETRYING_BACKENDS = pytest.mark.parametrize("serve", ["memory", "redis"], indirect=True)


async def double(value: int) -> int:
    return value * 2


async def fail(message: str) -> None:
    raise ValueError(message)


async def flaky(message: str) -> str:
    """Fails its first attempt (a ValueError its policy retries), then succeeds."""
    task = current_task()
    if task is None or task.attempts <= 1:
        raise ValueError(message)
    return "second time lucky"


async def sleepy(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


async def stepwise(task_id: str, gate: str) -> str:
    await update_task_progress(task_id, 50.0)
    await GATES[gate].wait()
    return "done"


def make_app(backend: Any, **options: Any) -> NexiosApp:
    app = NexiosApp()
    options.setdefault("keepalive", 0.5)
    manager = setup_tasks(
        app,
        TaskConfig(shutdown_timeout=1.0),
        telemetry=False,
        backend=backend,
        console=ConsoleOptions(**options),
    )

    @app.post("/make")
    async def make(request: Request, response: Response) -> Any:
        body = await request.json
        kind = body.get("kind", "ok")
        ids = []
        for i in range(int(body.get("n", 1))):
            name = body.get("name", "job") + (f"-{i}" if body.get("n", 1) > 1 else "")
            if kind == "ok":
                task = await manager.create_task(double, i, name=name)
            elif kind == "fail":
                task = await manager.create_task(fail, "it broke <b>", name=name)
            elif kind == "sleep":
                task = await manager.create_task(sleepy, 30, name=name)
            elif kind == "flaky":
                policy = RetryPolicy(max_attempts=3, on=(ValueError,), backoff=0.5, jitter=False)
                task = await manager.create_task(flaky, "flaky <i>", name=name, retry=policy)
            elif kind == "later":
                task = await manager.create_task(
                    double, i, name=name, delay=30, key=body.get("key")
                )
            else:
                GATES[body["gate"]] = asyncio.Event()
                task = await manager.create_task(stepwise, gate=body["gate"], name=name)
            ids.append(task.id)
        if kind in ("ok", "fail"):
            for task_id in ids:
                await manager.wait_for_task(task_id, timeout=10)
        return {"ids": ids}

    @app.post("/release/{gate}")
    async def release(request: Request, response: Response, gate: str) -> Any:
        GATES[gate].set()
        return {"ok": True}

    return app


@pytest.fixture(params=["memory", "redis"])
def serve(
    request: pytest.FixtureRequest, live_server: Callable[[Any], LiveServer]
) -> Callable[..., LiveServer]:
    def start(**options: Any) -> LiveServer:
        backend: Any = None
        if request.param == "redis":
            from observable_tasks.backends.redis import RedisBackend

            url = request.getfixturevalue("redis_url")
            backend = RedisBackend(url, queue=secrets.token_hex(4), lease=2.0)
        return live_server(make_app(backend, **options))

    return start


def page_token(client: httpx.Client, base: str = "/console") -> str:
    page = client.get(f"{base}/")
    assert page.status_code == 200
    match = re.search(r'<meta name="console-token" content="([^"]+)">', page.text)
    assert match is not None
    return match.group(1)


def test_list_filters_search_cursor_pages_and_counts(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        ok = client.post("/make", json={"n": 12, "name": "Resize"}).json()["ids"]
        bad = client.post("/make", json={"kind": "fail", "name": "broken"}).json()["ids"]
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "5", **({"cursor": cursor} if cursor else {})}
            body = client.get("/console/api/tasks", params=params).json()
            seen += [t["id"] for t in body["tasks"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == (ok + bad)[::-1]  # newest first, each exactly once

        failed = client.get("/console/api/tasks", params={"status": "failed"}).json()["tasks"]
        assert [t["id"] for t in failed] == bad
        assert failed[0]["error_type"] == "ValueError"
        assert failed[0]["error"] == "it broke <b>"
        fn = f"{__name__}.double"
        by_fn = client.get("/console/api/tasks", params={"function": fn}).json()["tasks"]
        assert {t["id"] for t in by_fn} == set(ok)
        named = client.get("/console/api/tasks", params={"q": "resize-1"}).json()["tasks"]
        assert sorted(t["name"] for t in named) == ["Resize-1", "Resize-10", "Resize-11"]
        by_id = client.get("/console/api/tasks", params={"q": ok[3][:10]}).json()["tasks"]
        assert [t["id"] for t in by_id] == [ok[3]]
        assert client.get("/console/api/tasks", params={"status": "nope"}).status_code == 400
        assert client.get("/console/api/tasks", params={"limit": "0"}).status_code == 400
        assert client.get("/console/api/tasks", params={"cursor": "x"}).status_code == 400

        one = client.get(f"/console/api/tasks/{ok[0]}").json()
        assert one["status"] == "COMPLETED"
        assert one["name"] == "Resize-0"
        assert one["created_at"].endswith("Z")
        assert one["duration_s"] >= 0
        assert one["attempts"] == 1
        assert client.get("/console/api/tasks/" + "0" * 32).status_code == 404

        counts = client.get("/console/api/counts").json()
        assert counts["counts"]["COMPLETED"] == 12
        assert counts["counts"]["FAILED"] == 1
        assert counts["total"] == 13
        workers = client.get("/console/api/workers").json()
        assert workers["workers"]
        assert workers["workers"][0]["alive"] is True


def test_cancel_needs_the_token_and_the_same_origin(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        (task_id,) = client.post("/make", json={"kind": "sleep"}).json()["ids"]
        url = f"/console/api/tasks/{task_id}/cancel"
        assert client.post(url).status_code == 403  # no token
        token = page_token(client)  # also sets the cookie the token is checked against
        assert client.post(url, headers={"X-Console-Token": "wrong"}).status_code == 403
        evil = {"X-Console-Token": token, "Origin": "http://evil.example"}
        assert client.post(url, headers=evil).status_code == 403
        cross = {"X-Console-Token": token, "Sec-Fetch-Site": "cross-site"}
        assert client.post(url, headers=cross).status_code == 403
        assert client.get(url).status_code == 405
        assert client.get(f"/console/api/tasks/{task_id}").json()["status"] in (
            "PENDING",
            "RUNNING",
        )
        good = {"X-Console-Token": token, "Origin": server.url}
        answer = client.post(url, headers=good)
        assert answer.status_code == 200, answer.text
        assert answer.json()["cancelled"] is True
        assert answer.json()["task"]["status"] == "CANCELLED"
    with httpx.Client(base_url=server.url, timeout=10) as other:
        # a token from another browser's page (another cookie) does not work either
        assert other.post(url, headers=good).status_code == 403


def test_read_only_refuses_cancel(serve: Callable[..., LiveServer]) -> None:
    server = serve(read_only=True)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        (task_id,) = client.post("/make", json={"kind": "sleep"}).json()["ids"]
        token = page_token(client)
        answer = client.post(
            f"/console/api/tasks/{task_id}/cancel",
            headers={"X-Console-Token": token, "Origin": server.url},
        )
        assert answer.status_code == 405
        assert 'content="1"' in client.get("/console/").text  # the page hides Cancel


def _refused_everywhere(client: httpx.Client, **kwargs: Any) -> list[httpx.Response]:
    answers = [client.get(p, **kwargs) for p in ("/console", "/console/", "/console/api/tasks")]
    answers.append(client.get("/console/api/counts", **kwargs))
    with client.stream("GET", "/console/api/events", **kwargs) as stream:
        answers.append(stream)
    return answers


def test_basic_auth_guards_page_api_and_stream(serve: Callable[..., LiveServer]) -> None:
    server = serve(basic_auth=("admin", "s3cret:with colon"))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for answer in _refused_everywhere(client):
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"].startswith("Basic realm=")
        for answer in _refused_everywhere(client, auth=("admin", "wrong")):
            assert answer.status_code == 401
        good = client.get("/console/api/tasks", auth=("admin", "s3cret:with colon"))
        assert good.status_code == 200
        assert client.get("/console/", auth=("admin", "s3cret:with colon")).status_code == 200
        junk = {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()}
        assert client.get("/console/api/tasks", headers=junk).status_code == 401


def test_auth_hook_guards_page_api_and_stream(serve: Callable[..., LiveServer]) -> None:
    async def hook(request: Request) -> bool:
        return request.headers.get("x-admin") == "yes"

    server = serve(auth=hook)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for answer in _refused_everywhere(client):
            assert answer.status_code == 401
        assert client.get("/console/api/tasks", headers={"X-Admin": "yes"}).status_code == 200
        assert client.get("/console/", headers={"X-Admin": "yes"}).status_code == 200


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    kind, data = "", ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and kind:
            yield kind, json.loads(data) if kind == "task" else {}
            kind, data = "", ""


def test_stream_delivers_a_new_tasks_events_and_progress(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    gate = secrets.token_hex(3)
    with (
        httpx.Client(base_url=server.url, timeout=10) as client,
        client.stream("GET", "/console/api/events") as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == "retry: 500"  # the stream is open: events from now on
        (task_id,) = client.post("/make", json={"kind": "gate", "gate": gate}).json()["ids"]
        got: list[tuple[str, str, float]] = []
        for kind, view in _events(lines):
            if kind != "task" or view["id"] != task_id:
                continue
            got.append((view["event"], view["status"], view["progress"]))
            if view["event"] == "progress":
                client.post(f"/release/{gate}")
            if view["event"] == "finished":
                break
    assert got[0][0] == "created"  # the view is the task as it is now (it may run already)
    assert ("progress", "RUNNING", 50.0) in got
    assert got[-1] == ("finished", "COMPLETED", 50.0)


def test_views_of_plain_tasks_have_the_retry_fields(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        (task_id,) = client.post("/make", json={"n": 1}).json()["ids"]
        view = client.get(f"/console/api/tasks/{task_id}").json()
        assert view["attempts"] == 1
        assert isinstance(view["max_attempts"], int)
        assert view["max_attempts"] >= 1
        assert view["next_attempt_at"] is None
        assert view["key"] is None


@RETRYING_BACKENDS
def test_a_delayed_tasks_view_has_its_start_time_and_key(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        before = datetime.now(timezone.utc)
        (task_id,) = client.post("/make", json={"kind": "later", "key": "nightly <b>"}).json()[
            "ids"
        ]
        after = datetime.now(timezone.utc)
        view = client.get(f"/console/api/tasks/{task_id}").json()
        assert view["status"] == "PENDING"
        assert view["attempts"] == 0
        assert view["max_attempts"] == 3  # TaskConfig's default policy (it retries Retry only)
        assert view["key"] == "nightly <b>"  # data, as given
        assert view["error"] is None
        planned = view["next_attempt_at"]
        assert planned.endswith("Z")
        start = datetime.fromisoformat(planned.replace("Z", "+00:00"))
        slack = timedelta(milliseconds=1)  # the view rounds to milliseconds
        assert before + timedelta(seconds=30) - slack <= start <= after + timedelta(seconds=30)
        listed = client.get("/console/api/tasks", params={"status": "PENDING"}).json()["tasks"]
        assert [(t["id"], t["next_attempt_at"]) for t in listed] == [(task_id, planned)]


@RETRYING_BACKENDS
def test_stream_shows_a_retry(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    with (
        httpx.Client(base_url=server.url, timeout=10) as client,
        client.stream("GET", "/console/api/events") as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == "retry: 500"
        (task_id,) = client.post("/make", json={"kind": "flaky"}).json()["ids"]
        got: list[dict[str, Any]] = []
        for kind, view in _events(lines):
            if kind == "task" and view["id"] == task_id:
                got.append(view)
                if view["event"] == "finished":
                    break
        waiting = client.get(f"/console/api/tasks/{task_id}").json()
    kinds = [view["event"] for view in got]
    assert kinds == ["created", "started", "retrying", "started", "finished"]
    retrying = got[2]
    assert retrying["status"] == "PENDING"  # waiting for its second attempt (0.5 s)
    assert (retrying["attempts"], retrying["max_attempts"]) == (1, 3)
    assert retrying["next_attempt_at"] is not None
    assert retrying["next_attempt_at"] > retrying["created_at"]
    assert retrying["error_type"] == "ValueError"
    assert retrying["error"] == "flaky <i>"  # the last attempt's error, as text
    assert retrying["finished_at"] is None  # not finished: it waits for its next attempt
    assert retrying["duration_s"] is None
    final = got[-1]
    assert (final["status"], final["attempts"]) == ("COMPLETED", 2)
    assert final["next_attempt_at"] is None
    assert final["error"] is None
    assert waiting["attempts"] == 2


def test_stream_sends_keepalive_comments(serve: Callable[..., LiveServer]) -> None:
    server = serve(keepalive=0.2)
    with (
        httpx.Client(base_url=server.url, timeout=10) as client,
        client.stream("GET", "/console/api/events") as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == "retry: 500"
        assert next(line for line in lines if line) == ": keepalive"


def test_payloads_are_hidden_unless_enabled(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        (task_id,) = client.post("/make", json={"n": 1}).json()["ids"]
        view = client.get(f"/console/api/tasks/{task_id}").json()
        assert "result" not in view
        assert "args" not in view
        assert "kwargs" not in view
        (sleeping,) = client.post("/make", json={"kind": "sleep"}).json()["ids"]
        assert "args" not in client.get(f"/console/api/tasks/{sleeping}").json()
    shown = serve(show_payloads=True)
    with httpx.Client(base_url=shown.url, timeout=10) as client:
        (task_id,) = client.post("/make", json={"n": 1}).json()["ids"]
        view = client.get(f"/console/api/tasks/{task_id}").json()
        assert view["result"] == 0
        (sleeping,) = client.post("/make", json={"kind": "sleep"}).json()["ids"]
        view = client.get(f"/console/api/tasks/{sleeping}").json()
        assert view["args"] == [30]  # while it is pending or running
        assert view["result"] is None


def test_a_task_named_like_html_comes_back_as_json_text(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        (task_id,) = client.post("/make", json={"name": XSS}).json()["ids"]
        answer = client.get("/console/api/tasks", params={"q": "<img"})
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json()["tasks"][0]["name"] == XSS
        assert answer.json()["tasks"][0]["id"] == task_id
        page = client.get("/console/")
        assert XSS not in page.text  # the page never holds task data, only its script does


def test_page_has_token_no_external_urls_and_a_strict_csp(
    live_server: Callable[[Any], LiveServer],
) -> None:
    server = live_server(make_app(None, trace_url="http://localhost:16686/trace/{trace_id}"))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        page = client.get("/console")
        assert page.status_code == 200
        token = re.search(r'name="console-token" content="([^"]+)"', page.text)
        assert token is not None
        assert client.cookies.get("ot_console") == token.group(1)
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        script = client.get("/console/console.js")
        style = client.get("/console/console.css")
        assert script.headers["content-type"].startswith("text/javascript")
        assert style.headers["content-type"].startswith("text/css")
        for text in (page.text, script.text, style.text):
            assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), "external URL"
        assert ".innerHTML" not in script.text
        assert "insertAdjacentHTML" not in script.text
        assert 'role", "progressbar"' in script.text
        assert "aria-valuenow" in script.text
        assert '"Cancel"' in script.text
        schema = client.get("/openapi.json").json()
        assert not [p for p in schema.get("paths", {}) if p.startswith("/console")]


def test_in_schema_lists_the_api(live_server: Callable[[Any], LiveServer]) -> None:
    server = live_server(make_app(None, in_schema=True))
    paths = httpx.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    assert "/console/api/tasks" in paths
    assert "/console/" not in paths  # the page and its assets are no API


def test_trace_link_from_the_template(live_server: Callable[[Any], LiveServer]) -> None:
    from observable_tasks.console.views import trace_id_of
    from observable_tasks.task import Task

    task = Task("a" * 32, "t", "m.f")
    task.headers["traceparent"] = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    assert trace_id_of(task) == "ab" * 16
    task.headers["traceparent"] = "00-<script>-x-01"
    assert trace_id_of(task) is None


def test_works_under_a_root_path() -> None:
    app = make_app(None)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, root_path="/prefix", log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10, message="uvicorn to start")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            # the proxy strips /prefix; uvicorn --root-path /prefix puts it back in the scope
            page = client.get("/console/")
            assert page.status_code == 200, page.text
            assert 'name="console-base" content="/prefix/console"' in page.text
            assert 'src="/prefix/console/console.js"' in page.text
            assert page.headers["set-cookie"].lower().count("path=/prefix/console") == 1
            assert client.get("/console/api/tasks").status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_a_stream_ends_after_its_max_age(serve: Callable[..., LiveServer]) -> None:
    server = serve(keepalive=0.1, stream_max_age=0.5)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("GET", "/console/api/events") as stream:
            lines = list(stream.iter_lines())  # ends by itself: a shutdown is never held up
        assert lines[0] == "retry: 500"
        assert ": keepalive" in lines


def test_redis_stream_resumes_from_last_event_id(
    redis_url: str, live_server: Callable[[Any], LiveServer]
) -> None:
    from observable_tasks.backends.redis import RedisBackend

    backend = RedisBackend(redis_url, queue=secrets.token_hex(4), lease=2.0)
    server = live_server(make_app(backend))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("GET", "/console/api/events") as stream:
            lines = stream.iter_lines()
            assert next(lines) == "retry: 500"
            (task_id,) = client.post("/make", json={"n": 1}).json()["ids"]  # waits for the end
            last_id = next(line[4:] for line in lines if line.startswith("id: "))
        headers = {"Last-Event-ID": last_id}
        kinds = []
        with client.stream("GET", "/console/api/events", headers=headers) as stream:
            for kind, view in _events(stream.iter_lines()):
                if kind == "task" and view["id"] == task_id:
                    kinds.append(view["event"])
                    if view["event"] == "finished":
                        break
        assert kinds == ["started", "finished"]  # what came after the first (created)
        bad = client.get("/console/api/events", headers={"Last-Event-ID": "nope"})
        assert bad.status_code == 400
