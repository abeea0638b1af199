"""Retries, delayed starts and idempotency keys as one contract over both backends: memory and
Redis (a real redis-server started here). Redis-only behaviour (restarts, several processes)
is in test_redis_retry.py; telemetry of retries in test_retry_telemetry.py."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from observable_tasks import Retry, RetryPolicy, TaskManager, TaskStatus
from observable_tasks.feed import TaskEvent

# -- task functions: module level, so that they can cross processes -------------------------

RUNS: dict[str, list[float]] = {}  # token -> wall time of each attempt's start
GATES: dict[str, asyncio.Event] = {}


def _ran(token: str) -> int:
    RUNS.setdefault(token, []).append(time.time())
    return len(RUNS[token])


async def flaky(token: str, failures: int) -> str:
    """Raises ConnectionError on its first ``failures`` attempts, then returns."""
    attempt = _ran(token)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} lost its connection")
    return f"ok after {attempt}"


async def always_fails(token: str) -> None:
    attempt = _ran(token)
    raise ConnectionError(f"attempt {attempt} failed")


async def wrong_value(token: str) -> None:
    _ran(token)
    raise ValueError("not a connection problem")


async def asks_again(token: str, delay: float) -> str:
    attempt = _ran(token)
    if attempt == 1:
        raise Retry(delay=delay)
    return "second time lucky"


async def slow_then_fast(token: str) -> str:
    if _ran(token) == 1:
        await asyncio.sleep(30)
    return "fast"


async def record_start(token: str) -> str:
    _ran(token)
    return "started"


async def wait_gate(token: str, gate: str) -> str:
    _ran(token)
    await GATES[gate].wait()
    return gate


def token() -> str:
    return secrets.token_hex(4)


def gate(name: str) -> str:
    GATES[name] = asyncio.Event()
    return name


def fast(max_attempts: int = 3, **options: Any) -> RetryPolicy:
    """A policy for tests: short fixed backoff, retrying connection errors."""
    options.setdefault("on", (ConnectionError,))
    return RetryPolicy(max_attempts=max_attempts, backoff=0.05, jitter=False, **options)


# -- helpers (the `make` fixture, one manager per test on each backend, is in conftest.py) --


async def next_event(manager: TaskManager, kind: str, task_id: str, events: Any) -> TaskEvent:
    async def find() -> TaskEvent:
        async for event in events:
            if event.kind == kind and event.task.id == task_id:
                return event  # type: ignore[no-any-return]
        raise AssertionError("the event stream ended")

    return await asyncio.wait_for(find(), timeout=10)


# -- retries --------------------------------------------------------------------------------


async def test_fails_twice_then_succeeds_on_attempt_3(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    t = token()
    task = await manager.create_task(flaky, t, 2, retry=fast(3))
    done = await manager.wait_for_task(task.id, timeout=10)
    assert done.status is TaskStatus.COMPLETED
    assert done.result == "ok after 3"
    assert done.attempts == 3
    assert done.max_attempts == 3
    assert done.error is None  # the earlier attempts' errors are not the outcome
    assert done.next_attempt_at is None
    assert len(RUNS[t]) == 3


async def test_gives_up_after_max_attempts_with_the_last_error(
    make: Callable[..., TaskManager],
) -> None:
    manager = make()
    await manager.start()
    t = token()
    task = await manager.create_task(always_fails, t, retry=fast(3))
    done = await manager.wait_for_task(task.id, timeout=10)
    assert done.status is TaskStatus.FAILED
    assert done.attempts == 3
    assert "attempt 3 failed" in str(done.error)
    assert len(RUNS[t]) == 3


async def test_an_exception_not_in_on_is_not_retried(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    t = token()
    task = await manager.create_task(wrong_value, t, retry=fast(5))
    done = await manager.wait_for_task(task.id, timeout=10)
    assert done.status is TaskStatus.FAILED
    assert done.attempts == 1
    assert "not a connection problem" in str(done.error)
    assert len(RUNS[t]) == 1


async def test_no_policy_means_no_retry_of_exceptions(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    t = token()
    task = await manager.create_task(always_fails, t)  # today's behaviour stays
    done = await manager.wait_for_task(task.id, timeout=10)
    assert (done.status, done.attempts, len(RUNS[t])) == (TaskStatus.FAILED, 1, 1)


async def test_config_default_policy_applies(make: Callable[..., TaskManager]) -> None:
    manager = make(retry=fast(2))
    await manager.start()
    t = token()
    task = await manager.create_task(flaky, t, 1)
    done = await manager.wait_for_task(task.id, timeout=10)
    assert (done.status, done.attempts) == (TaskStatus.COMPLETED, 2)


async def test_retry_raised_by_the_task_waits_its_delay(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    t = token()
    task = await manager.create_task(asks_again, t, 0.3)  # the default policy honours Retry
    done = await manager.wait_for_task(task.id, timeout=10)
    assert (done.status, done.result, done.attempts) == (
        TaskStatus.COMPLETED,
        "second time lucky",
        2,
    )
    first, second = RUNS[t]
    assert second - first >= 0.3


async def test_backoff_grows_between_attempts(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    t = token()
    policy = RetryPolicy(max_attempts=3, on=ConnectionError, backoff=0.1, jitter=False)
    task = await manager.create_task(always_fails, t, retry=policy)
    await manager.wait_for_task(task.id, timeout=10)
    one, two, three = RUNS[t]
    assert two - one >= 0.1
    assert three - two >= 0.2  # doubled


async def test_a_timeout_retries_only_when_the_policy_says_so(
    make: Callable[..., TaskManager],
) -> None:
    manager = make()
    await manager.start()
    kept, retried = token(), token()
    no = await manager.create_task(slow_then_fast, kept, timeout=0.2, retry=fast(3))
    yes = await manager.create_task(
        slow_then_fast, retried, timeout=0.2, retry=fast(3, on_timeout=True)
    )
    done_no = await manager.wait_for_task(no.id, timeout=10)
    done_yes = await manager.wait_for_task(yes.id, timeout=10)
    assert (done_no.status, done_no.attempts) == (TaskStatus.TIMEOUT, 1)
    assert (done_yes.status, done_yes.result, done_yes.attempts) == (
        TaskStatus.COMPLETED,
        "fast",
        2,
    )


async def test_waiting_for_a_retry_is_pending_with_the_next_attempt_time(
    make: Callable[..., TaskManager],
) -> None:
    manager = make()
    await manager.start()
    events = manager.task_events()
    t = token()
    policy = RetryPolicy(max_attempts=2, on=ConnectionError, backoff=0.5, jitter=False)
    task = await manager.create_task(flaky, t, 1, retry=policy)
    await next_event(manager, "retrying", task.id, events)
    waiting = await manager.aget_task(task.id)
    assert waiting is not None
    assert waiting.status is TaskStatus.PENDING
    assert waiting.attempts == 1
    assert waiting.next_attempt_at is not None
    assert waiting.next_attempt_at > datetime.now(timezone.utc) - timedelta(seconds=0.05)
    assert "attempt 1" in str(waiting.error)  # the last attempt's error, while it waits
    assert waiting.completed_at is None  # not finished
    assert waiting.started_at is not None  # the last attempt's start
    done = await manager.wait_for_task(task.id, timeout=10)
    assert (done.status, done.attempts, done.next_attempt_at) == (TaskStatus.COMPLETED, 2, None)
    assert done.duration is not None
    assert done.duration >= 0  # the last attempt's run
    await events.aclose()


async def test_cancel_while_waiting_to_retry(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    events = manager.task_events()
    t = token()
    policy = RetryPolicy(max_attempts=3, on=ConnectionError, backoff=0.3, jitter=False)
    task = await manager.create_task(always_fails, t, retry=policy)
    await next_event(manager, "retrying", task.id, events)
    assert await manager.cancel_task(task.id) is True
    done = await manager.wait_for_task(task.id, timeout=5)
    assert done.status is TaskStatus.CANCELLED
    await asyncio.sleep(0.5)  # past its planned attempt: it must not run again
    assert len(RUNS[t]) == 1
    found = await manager.aget_task(task.id)
    assert found is not None
    assert found.status is TaskStatus.CANCELLED
    await events.aclose()


# -- delayed start ----------------------------------------------------------------------------


async def test_a_delayed_task_is_pending_then_starts_after_its_delay(
    make: Callable[..., TaskManager],
) -> None:
    manager = make()
    await manager.start()
    t = token()
    before = time.time()
    task = await manager.create_task(record_start, t, delay=0.3)
    found = await manager.aget_task(task.id)
    assert found is not None
    assert found.status is TaskStatus.PENDING
    assert found.attempts == 0
    assert found.next_attempt_at is not None
    assert found.next_attempt_at.timestamp() == pytest.approx(before + 0.3, abs=0.2)
    done = await manager.wait_for_task(task.id, timeout=10)
    assert done.status is TaskStatus.COMPLETED
    assert RUNS[t][0] - before >= 0.3
    assert done.next_attempt_at is None


async def test_eta_takes_an_aware_datetime(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    t = token()
    eta = datetime.now(timezone.utc) + timedelta(seconds=0.2)
    task = await manager.create_task(record_start, t, eta=eta)
    done = await manager.wait_for_task(task.id, timeout=10)
    assert done.status is TaskStatus.COMPLETED
    assert RUNS[t][0] >= eta.timestamp()
    past = await manager.create_task(record_start, token(), eta=eta - timedelta(hours=1))
    assert (await manager.wait_for_task(past.id, timeout=10)).status is TaskStatus.COMPLETED


async def test_a_delayed_task_holds_no_slot(make: Callable[..., TaskManager]) -> None:
    manager = make(max_concurrent_tasks=1)
    await manager.start()
    later, now = token(), token()
    delayed = await manager.create_task(record_start, later, delay=30)
    task = await manager.create_task(record_start, now)
    done = await manager.wait_for_task(task.id, timeout=10)  # the only slot was free
    assert done.status is TaskStatus.COMPLETED
    still = await manager.aget_task(delayed.id)
    assert still is not None
    assert still.status is TaskStatus.PENDING
    assert later not in RUNS
    assert await manager.cancel_task(delayed.id) is True


async def test_cancel_a_delayed_task_before_it_starts(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    t = token()
    task = await manager.create_task(record_start, t, delay=0.2)
    assert await manager.cancel_task(task.id) is True
    done = await manager.wait_for_task(task.id, timeout=5)
    assert done.status is TaskStatus.CANCELLED
    assert done.attempts == 0
    await asyncio.sleep(0.4)  # past its start time: it never runs
    assert t not in RUNS


# -- idempotency keys ---------------------------------------------------------------------------


async def test_the_same_key_gives_the_same_task_while_it_is_unfinished(
    make: Callable[..., TaskManager],
) -> None:
    manager = make()
    await manager.start()
    t = token()
    hold = gate("hold")
    first = await manager.create_task(wait_gate, t, hold, key="order-42")
    again = await manager.create_task(wait_gate, t, hold, key="order-42")
    assert again.id == first.id
    assert again.key == "order-42"
    other = await manager.create_task(wait_gate, t, hold, key="order-43")
    assert other.id != first.id
    GATES[hold].set()
    await manager.wait_for_task(first.id, timeout=10)
    await manager.wait_for_task(other.id, timeout=10)
    after = await manager.create_task(record_start, token(), key="order-42")
    assert after.id != first.id  # finished: the key is free again
    await manager.wait_for_task(after.id, timeout=10)


async def test_a_key_holds_through_a_delay(make: Callable[..., TaskManager]) -> None:
    manager = make()
    await manager.start()
    first = await manager.create_task(record_start, token(), delay=30, key="k")
    again = await manager.create_task(record_start, token(), key="k")
    assert again.id == first.id
    assert await manager.cancel_task(first.id) is True
    fresh = await manager.create_task(record_start, token(), key="k")  # cancelled frees it
    assert fresh.id != first.id
    await manager.wait_for_task(fresh.id, timeout=10)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"delay": -1}, ValueError, "delay"),
        ({"delay": math.nan}, ValueError, "delay"),
        ({"delay": math.inf}, ValueError, "delay"),
        ({"delay": "5"}, ValueError, "delay"),
        ({"eta": datetime(2030, 1, 1)}, ValueError, "timezone-aware"),
        ({"eta": "2030-01-01"}, TypeError, "datetime"),
        ({"delay": 1, "eta": datetime.now(timezone.utc)}, ValueError, "not both"),
        ({"retry": 3}, TypeError, "RetryPolicy"),
        ({"key": ""}, ValueError, "key"),
        ({"key": 42}, TypeError, "key"),
    ],
)
async def test_bad_input_is_refused_at_the_call(
    make: Callable[..., TaskManager], options: dict[str, Any], error: type[Exception], words: str
) -> None:
    manager = make()
    await manager.start()
    t = token()
    with pytest.raises(error, match=words):
        await manager.create_task(record_start, t, **options)
    assert await manager.alist_tasks() == []  # nothing was created
    good = await manager.create_task(record_start, t)  # and the manager still works
    assert (await manager.wait_for_task(good.id, timeout=10)).status is TaskStatus.COMPLETED


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"backoff": math.nan}, "backoff"),
        ({"backoff": -1}, "backoff"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"jitter": "yes"}, "jitter"),
    ],
)
def test_a_bad_policy_is_refused_when_made(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        RetryPolicy(**options)


@pytest.mark.parametrize("on", [KeyboardInterrupt, asyncio.CancelledError, "ValueError", [1]])
def test_policy_retries_only_exceptions(on: Any) -> None:
    with pytest.raises(TypeError, match="on must"):
        RetryPolicy(on=on)


def test_retry_delay_is_checked() -> None:
    with pytest.raises(ValueError, match="delay"):
        Retry(delay=-1)
    with pytest.raises(ValueError, match="delay"):
        Retry(delay=math.nan)


def test_backoff_is_exponential_capped_and_jittered_within_its_upper_half() -> None:
    exact = RetryPolicy(max_attempts=10, on=ValueError, backoff=1.0, max_delay=5.0, jitter=False)
    assert [exact.plan(n, ValueError()) for n in range(1, 10)] == [1, 2, 4, 5, 5, 5, 5, 5, 5]
    assert exact.plan(10, ValueError()) is None  # the last attempt: no more
    jittered = RetryPolicy(max_attempts=10, on=ValueError, backoff=1.0, max_delay=5.0)
    for attempt, planned in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 5.0)]:
        drawn = [jittered.delay(attempt) for _ in range(200)]
        assert all(planned / 2 <= d <= planned for d in drawn)
        assert len(set(drawn)) > 1
