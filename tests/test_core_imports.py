"""The core works without the telemetry libraries, and exports the documented names."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import observable_tasks

BLOCKED = ("opentelemetry", "prometheus_client", "structlog")

# The names the documented page imports from the package.
DOCUMENTED = {
    "setup_tasks",
    "create_task",
    "TaskDependency",
    "TaskManager",
    "TaskConfig",
    "TaskStatus",
    "Task",
    "TaskError",
    "update_task_progress",
}

BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc
    import sys

    BLOCKED = {BLOCKED!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked for this test: {{name}}")
            return None

    for mod in list(sys.modules):
        if mod.split(".")[0] in BLOCKED:
            del sys.modules[mod]
    sys.meta_path.insert(0, Block())
    """
)


def _run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_blocker_really_blocks() -> None:
    out = _run(
        """
        for name in BLOCKED:
            try:
                __import__(name)
            except ImportError:
                print("blocked", name)
        """
    )
    assert out.split("\n")[:3] == [f"blocked {name}" for name in BLOCKED]


def test_core_imports_and_runs_a_task_without_telemetry_libraries() -> None:
    out = _run(
        """
        import asyncio
        import observable_tasks
        from observable_tasks import TaskConfig, TaskManager, TaskStatus

        async def double(value: int) -> int:
            return value * 2

        async def main():
            manager = TaskManager(TaskConfig(max_concurrent_tasks=2))
            task = await manager.create_task(func=double, value=21, name="core")
            await manager.wait_for_task(task.id, timeout=10)
            await manager.shutdown()
            print(task.status.value, task.result)

        asyncio.run(main())
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("leaked:", leaked)
        """
    )
    assert "COMPLETED 42" in out
    assert "leaked: []" in out


def test_all_names_exist_and_include_the_documented_ones() -> None:
    exported = set(observable_tasks.__all__)
    assert len(exported) == len(observable_tasks.__all__)  # no duplicates
    missing = [name for name in exported if not hasattr(observable_tasks, name)]
    assert missing == []
    assert exported >= DOCUMENTED
    assert isinstance(observable_tasks.__version__, str)
