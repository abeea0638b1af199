"""The library's exceptions: what they are, what they carry."""

from __future__ import annotations

import pytest

from observable_tasks import (
    NoTaskManagerError,
    TaskError,
    TaskManagerClosedError,
    TaskNotFoundError,
    TaskTimeoutError,
)


def test_task_error_carries_code_message_details() -> None:
    details = {"received": {"valid": False}}
    err = TaskError(code="INVALID_DATA", message="Data validation failed", details=details)
    assert err.code == "INVALID_DATA"
    assert err.message == "Data validation failed"
    assert err.details == details
    assert str(err) == "Data validation failed"
    assert "INVALID_DATA" in repr(err)
    assert isinstance(err, Exception)
    # The details are copied: later changes by the caller do not leak in.
    details["extra"] = 1
    assert "extra" not in err.details


def test_task_error_defaults_and_positional_message() -> None:
    err = TaskError("boom")
    assert err.message == "boom"
    assert err.code == "TASK_ERROR"
    assert err.details == {}
    with pytest.raises(TaskError, match="boom"):
        raise err


def test_exception_families() -> None:
    not_found = TaskNotFoundError("abc")
    assert isinstance(not_found, LookupError)
    assert not_found.task_id == "abc"
    assert "abc" in str(not_found)

    timeout = TaskTimeoutError(1.5)
    assert isinstance(timeout, TimeoutError)
    assert timeout.timeout == 1.5
    assert "1.5" in str(timeout)

    assert issubclass(TaskManagerClosedError, RuntimeError)
    assert issubclass(NoTaskManagerError, RuntimeError)
