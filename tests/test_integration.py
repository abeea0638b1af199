"""Nexios integration through nexios.testclient.TestClient, with lifespan.

Note: nexios prints "Resolving dependency:" to stdout; nothing here reads stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nexios import NexiosApp
from nexios.http import Request, Response
from nexios.testclient import TestClient

from observable_tasks import (
    NoTaskManagerError,
    Task,
    TaskConfig,
    TaskDependency,
    TaskError,
    TaskManager,
    TaskStatus,
    create_task,
    current_task,
    get_task_manager,
    setup_tasks,
    update_task_progress,
)

FAST = TaskConfig(max_concurrent_tasks=10, shutdown_timeout=0.2)


async def double(value: int) -> int:
    return value * 2


def add_wait_route(app: NexiosApp, manager: TaskManager) -> None:
    """``GET /wait/{task_id}``: waits (bounded) for the task and returns its summary."""

    @app.get("/wait/{task_id}")
    async def wait(request: Request, response: Response, task_id: str) -> Any:
        try:
            task = await manager.wait_for_task(task_id, timeout=5)
        except LookupError:
            return response.json({"error": "Task not found"}, status_code=404)
        return task.to_dict()


# -- The page's own integration test --------------------------------------------------------------


@pytest.fixture
def app():
    app = NexiosApp()
    setup_tasks(app)

    @app.post("/test-task")
    async def create_test_task(request, response):
        from observable_tasks import create_task

        async def test_task(value: str) -> str:
            return f"processed_{value}"

        task = await create_task(func=test_task, value="test", name="integration_test")

        return {"task_id": task.id}

    return app


def test_task_creation(app):
    client = TestClient(app)

    response = client.post("/test-task")
    assert response.status_code == 200

    data = response.json()
    assert "task_id" in data


def test_task_creation_with_lifespan(app):
    # Without `with`, the lifespan (and so the manager's start/stop) does not run and each
    # request gets its own short-lived loop; `with` is how background tasks outlive a request.
    with TestClient(app) as client:
        response = client.post("/test-task")
        assert response.status_code == 200

        data = response.json()
        assert "task_id" in data

        manager = get_task_manager(app)
        task = manager.get_task(data["task_id"])
        assert task is not None
        assert task.name == "integration_test"


# -- setup_tasks and the app's lifespan --------------------------------------------------------


def test_on_startup_style_app_restarts_for_each_client() -> None:
    app = NexiosApp()
    events: list[str] = []
    from_startup: list[Task] = []

    async def user_startup() -> None:
        # The manager starts before the user's own hooks (even hooks registered before
        # setup_tasks), so they may create tasks, also after a previous shutdown.
        from_startup.append(await create_task(double, 21, name="from-startup"))
        events.append("user startup")

    async def user_shutdown() -> None:
        events.append("user shutdown")

    app.on_startup(user_startup)
    manager = setup_tasks(app, FAST)
    app.on_shutdown(user_shutdown)
    add_wait_route(app, manager)

    @app.post("/double/{n:int}")
    async def start(request: Request, response: Response, n: int) -> Any:
        task = await create_task(func=double, value=n, name="doubling")
        return {"task_id": task.id}

    for round_ in range(3):
        with TestClient(app) as client:
            assert manager.is_accepting
            task_id = client.post(f"/double/{round_}").json()["task_id"]
            body = client.get(f"/wait/{task_id}").json()
            assert body["status"] == "COMPLETED"
            assert body["result"] == round_ * 2
            assert client.get(f"/wait/{from_startup[-1].id}").json()["result"] == 42
        assert not manager.is_accepting  # shut down with the app
    assert events == ["user startup", "user shutdown"] * 3
    assert all(t.status is TaskStatus.COMPLETED for t in from_startup)
    assert len(from_startup) == 3


def test_lifespan_style_app_keeps_the_user_lifespan() -> None:
    events: list[str] = []
    holder: dict[str, TaskManager] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: NexiosApp) -> AsyncIterator[None]:
        manager = holder["manager"]
        events.append(f"user start, accepting={manager.is_accepting}")
        task = await create_task(double, 5, name="from-lifespan")
        await manager.wait_for_task(task.id, timeout=5)
        events.append(f"lifespan task {task.status.value} {task.result}")
        yield
        events.append(f"user stop, accepting={manager.is_accepting}")

    app = NexiosApp(lifespan=lifespan)
    holder["manager"] = manager = setup_tasks(app, FAST)
    add_wait_route(app, manager)

    @app.post("/go")
    async def go(request: Request, response: Response) -> Any:
        task = await create_task(double, 4)
        return {"task_id": task.id}

    for _ in range(2):
        with TestClient(app) as client:
            task_id = client.post("/go").json()["task_id"]
            assert client.get(f"/wait/{task_id}").json()["result"] == 8
        assert not manager.is_accepting
    assert (
        events
        == [
            "user start, accepting=True",
            "lifespan task COMPLETED 10",
            "user stop, accepting=True",  # the manager shuts down after the user's lifespan
        ]
        * 2
    )


def test_shutdown_with_the_app_cancels_unfinished_tasks() -> None:
    app = NexiosApp()
    manager = setup_tasks(app, TaskConfig(max_concurrent_tasks=1, shutdown_timeout=0.05))

    async def forever() -> None:
        await asyncio.Event().wait()

    @app.post("/start")
    async def start(request: Request, response: Response) -> Any:
        running = await create_task(forever)
        pending = await create_task(forever)
        return {"ids": [running.id, pending.id]}

    with TestClient(app) as client:
        ids = client.post("/start").json()["ids"]
        assert [manager.get_task(i).status for i in ids] == ["RUNNING", "PENDING"]  # type: ignore[union-attr]
    assert [manager.get_task(i).status for i in ids] == ["CANCELLED", "CANCELLED"]  # type: ignore[union-attr]


def test_setup_tasks_twice_returns_the_same_manager() -> None:
    app = NexiosApp()
    first = setup_tasks(app, FAST)
    assert setup_tasks(app) is first
    assert setup_tasks(app, FAST) is first
    with pytest.warns(RuntimeWarning, match="already called"):
        again = setup_tasks(app, TaskConfig(max_concurrent_tasks=2))
    assert again is first
    assert first.config == FAST
    assert get_task_manager(app) is first
    assert app.state["task_manager"] is first
    # Still started and stopped once per lifespan, not twice.
    with TestClient(app):
        assert first.is_accepting
    assert not first.is_accepting


def test_get_task_manager_for_an_app_without_one() -> None:
    with pytest.raises(NoTaskManagerError, match="setup_tasks"):
        get_task_manager(NexiosApp())


# -- Which manager create_task uses --------------------------------------------------------------


def _app_with_creator(label: str) -> tuple[NexiosApp, TaskManager]:
    app = NexiosApp()
    manager = setup_tasks(app, FAST)
    add_wait_route(app, manager)

    async def child() -> str:
        return label

    async def parent() -> str:
        # Inside a running task: no request context, yet the task's own manager is used.
        spawned = await create_task(child, name=f"{label}-child")
        return spawned.id

    @app.post("/create")
    async def create(request: Request, response: Response) -> Any:
        task = await create_task(func=double, value=1, name=f"{label}-task")
        return {"task_id": task.id}

    @app.post("/nested")
    async def nested(request: Request, response: Response) -> Any:
        task = await create_task(parent, name=f"{label}-parent")
        done = await manager.wait_for_task(task.id, timeout=5)
        return {"parent": task.id, "child": done.result}

    return app, manager


def test_create_task_in_a_handler_uses_that_apps_manager() -> None:
    app_a, manager_a = _app_with_creator("a")
    app_b, manager_b = _app_with_creator("b")  # set up later: the "most recent" one
    assert get_task_manager() is manager_b  # outside any request

    with TestClient(app_a) as client_a, TestClient(app_b) as client_b:
        a_id = client_a.post("/create").json()["task_id"]
        b_id = client_b.post("/create").json()["task_id"]
        assert client_a.get(f"/wait/{a_id}").json()["name"] == "a-task"
        assert client_b.get(f"/wait/{b_id}").json()["name"] == "b-task"

        nested = client_a.post("/nested").json()
        assert client_a.get(f"/wait/{nested['child']}").json()["result"] == "a"

    assert manager_a.get_task(a_id) is not None
    assert manager_b.get_task(a_id) is None
    assert manager_b.get_task(b_id) is not None
    assert manager_a.get_task(b_id) is None
    assert manager_a.get_task(nested["child"]) is not None
    assert manager_b.get_task(nested["child"]) is None


def test_create_task_outside_requests_uses_the_most_recent_manager() -> None:
    app = NexiosApp()
    manager = setup_tasks(app, FAST)

    async def script() -> Task:
        await manager.start()
        task = await create_task(double, 8)
        await manager.wait_for_task(task.id, timeout=5)
        await manager.shutdown()
        return task

    task = asyncio.run(script())
    assert task.result == 16
    assert manager.get_task(task.id) is task


def test_no_manager_anywhere_is_a_clear_error() -> None:
    # A fresh interpreter: no setup_tasks ever ran there.
    code = textwrap.dedent(
        """
        from nexios import NexiosApp
        from nexios.http import Request, Response
        from nexios.testclient import TestClient
        from observable_tasks import NoTaskManagerError, create_task

        app = NexiosApp()

        async def work():
            return 1

        @app.get("/")
        async def handler(request: Request, response: Response):
            try:
                await create_task(work)
            except NoTaskManagerError as exc:
                return {"error": type(exc).__name__, "message": str(exc)}
            return {"error": None}

        with TestClient(app) as client:
            body = client.get("/").json()
        assert body["error"] == "NoTaskManagerError", body
        assert "setup_tasks(app)" in body["message"], body
        print("OK")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


def test_deprecated_request_forms_warn_and_work() -> None:
    app_a, manager_a = _app_with_creator("a")
    _app_b, manager_b = _app_with_creator("b")  # later: must not be picked

    @app_a.post("/legacy-keyword")
    async def legacy_keyword(request: Request, response: Response) -> Any:
        task = await create_task(request=request, func=double, value=3, name="legacy")
        return {"task_id": task.id}

    @app_a.post("/legacy-positional")
    async def legacy_positional(request: Request, response: Response) -> Any:
        task = await create_task(request, double, 4, name="legacy-positional")
        return {"task_id": task.id}

    with TestClient(app_a) as client:
        with pytest.warns(DeprecationWarning, match="deprecated"):
            kw_id = client.post("/legacy-keyword").json()["task_id"]
        with pytest.warns(DeprecationWarning, match="deprecated"):
            pos_id = client.post("/legacy-positional").json()["task_id"]
        assert client.get(f"/wait/{kw_id}").json()["result"] == 6
        assert client.get(f"/wait/{pos_id}").json()["result"] == 8
    assert manager_a.get_task(kw_id) is not None
    assert manager_b.get_task(kw_id) is None


async def test_a_request_keyword_that_is_not_a_request_goes_to_the_function() -> None:
    manager = TaskManager(FAST)

    async def uses_request(request: str) -> str:
        return request

    async def parent() -> str:
        child = await create_task(func=uses_request, request="just a string")
        done = await manager.wait_for_task(child.id, timeout=5)
        return str(done.result)

    task = await manager.create_task(parent)
    await manager.wait_for_task(task.id, timeout=5)
    assert task.result == "just a string"


async def test_module_create_task_needs_a_function() -> None:
    with pytest.raises(TypeError, match="func"):
        await create_task(name="nothing to run")


# -- TaskDependency ------------------------------------------------------------------------------


def test_task_dependency_as_handler_default() -> None:
    app = NexiosApp()
    manager = setup_tasks(app, FAST)
    setup_tasks(NexiosApp(), FAST)  # another app set up later must not be injected
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    @app.post("/dep")
    async def dep(
        request: Request,
        response: Response,
        task_dep: TaskDependency = TaskDependency(),  # noqa: B008 - Nexios DI
    ) -> Any:
        assert isinstance(task_dep, TaskDependency)
        assert task_dep.manager is manager
        task = await task_dep.create(func=double, value=10, name="via-dep")
        finished = await task_dep.wait_for_task(task.id, timeout=5)
        assert task_dep.get_task(task.id) is finished
        assert task_dep.list_tasks(TaskStatus.COMPLETED)[-1] is finished

        started.clear()
        victim = await task_dep.create(forever)
        await asyncio.wait_for(started.wait(), 5)
        task_dep.update_progress(victim.id, 12.5)
        cancelled = await task_dep.cancel_task(victim.id)
        return {
            "result": finished.result,
            "cancelled": cancelled,
            "victim_status": victim.status.value,
            "victim_progress": victim.progress,
            "unknown": task_dep.get_task("nope"),
            "cancel_unknown": await task_dep.cancel_task("nope"),
        }

    with TestClient(app) as client:
        response = client.post("/dep")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "result": 20,
        "cancelled": True,
        "victim_status": "CANCELLED",
        "victim_progress": 12.5,
        "unknown": None,
        "cancel_unknown": False,
    }
    assert [t.name for t in manager.list_tasks()] == ["via-dep", "forever"]


def test_task_dependency_bound_to_a_given_manager() -> None:
    manager = TaskManager(FAST)
    dep = TaskDependency(manager)
    assert dep.manager is manager

    async def run() -> Task:
        task = await dep.create(double, 2)
        return await dep.wait_for_task(task.id, timeout=5)

    assert asyncio.run(run()).result == 4


# -- TaskError exception handler -----------------------------------------------------------------


def test_task_error_exception_handler_answers_400() -> None:
    app = NexiosApp()
    setup_tasks(app, FAST)

    async def handle_task_error(request: Request, response: Response, exc: Exception) -> Any:
        assert isinstance(exc, TaskError)
        return response.json(
            {"error": exc.code, "message": exc.message, "details": exc.details}, status_code=400
        )

    app.add_exception_handler(TaskError, handle_task_error)

    @app.post("/validate")
    async def validate(request: Request, response: Response) -> Any:
        data = await request.json
        if not data.get("valid"):
            raise TaskError(
                code="INVALID_DATA", message="Data validation failed", details={"received": data}
            )
        return {"processed": data}

    with TestClient(app) as client:
        bad = client.post("/validate", json={"valid": False})
        good = client.post("/validate", json={"valid": True})
    assert bad.status_code == 400
    assert bad.json() == {
        "error": "INVALID_DATA",
        "message": "Data validation failed",
        "details": {"received": {"valid": False}},
    }
    assert good.status_code == 200
    assert good.json() == {"processed": {"valid": True}}


# -- Every endpoint of the page, as a user writes them (with Nexios 3.x's 404 form) -----------


def page_app() -> tuple[NexiosApp, TaskManager, dict[str, asyncio.Event]]:
    app = NexiosApp()
    task_manager = setup_tasks(app, FAST)
    gates: dict[str, asyncio.Event] = {}

    async def process_data(data: dict[str, Any]) -> dict[str, Any]:
        return {"status": "completed", "data": data}

    async def process_with_deps(data: dict[str, Any]) -> dict[str, Any]:
        return {"status": "completed", "data": data, "via": "deps"}

    async def long_running_task(task_id: str, items: list[int]) -> dict[str, int]:
        gate = gates.setdefault(task_id, asyncio.Event())
        for processed, _item in enumerate(items, start=1):
            await update_task_progress(task_id, processed / len(items) * 100)
            if processed == len(items) // 2:
                await gate.wait()
        return {"processed": len(items), "total": len(items)}

    async def failing(data: dict[str, Any]) -> None:
        raise ValueError(f"cannot process {data}")

    @app.post("/process")
    async def start_processing(request: Request, response: Response) -> Any:
        data = await request.json
        task = await create_task(func=process_data, data=data, name="data_processing")
        return {"task_id": task.id}

    @app.post("/process-with-deps")
    async def start_processing_with_deps(
        request: Request,
        response: Response,
        task_dep: TaskDependency = TaskDependency(),  # noqa: B008 - Nexios DI
    ) -> Any:
        data = await request.json
        task = await task_dep.create(
            func=process_with_deps, data=data, name="data_processing_with_deps"
        )
        return {"task_id": task.id}

    @app.post("/long")
    async def start_long(request: Request, response: Response) -> Any:
        task = await create_task(long_running_task, items=[1, 2, 3, 4], name="long")
        return {"task_id": task.id}

    @app.post("/release/{task_id}")
    async def release(request: Request, response: Response, task_id: str) -> Any:
        gates.setdefault(task_id, asyncio.Event()).set()
        return {"released": task_id}

    @app.post("/fail")
    async def start_failing(request: Request, response: Response) -> Any:
        task = await create_task(failing, data={"x": 1}, name="failing")
        return {"task_id": task.id}

    @app.get("/status/{task_id}")
    async def get_status(request: Request, response: Response, task_id: str) -> Any:
        task = task_manager.get_task(task_id)
        if not task:
            return response.json({"error": "Task not found"}, status_code=404)
        return {
            "task_id": task.id,
            "status": task.status.value,
            "result": task.result if task.status == TaskStatus.COMPLETED else None,
            "error": str(task.error) if task.error else None,
        }

    @app.get("/tasks")
    async def list_tasks(request: Request, response: Response) -> Any:
        return [
            {
                "id": task.id,
                "name": task.name,
                "status": task.status.value,
                "created_at": task.created_at.isoformat(),
                "completed_at": task.completed_at.isoformat() if task.completed_at else None,
            }
            for task in task_manager.list_tasks()
        ]

    @app.post("/tasks/{task_id}/cancel")
    async def cancel_task(request: Request, response: Response, task_id: str) -> Any:
        success = await task_manager.cancel_task(task_id)
        return {"success": success, "task_id": task_id}

    @app.get("/tasks/{task_id}/progress")
    async def get_task_progress(request: Request, response: Response, task_id: str) -> Any:
        task = task_manager.get_task(task_id)
        if not task:
            return response.json({"error": "Task not found"}, status_code=404)
        return {"task_id": task_id, "progress": task.progress, "status": task.status.value}

    @app.get("/task-result/{task_id}")
    async def get_task_result(request: Request, response: Response, task_id: str) -> Any:
        task = task_manager.get_task(task_id)
        if not task:
            return response.json({"error": "Task not found"}, status_code=404)
        if task.error:
            return response.json(
                {
                    "error": "Task failed",
                    "message": str(task.error),
                    "traceback": getattr(task.error, "traceback", None),
                },
                status_code=500,
            )
        return {"result": task.result}

    add_wait_route(app, task_manager)
    return app, task_manager, gates


def test_every_endpoint_of_the_page() -> None:
    app, manager, _ = page_app()
    with TestClient(app) as client:
        # /process and /status
        pid = client.post("/process", json={"a": 1}).json()["task_id"]
        client.get(f"/wait/{pid}")
        status = client.get(f"/status/{pid}")
        assert status.status_code == 200
        assert status.json() == {
            "task_id": pid,
            "status": "COMPLETED",
            "result": {"status": "completed", "data": {"a": 1}},
            "error": None,
        }
        missing = client.get("/status/does-not-exist")
        assert missing.status_code == 404
        assert missing.json() == {"error": "Task not found"}

        # /process-with-deps
        did = client.post("/process-with-deps", json={"b": 2}).json()["task_id"]
        client.get(f"/wait/{did}")
        assert client.get(f"/status/{did}").json()["result"]["via"] == "deps"

        # progress while running, then the end
        lid = client.post("/long").json()["task_id"]
        progress = client.get(f"/tasks/{lid}/progress").json()
        assert progress == {"task_id": lid, "progress": 50.0, "status": "RUNNING"}
        client.post(f"/release/{lid}")
        client.get(f"/wait/{lid}")
        assert client.get(f"/tasks/{lid}/progress").json()["progress"] == 100.0
        assert client.get("/tasks/nope/progress").status_code == 404

        # /task-result: success, failure (500), unknown (404)
        assert client.get(f"/task-result/{lid}").json() == {"result": {"processed": 4, "total": 4}}
        fid = client.post("/fail").json()["task_id"]
        client.get(f"/wait/{fid}")
        failed = client.get(f"/task-result/{fid}")
        assert failed.status_code == 500
        assert failed.json()["error"] == "Task failed"
        assert "cannot process" in failed.json()["message"]
        assert client.get(f"/status/{fid}").json()["status"] == "FAILED"
        assert client.get("/task-result/nope").status_code == 404

        # cancel: a running task, then the same again (already finished), then unknown
        cid = client.post("/long").json()["task_id"]
        assert client.post(f"/tasks/{cid}/cancel").json() == {"success": True, "task_id": cid}
        assert client.get(f"/status/{cid}").json()["status"] == "CANCELLED"
        assert client.post(f"/tasks/{cid}/cancel").json()["success"] is False
        assert client.post("/tasks/nope/cancel").json()["success"] is False

        # /tasks lists them all, in creation order
        listing = client.get("/tasks").json()
        assert [t["id"] for t in listing] == [pid, did, lid, fid, cid]
        assert [t["status"] for t in listing] == [
            "COMPLETED",
            "COMPLETED",
            "COMPLETED",
            "FAILED",
            "CANCELLED",
        ]
        assert all(t["completed_at"] for t in listing)
        assert [t["name"] for t in listing][:2] == ["data_processing", "data_processing_with_deps"]
    assert len(manager.list_tasks()) == 5


def test_current_task_inside_a_request_handler_is_none() -> None:
    app = NexiosApp()
    setup_tasks(app, FAST)

    @app.get("/")
    async def handler(request: Request, response: Response) -> Any:
        return {"current": current_task() is None}

    with TestClient(app) as client:
        assert client.get("/").json() == {"current": True}
