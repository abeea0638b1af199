"""TaskConfig: documented fields, defaults, validation naming the field."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest

from observable_tasks import TaskConfig


def test_documented_example_is_accepted() -> None:
    config = TaskConfig(
        max_concurrent_tasks=50,
        default_timeout=300,
        task_result_ttl=86400,
        enable_task_history=True,
        log_level="INFO",
    )
    assert config.max_concurrent_tasks == 50
    assert config.default_timeout == 300
    assert config.task_result_ttl == 86400
    assert config.enable_task_history is True
    assert config.log_level == logging.INFO


def test_production_example_is_accepted() -> None:
    config = TaskConfig(
        max_concurrent_tasks=100,
        default_timeout=1800,
        task_result_ttl=604800,
        enable_task_history=True,
        log_level="INFO",
        cleanup_interval=3600,
        max_task_history=10000,
    )
    assert config.cleanup_interval == 3600
    assert config.max_task_history == 10000


def test_every_field_exists_with_a_sane_default() -> None:
    names = {f.name for f in dataclasses.fields(TaskConfig)}
    assert names == {
        "max_concurrent_tasks",
        "default_timeout",
        "task_result_ttl",
        "enable_task_history",
        "log_level",
        "cleanup_interval",
        "max_task_history",
        "shutdown_timeout",
        "max_sync_threads",
        "loop_stall_threshold",
        "retry",
    }
    config = TaskConfig()
    assert config.max_concurrent_tasks > 0
    assert config.default_timeout is None
    assert config.task_result_ttl > 0
    assert config.enable_task_history is True
    assert isinstance(config.log_level, int)
    assert config.cleanup_interval > 0
    assert config.max_task_history > 0
    assert config.shutdown_timeout > 0
    assert config.max_sync_threads > 0
    assert config.loop_stall_threshold is not None
    assert config.loop_stall_threshold > 0


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("INFO", logging.INFO),
        ("info", logging.INFO),
        ("DEBUG", logging.DEBUG),
        ("WARNING", logging.WARNING),
        (logging.ERROR, logging.ERROR),
        (15, 15),
        (0, 0),
    ],
)
def test_log_level_names_and_numbers(level: object, expected: int) -> None:
    config = TaskConfig(log_level=level)  # type: ignore[arg-type]
    assert config.log_level == expected
    assert config.log_level_no == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_concurrent_tasks", 0),
        ("max_concurrent_tasks", -1),
        ("max_concurrent_tasks", 1.5),
        ("max_concurrent_tasks", True),
        ("max_concurrent_tasks", "10"),
        ("default_timeout", 0),
        ("default_timeout", -5),
        ("default_timeout", math.nan),
        ("default_timeout", math.inf),
        ("default_timeout", True),
        ("default_timeout", "300"),
        ("task_result_ttl", 0),
        ("task_result_ttl", -1),
        ("task_result_ttl", math.nan),
        ("task_result_ttl", math.inf),
        ("enable_task_history", 1),
        ("enable_task_history", "yes"),
        ("log_level", "VERBOSE"),
        ("log_level", True),
        ("log_level", -10),
        ("log_level", 2.5),
        ("cleanup_interval", 0),
        ("cleanup_interval", -1),
        ("cleanup_interval", math.nan),
        ("max_task_history", -1),
        ("max_task_history", True),
        ("max_task_history", 2.0),
        ("shutdown_timeout", -1),
        ("shutdown_timeout", math.nan),
        ("shutdown_timeout", math.inf),
        ("shutdown_timeout", False),
        ("max_sync_threads", 0),
        ("max_sync_threads", -1),
        ("max_sync_threads", 2.0),
        ("max_sync_threads", True),
        ("loop_stall_threshold", 0),
        ("loop_stall_threshold", -1),
        ("loop_stall_threshold", math.nan),
        ("loop_stall_threshold", math.inf),
        ("loop_stall_threshold", "0.5"),
    ],
)
def test_invalid_value_raises_value_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TaskConfig(**{field: value})  # type: ignore[arg-type]


def test_zero_is_allowed_where_it_means_something() -> None:
    # No history kept at all, and no grace period on shutdown.
    config = TaskConfig(max_task_history=0, shutdown_timeout=0)
    assert config.max_task_history == 0
    assert config.shutdown_timeout == 0


def test_config_is_immutable_and_replace_validates_again() -> None:
    config = TaskConfig(max_concurrent_tasks=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_concurrent_tasks = 4  # type: ignore[misc]
    changed = config.replace(default_timeout=2.5)
    assert changed.default_timeout == 2.5
    assert changed.max_concurrent_tasks == 3
    assert config.default_timeout is None
    with pytest.raises(ValueError, match="default_timeout"):
        config.replace(default_timeout=-1)


def test_equal_configs_compare_equal() -> None:
    assert TaskConfig(log_level="INFO") == TaskConfig(log_level=logging.INFO)
    assert TaskConfig(max_concurrent_tasks=1) != TaskConfig(max_concurrent_tasks=2)


def test_loop_watchdog_can_be_switched_off() -> None:
    assert TaskConfig(loop_stall_threshold=None).loop_stall_threshold is None
    assert TaskConfig(loop_stall_threshold=0.05).loop_stall_threshold == 0.05
