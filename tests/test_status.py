"""TaskStatus values and the life-cycle edges."""

from __future__ import annotations

import itertools
import json

import pytest

from observable_tasks import TaskStatus
from observable_tasks.status import InvalidTransition, check_transition

ALL = list(TaskStatus)
TERMINAL = {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMEOUT}
ALLOWED = {
    (TaskStatus.PENDING, TaskStatus.RUNNING),
    (TaskStatus.PENDING, TaskStatus.CANCELLED),
    *((TaskStatus.RUNNING, end) for end in TERMINAL),
    (TaskStatus.RUNNING, TaskStatus.PENDING),  # a retry waits for its next attempt
}


def test_the_six_documented_statuses_with_nexios_contrib_values() -> None:
    # nexios-contrib 0.5.0 ships upper-case values; clients compare task.status.value to them.
    assert {s.name: s.value for s in TaskStatus} == {
        "PENDING": "PENDING",
        "RUNNING": "RUNNING",
        "COMPLETED": "COMPLETED",
        "FAILED": "FAILED",
        "CANCELLED": "CANCELLED",
        "TIMEOUT": "TIMEOUT",
    }


def test_statuses_behave_as_strings() -> None:
    assert TaskStatus.COMPLETED == "COMPLETED"
    assert TaskStatus.PENDING.value == "PENDING"
    assert str(TaskStatus.FAILED) == "FAILED"
    assert f"{TaskStatus.RUNNING}" == "RUNNING"
    assert TaskStatus("CANCELLED") is TaskStatus.CANCELLED
    assert json.dumps({"s": TaskStatus.TIMEOUT}) == '{"s": "TIMEOUT"}'
    with pytest.raises(ValueError, match="done"):
        TaskStatus("done")


def test_lookup_by_value_ignores_case() -> None:
    # Lower-case values (metric labels, and this library before it matched nexios-contrib).
    assert TaskStatus("cancelled") is TaskStatus.CANCELLED
    assert TaskStatus("Timeout") is TaskStatus.TIMEOUT
    with pytest.raises(ValueError, match="3"):
        TaskStatus(3)


def test_every_status_has_a_lower_case_label() -> None:
    from observable_tasks.telemetry.names import FINISHED_STATUSES, STATUS_LABELS

    assert {s.value: s.value.lower() for s in TaskStatus} == STATUS_LABELS
    assert {STATUS_LABELS[s.value] for s in TaskStatus if s.is_terminal} == set(FINISHED_STATUSES)


def test_terminal_set() -> None:
    assert {s for s in TaskStatus if s.is_terminal} == TERMINAL


@pytest.mark.parametrize(("current", "new"), sorted(ALLOWED))
def test_allowed_transitions(current: TaskStatus, new: TaskStatus) -> None:
    check_transition(current, new)  # does not raise


@pytest.mark.parametrize(
    ("current", "new"),
    [pair for pair in itertools.product(ALL, ALL) if pair not in ALLOWED],
)
def test_every_other_transition_is_rejected(current: TaskStatus, new: TaskStatus) -> None:
    with pytest.raises(InvalidTransition, match=f"{current.value} to {new.value}"):
        check_transition(current, new)


def test_terminal_states_are_final() -> None:
    for end in TERMINAL:
        for new in ALL:
            with pytest.raises(InvalidTransition):
                check_transition(end, new)
