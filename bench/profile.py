"""Profile one variant with pyinstrument and list its hot spots (``python -m bench --profile``).

Prints the functions with the most *self* time (time spent in their own code, children
excluded) and the observable_tasks functions with the most *inclusive* time, each with its
``file:line`` (the line where the function is defined) and its share of the profiled run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["profile_variant", "hot_spots"]


def _where(frame: Any) -> str:
    path = frame.file_path or "?"
    for marker in ("site-packages/", "/work/main/", str(Path.cwd()) + os.sep):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{frame.line_no or 0}"


def hot_spots(root: Any, top: int = 25) -> dict[str, list[dict[str, Any]]]:
    """Self time by function and inclusive time of observable_tasks functions."""
    total = root.time or 1e-12
    self_time: dict[tuple[str, str], float] = defaultdict(float)
    inclusive: dict[tuple[str, str], float] = defaultdict(float)

    def walk(frame: Any, open_keys: frozenset[tuple[str, str]]) -> None:
        key = (frame.function, _where(frame))
        own = frame.total_self_time  # includes pyinstrument's synthetic "[self]"/"[await]"
        for child in frame.children:
            if child.is_synthetic and child.function != "[self]":  # time spent awaiting
                own -= child.time
                self_time[(f"{child.function} in {frame.function}", key[1])] += child.time
        self_time[key] += own
        if key not in open_keys:  # recursion or re-entry counts once
            inclusive[key] += frame.time
        for child in frame.children:
            if not child.is_synthetic:
                walk(child, open_keys | {key})

    walk(root, frozenset())

    def rows(table: dict[tuple[str, str], float], only_ours: bool) -> list[dict[str, Any]]:
        items = sorted(table.items(), key=lambda kv: -kv[1])
        out = []
        for (function, where), seconds in items:
            if only_ours and not where.startswith("observable_tasks/"):
                continue
            out.append(
                {
                    "function": function,
                    "where": where,
                    "seconds": seconds,
                    "percent": 100 * seconds / total,
                }
            )
            if len(out) >= top:
                break
        return out

    return {
        "self": rows(self_time, only_ours=False),
        "inclusive_ours": rows(inclusive, only_ours=True),
    }


def _format(spots: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["Self time (function body only):"]
    for r in spots["self"]:
        lines.append(f"  {r['percent']:5.1f}%  {r['function']:<40} {r['where']}")
    lines.append("Inclusive time of observable_tasks functions:")
    for r in spots["inclusive_ours"]:
        lines.append(f"  {r['percent']:5.1f}%  {r['function']:<40} {r['where']}")
    return "\n".join(lines)


def profile_variant(key: str, settings: Any, out_dir: Path | None) -> int:
    from pyinstrument import Profiler

    from bench.floor import DEFAULT_COUNTS, SdkFloor, calibrate
    from bench.instrumented import Telemetry, instrumentation_available
    from bench.variants import Ours, make_variants

    async def go() -> Any:
        telemetry = Telemetry() if instrumentation_available() else None
        counts = dict(DEFAULT_COUNTS)
        if telemetry is not None:
            calib = Ours(telemetry)
            counts = await calibrate(lambda: calib.make_manager(1000), telemetry)
        variants = make_variants(  # both factories take ``noop`` (as in bench.run)
            lambda noop: (
                (Telemetry(noop=True) if telemetry is not None else None) if noop else telemetry
            ),
            lambda noop: (
                SdkFloor(counts, telemetry.processors, noop=noop) if telemetry is not None else None
            ),
        )
        chosen = [v for v in variants if v.key == key]
        if not chosen:
            raise SystemExit(f"unknown variant {key!r}; one of {[v.key for v in variants]}")
        variant = chosen[0]
        await variant.setup()
        await variant.run(settings.warmup, min(settings.wave, settings.warmup))
        gc.collect()
        profiler = Profiler(interval=0.001, async_mode="disabled")
        profiler.start()
        elapsed = await variant.run(settings.n, settings.wave)
        profiler.stop()
        await variant.teardown()
        if telemetry is not None:
            telemetry.shutdown()
        return profiler, elapsed

    profiler, elapsed = asyncio.run(go())
    session = profiler.last_session
    root = session.root_frame()
    spots = hot_spots(root)
    header = (
        f"pyinstrument profile of {key}: {settings.n} tasks, {elapsed / settings.n * 1e6:.1f} "
        f"µs/task under the profiler, {session.sample_count} samples"
    )
    text = header + "\n" + _format(spots)
    print(text)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{key}.txt").write_text(
            text + "\n\n" + profiler.output_text(unicode=True, color=False, show_all=False)
        )
        (out_dir / f"{key}.html").write_text(profiler.output_html())
        print(f"wrote {out_dir / (key + '.txt')} and .html", file=sys.stderr)
    return 0
