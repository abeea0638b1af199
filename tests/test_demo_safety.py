"""The demo app facing hostile or careless clients: no 500s, no tracebacks, bounded resources.

A real uvicorn on loopback (``LiveServer``) serves the demo; every bad input must get a 4xx that
says why, and lookups must answer whatever a task returned.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import LiveServer, poll_task, wait_until

from observable_tasks import TaskConfig, TaskManager
from observable_tasks import demo as demo_module
from observable_tasks.demo import MAX_EXPORT_LIMIT, create_app

pytestmark = pytest.mark.e2e

LIMIT = 64 * 1024  # the body limit of this module's server


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-safety-data")


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[LiveServer]:
    config = TaskConfig(max_concurrent_tasks=50, default_timeout=300, shutdown_timeout=1)
    app = create_app(
        config, time_scale=0.01, data_dir=data_dir, max_body_bytes=LIMIT, keep_exports=3
    )

    @app.get("/boom")
    async def boom(request: Any, response: Any) -> Any:
        password = "hunter2-local"  # a local variable a debug page would show
        raise RuntimeError(f"secret-message {len(password)}")

    with LiveServer(app) as live:
        live.app = app  # type: ignore[attr-defined]
        live.settings = dict(demo_module._settings)  # type: ignore[attr-defined]
        yield live


@pytest.fixture(autouse=True)
def _module_server_settings(server: LiveServer) -> None:
    # The task functions read the settings of the last app created in this process; tests below
    # create other apps, so each test starts with those of this module's server.
    demo_module._settings.update(server.settings)  # type: ignore[attr-defined]


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def post_routes(server: LiveServer) -> list[str]:
    paths = []
    for route in server.app.get_all_routes():  # type: ignore[attr-defined]
        if "POST" in {m.upper() for m in route.methods}:
            paths.append(route.raw_path.replace("{task_id}", "some-id"))
    assert "/process-di" in paths
    assert "/simulate" in paths
    return sorted(paths)


def assert_clean(response: httpx.Response) -> None:
    text = response.text
    for leak in ("Traceback", 'File "', "hunter2", "secret-message", "secret-subject"):
        assert leak not in text, (response.status_code, text[:500])


# -- item 3: debug off ---------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [None, "text/html", "application/json", "*/*"])
def test_a_500_shows_no_traceback_and_no_locals(client: httpx.Client, accept: str | None) -> None:
    headers = {"accept": accept} if accept else {}
    if accept is None:
        client.headers.pop("accept", None)
    response = client.get("/boom", headers=headers)
    assert response.status_code == 500
    assert_clean(response)


def test_debug_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DEMO_DEBUG", raising=False)
    assert create_app(data_dir=tmp_path).debug is False
    assert create_app(data_dir=tmp_path, debug=True).debug is True
    monkeypatch.setenv("DEMO_DEBUG", "1")
    assert create_app(data_dir=tmp_path).debug is True


# -- item 4: bad bodies are 4xx with a message ------------------------------------------------


def test_deeply_nested_json_is_a_400_on_every_post_route(
    server: LiveServer, client: httpx.Client
) -> None:
    # 30,000 levels (60 KB, within this server's limit); 100,000 levels: the test below.
    deep_list = b"[" * 30_000 + b"]" * 30_000
    deep_obj = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    for path in post_routes(server):
        for body in (deep_list, deep_obj):
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400, (path, response.text[:300])
            assert "error" in response.json()
            assert_clean(response)
    # Nesting a little over the limit (but nowhere near Python's recursion limit) is refused too.
    too_deep = json.dumps(json.loads("[" * 65 + "]" * 65))
    assert client.post("/process", content=too_deep).status_code == 400
    ok = {"a": json.loads("[" * 60 + "1" + "]" * 60)}
    assert client.post("/process", json=ok).status_code == 200


def test_one_hundred_thousand_levels_deep_is_a_400_with_the_default_limit(
    tmp_path: Path,
) -> None:
    app = create_app(data_dir=tmp_path, time_scale=0.01)
    depth = 100_000
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        live.app = app  # type: ignore[attr-defined]
        for path in post_routes(live):
            response = http.post(path, content=b"[" * depth + b"]" * depth)
            assert response.status_code == 400, path
            assert "nested too deeply" in response.json()["error"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_numbers_are_a_400_on_every_post_route(
    server: LiveServer, client: httpx.Client, number: str
) -> None:
    before = {t["id"] for t in client.get("/tasks").json()}
    for path in post_routes(server):
        response = client.post(
            path, content=f'{{"a": {number}, "valid": true}}'.encode(),
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert response.status_code == 400, (path, response.text)
        assert "numbers must be finite" in response.json()["error"]
    assert {t["id"] for t in client.get("/tasks").json()} == before  # no task was created


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/send-bulk-emails", {"recipients": 5, "subject": "secret-subject", "body": "x"},
         "recipients must be a non-empty list"),
        ("/send-bulk-emails", {"recipients": [1, 2], "subject": "secret-subject", "body": "x"},
         "recipients must be a non-empty list"),
        ("/send-bulk-emails", {"recipients": "a@b.c", "subject": "secret-subject", "body": "x"},
         "recipients must be a non-empty list"),
        ("/send-bulk-emails", {"recipients": ["a@b.c"], "subject": 5, "body": "x"},
         "subject must be a string"),
        ("/simulate", {"outcome": ["x"]}, "unknown outcome"),
        ("/simulate", {"outcome": {"a": 1}}, "unknown outcome"),
        ("/process-file", {"file_path": "a\u0000b"}, "without NUL"),
        ("/process-file", {"file_path": "x" * 5000}, "at most 1024"),
        ("/export-data", {"format": ["csv"]}, "format must be a string"),
        ("/export-data", {"filters": [1]}, "filters must be a JSON object"),
        ("/export-data", {"filters": {"limit": "5"}}, "whole number"),
        ("/export-data", {"filters": {"limit": -1}}, "whole number"),
        ("/export-data", {"filters": {"limit": 2.5}}, "whole number"),
        ("/export-data", {"filters": {"limit": MAX_EXPORT_LIMIT + 1}}, "at most 100000"),
        ("/export-data", {"filters": {"limit": 2_000_000}}, "at most 100000"),
    ],
)  # fmt: skip
def test_bad_fields_are_a_400_that_says_why(
    client: httpx.Client, path: str, body: Any, message: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert_clean(response)


# -- item 4b: a lookup never 500s, whatever a task returned ---------------------------------


class Opaque:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    __repr__ = __str__


def _cycle() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("make", "check"),
    [
        (lambda: float("nan"), lambda r: r.startswith("<not JSON: float")),
        (lambda: {1, 2}, lambda r: r.startswith("<not JSON: set")),
        (Opaque, lambda r: r.startswith("<not JSON: Opaque")),
        (lambda: {"ok": 1, "bad": float("inf")}, lambda r: r["ok"] == 1 and "float" in r["bad"]),
        (_cycle, lambda r: r[0] == 1 and r[1].startswith("<not JSON: list")),
        (lambda: {(1, 2): "tuple key", 3: "int key"}, lambda r: r["3"] == "int key"),
    ],
)
def test_lookups_answer_whatever_a_task_returned(
    server: LiveServer, client: httpx.Client, make: Any, check: Any
) -> None:
    manager: TaskManager = server.app.state["task_manager"]  # type: ignore[attr-defined]

    async def returns_it() -> Any:
        return make()

    task = manager.create_task(returns_it, name="odd_result").result()
    final = poll_task(client, task.id)
    assert final["status"] == "COMPLETED"
    assert check(final["result"]), final
    result = client.get(f"/task-result/{task.id}")
    assert result.status_code == 200, result.text
    assert check(result.json()["result"])
    listing = client.get("/tasks")
    assert listing.status_code == 200


def test_a_failed_task_with_an_unprintable_error_is_still_answered(
    server: LiveServer, client: httpx.Client
) -> None:
    manager: TaskManager = server.app.state["task_manager"]  # type: ignore[attr-defined]

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("nope")

    async def fails() -> None:
        raise Unprintable()

    task = manager.create_task(fails, name="unprintable").result()
    final = poll_task(client, task.id)
    assert final["status"] == "FAILED"
    response = client.get(f"/task-result/{task.id}")
    assert response.status_code == 500  # the page's answer for a failed task, as JSON
    assert response.json()["error"] == "Task failed"
    assert_clean(response)


# -- item 5: limits ------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_by_content_length(client: httpx.Client) -> None:
    big = json.dumps({"data": "x" * LIMIT}).encode()
    for path in ("/process", "/process-di", "/simulate"):
        response = client.post(path, content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413, path
        assert f"larger than {LIMIT} bytes" in response.json()["error"]
    # Just under the limit is fine.
    fits = json.dumps({"data": "x" * (LIMIT - 100)}).encode()
    assert len(fits) <= LIMIT
    assert client.post("/process", content=fits).status_code == 200


def test_a_streamed_body_over_the_limit_is_a_413(client: httpx.Client) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"data": "'
        for _ in range(LIMIT // 1024 + 2):
            sent += 1024
            yield b"x" * 1024
        yield b'"}'

    response = client.post("/process", content=chunks())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]

    def small() -> Iterator[bytes]:
        yield b'{"streamed": '
        yield b"true}"

    ok = client.post("/process", content=small())
    assert ok.status_code == 200
    assert poll_task(client, ok.json()["task_id"])["result"]["data"] == {"streamed": True}


def test_max_body_bytes_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DEMO_MAX_BODY_BYTES", "100")
    app = create_app(data_dir=tmp_path, time_scale=0.01)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=10) as http:
        assert http.post("/process", json={"x": "y" * 100}).status_code == 413
        assert http.post("/process", json={"x": 1}).status_code == 200


def test_export_writes_off_the_event_loop_with_progress(
    server: LiveServer, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int | None] = []
    original = demo_module._write_csv_rows

    def spy(writer: Any, rows: list[dict[str, Any]]) -> None:
        threads.append(threading.current_thread().ident)
        original(writer, rows)

    monkeypatch.setattr(demo_module, "_write_csv_rows", spy)
    task_id = client.post("/export-data", json={"filters": {"limit": 12_000}}).json()["task_id"]
    seen: list[float] = []

    def finished() -> bool:
        body = client.get(f"/tasks/{task_id}/progress").json()
        seen.append(body["progress"])
        return body["status"] == "COMPLETED"

    wait_until(finished, timeout=30, message="the export")
    assert len(threads) == 3  # 12,000 rows in chunks of 5,000
    loop_thread = server.thread.ident
    assert loop_thread not in threads
    assert seen == sorted(seen)
    assert seen[-1] == 100.0


def test_the_largest_export_allowed_works(client: httpx.Client, data_dir: Path) -> None:
    task_id = client.post("/export-data", json={"filters": {"limit": MAX_EXPORT_LIMIT}}).json()[
        "task_id"
    ]
    result = poll_task(client, task_id, timeout=60)["result"]
    assert result["total_records"] == MAX_EXPORT_LIMIT
    with open(data_dir / "exports" / result["filename"]) as f:
        assert sum(1 for _ in f) == MAX_EXPORT_LIMIT + 1  # and the header


def test_only_the_newest_exports_are_kept(client: httpx.Client, data_dir: Path) -> None:
    names = []
    for fmt in ("csv", "json", "csv", "json", "csv"):
        task_id = client.post("/export-data", json={"format": fmt, "filters": {"limit": 3}})
        names.append(poll_task(client, task_id.json()["task_id"])["result"]["filename"])
    left = sorted(p.name for p in (data_dir / "exports").iterdir())
    assert left == sorted(names[-3:])  # keep_exports=3


def test_exports_and_a_private_data_dir_are_removed_at_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TaskConfig(shutdown_timeout=1)
    given = tmp_path / "given"
    app = create_app(config, time_scale=0.01, data_dir=given)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=10) as http:
        task_id = http.post("/export-data", json={"filters": {"limit": 3}}).json()["task_id"]
        poll_task(http, task_id)
        assert (given / "exports").is_dir()
    assert given.is_dir()  # the caller's folder stays
    assert not (given / "exports").exists()  # the exports the demo made go

    monkeypatch.delenv("DEMO_DATA_DIR", raising=False)
    app = create_app(config, time_scale=0.01)
    private = Path(app.state["demo_data_dir"])
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=10) as http:
        task_id = http.post("/process-file", json={"file_path": "sample.txt"}).json()["task_id"]
        assert poll_task(http, task_id)["status"] == "COMPLETED"
    assert not private.exists()


# -- item 6: a private data folder ----------------------------------------------------------


def test_a_planted_symlink_at_the_old_path_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    victim = tmp_path / "victim"
    tmp.mkdir()
    victim.mkdir()
    (tmp / "observable-tasks-demo").symlink_to(victim)  # planted by "another user"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.delenv("DEMO_DATA_DIR", raising=False)

    app = create_app(TaskConfig(shutdown_timeout=1), time_scale=0.01)
    data = Path(app.state["demo_data_dir"])
    assert data.resolve() != victim.resolve()
    assert victim.resolve() not in data.resolve().parents
    assert not data.is_symlink()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert data.stat().st_uid == os.getuid()
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=10) as http:
        fid = http.post("/process-file", json={"file_path": "sample.txt"}).json()["task_id"]
        assert poll_task(http, fid)["status"] == "COMPLETED"
        eid = http.post("/export-data", json={"filters": {"limit": 3}}).json()["task_id"]
        assert poll_task(http, eid)["status"] == "COMPLETED"
    assert list(victim.iterdir()) == []  # nothing read from or written to the planted target


# -- item 7: /simulate takes a display name ---------------------------------------------------


def test_simulate_takes_a_display_name(client: httpx.Client) -> None:
    name = "nightly report \u00e9 #7"
    task_id = client.post(
        "/simulate", json={"outcome": "complete", "seconds": 0.01, "name": name}
    ).json()["task_id"]
    poll_task(client, task_id)
    listing = {t["id"]: t for t in client.get("/tasks").json()}
    assert listing[task_id]["name"] == name
    longest = client.post("/simulate", json={"seconds": 0.01, "name": "n" * 200})
    assert longest.status_code == 200
    default = client.post("/simulate", json={"outcome": "complete", "seconds": 0.01})
    listing = {t["id"]: t for t in client.get("/tasks").json()}
    assert listing[default.json()["task_id"]]["name"] == "simulate_complete"


@pytest.mark.parametrize("name", ["n" * 201, "", 5, None, ["a"]])
def test_simulate_refuses_a_bad_name(client: httpx.Client, name: Any) -> None:
    response = client.post("/simulate", json={"seconds": 0.01, "name": name})
    assert response.status_code == 400
    assert "name must be a string of 1 to 200 characters" in response.json()["error"]
