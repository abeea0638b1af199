"""A small, rate-bounded load generator for the demo app's ``POST /simulate``.

    python examples/loadgen.py --url http://127.0.0.1:8000 --rate 5
    python examples/loadgen.py --count 40 --rate 20 --burst-every 0     # 40 tasks, then stop

It creates tasks of every outcome (completed, failed with ValueError or TaskError, timeout,
slow, and cancelled through ``POST /tasks/{id}/cancel``) so that every dashboard panel shows data
within a minute, and every ``--burst-every`` seconds (the first after at most 30 s) a burst of slow
tasks that pushes the app to its concurrency limit (saturation, pending backlog): the demo allows
50 concurrent tasks, a burst brings 60. Standard library only: it runs in the app's
image. At the end (``--count``/``--duration``, or Ctrl-C) it prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OUTCOMES", "DEFAULT_MIX", "parse_mix", "simulate_body", "LoadGenerator", "main"]

OUTCOMES = ("complete", "fail", "task_error", "timeout", "slow", "cancel")
"""What a generated task does; ``cancel`` is a slow task cancelled shortly after creation."""

DEFAULT_MIX = "complete=55,fail=10,task_error=5,timeout=10,slow=10,cancel=10"


def parse_mix(text: str) -> dict[str, float]:
    """``"complete=3,fail=1"`` -> weights; unknown outcomes and negative weights are errors."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        name = name.strip()
        if not sep or name not in OUTCOMES:
            raise ValueError(f"bad mix entry {part!r}: use OUTCOME=WEIGHT, OUTCOME in {OUTCOMES}")
        value = float(weight)
        if value < 0:
            raise ValueError(f"negative weight in {part!r}")
        mix[name] = value
    if not mix or sum(mix.values()) <= 0:
        raise ValueError("the mix needs at least one positive weight")
    return mix


def simulate_body(outcome: str, rng: random.Random, slow_seconds: float = 10.0) -> dict[str, Any]:
    """The JSON body of ``POST /simulate`` for one generated outcome."""
    if outcome == "complete":
        return {"outcome": "complete", "seconds": round(rng.uniform(0.05, 1.5), 3)}
    if outcome in ("fail", "task_error"):
        return {"outcome": outcome, "seconds": round(rng.uniform(0.05, 0.5), 3)}
    if outcome == "timeout":
        seconds = round(rng.uniform(1.0, 3.0), 3)
        return {"outcome": "timeout", "seconds": seconds, "timeout": round(seconds / 2, 3)}
    if outcome == "slow":
        return {"outcome": "slow", "seconds": round(rng.uniform(0.5, 1.5) * slow_seconds, 3)}
    if outcome == "cancel":
        return {"outcome": "slow", "seconds": 60.0}
    raise ValueError(f"unknown outcome {outcome!r}")


@dataclass
class Summary:
    """What the generator did."""

    created: Counter[str] = field(default_factory=Counter)
    cancelled: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": dict(sorted(self.created.items())),
            "cancelled": self.cancelled,
            "errors": self.errors,
        }


class LoadGenerator:
    """Sends tasks to ``url`` at no more than ``rate`` requests per second."""

    def __init__(
        self,
        url: str,
        *,
        rate: float = 5.0,
        mix: dict[str, float] | None = None,
        burst_every: float = 120.0,
        burst_size: int = 60,
        slow_seconds: float = 10.0,
        seed: int | None = None,
        request_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.url = url.rstrip("/")
        self.rate = rate
        self.mix = mix or parse_mix(DEFAULT_MIX)
        self.burst_every = burst_every
        self.burst_size = burst_size
        self.slow_seconds = slow_seconds
        self.rng = random.Random(seed)
        self.request_timeout = request_timeout
        self.clock = clock
        self.sleep = sleep
        self.log = log
        self.summary = Summary()
        self._to_cancel: list[tuple[float, str]] = []

    # -- HTTP -------------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
            answer: dict[str, Any] = json.loads(response.read() or b"{}")
            return answer

    def wait_ready(self, timeout: float) -> None:
        """Poll ``GET /metrics`` until the app answers (for a stack that is still starting)."""
        deadline = self.clock() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/metrics", timeout=2) as response:
                    response.read()
                return
            except (urllib.error.URLError, OSError) as exc:
                if self.clock() >= deadline:
                    raise TimeoutError(f"{self.url} not ready after {timeout}s: {exc}") from exc
                self.sleep(0.5)

    def create(self, outcome: str) -> str | None:
        """Create one task; a ``cancel`` task is cancelled 0.2-3 s later. Returns its id."""
        try:
            answer = self._post("/simulate", simulate_body(outcome, self.rng, self.slow_seconds))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.summary.errors += 1
            self.log(f"loadgen: creating a {outcome} task failed: {exc}")
            return None
        task_id = str(answer["task_id"])
        self.summary.created[outcome] += 1
        if outcome == "cancel":
            self._to_cancel.append((self.clock() + self.rng.uniform(0.2, 3.0), task_id))
        return task_id

    def cancel_due(self, *, everything: bool = False) -> None:
        """Cancel the ``cancel`` tasks whose time has come (all of them with ``everything``)."""
        now = self.clock()
        due = [item for item in self._to_cancel if everything or item[0] <= now]
        self._to_cancel = [item for item in self._to_cancel if item not in due]
        for _, task_id in due:
            try:
                if self._post(f"/tasks/{task_id}/cancel").get("success"):
                    self.summary.cancelled += 1
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.summary.errors += 1
                self.log(f"loadgen: cancelling {task_id} failed: {exc}")

    # -- the loop ---------------------------------------------------------------------------

    def outcomes(self) -> list[str]:
        """Every outcome of the mix once (so short runs cover all), then weighted draws."""
        names = [name for name, weight in self.mix.items() if weight > 0]
        return self.rng.sample(names, len(names))

    def run(self, *, count: int | None = None, duration: float | None = None) -> Summary:
        """Send tasks until ``count`` tasks or ``duration`` seconds (neither: forever)."""
        start = self.clock()
        interval = 1.0 / self.rate
        next_send = start
        # The first burst comes early (at most 30 s in), so saturation shows up at once.
        first_burst = min(30.0, self.burst_every)
        next_burst = start + first_burst if self.burst_every > 0 else float("inf")
        next_report = start + 10.0
        queue = self.outcomes()
        names, weights = list(self.mix), list(self.mix.values())
        sent = 0
        while (count is None or sent < count) and (
            duration is None or self.clock() - start < duration
        ):
            now = self.clock()
            if now < next_send:
                self.sleep(next_send - now)  # pacing: this is the rate bound
                continue
            self.cancel_due()
            if now >= next_burst:
                size = self.burst_size if count is None else min(self.burst_size, count - sent)
                self.log(f"loadgen: burst of {size} slow tasks")
                for _ in range(size):
                    self.create("slow")
                sent += size
                next_burst = now + self.burst_every
            else:
                outcome = queue.pop() if queue else self.rng.choices(names, weights)[0]
                self.create(outcome)
                sent += 1
            next_send = max(next_send + interval, now)
            if now >= next_report:
                self.log("loadgen: " + json.dumps(self.summary.as_dict()))
                next_report = now + 10.0
        self.cancel_due(everything=True)
        return self.summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create demo tasks of every outcome.")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the demo app")
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second (max)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help="OUTCOME=WEIGHT,... (%(default)s)")
    parser.add_argument("--count", type=int, help="stop after this many tasks")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--burst-every", type=float, default=120.0, help="seconds between bursts (0: none)"
    )
    parser.add_argument("--burst-size", type=int, default=60, help="slow tasks per burst")
    parser.add_argument("--slow-seconds", type=float, default=10.0, help="typical slow task")
    parser.add_argument("--wait-ready", type=float, default=60.0, help="seconds to wait for app")
    parser.add_argument("--seed", type=int, help="random seed (repeatable runs)")
    args = parser.parse_args(argv)
    generator = LoadGenerator(
        args.url,
        rate=args.rate,
        mix=parse_mix(args.mix),
        burst_every=args.burst_every,
        burst_size=args.burst_size,
        slow_seconds=args.slow_seconds,
        seed=args.seed,
    )
    generator.wait_ready(args.wait_ready)
    try:
        summary = generator.run(count=args.count, duration=args.duration)
    except KeyboardInterrupt:
        summary = generator.summary
    print(json.dumps(summary.as_dict()), flush=True)
    return 0 if summary.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
