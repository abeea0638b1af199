"""Run the benchmark: ``python -m bench`` (full) or ``python -m bench --smoke`` (CI).

Everything runs in one process and one event loop. Throughput variants are interleaved
round-robin (the order rotates every round) with ``gc.collect()`` before each run; the table
reports medians, and every ratio is computed from medians of this same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["main", "Settings"]

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Settings:
    n: int = 10_000  # tasks per throughput run
    reps: int = 7  # rounds of every variant
    wave: int = 500  # tasks created before the wave is awaited
    warmup: int = 2_000
    memory_tasks: int = 100_000
    flat_tasks: int = 1_000_000
    flat_history: int = 10_000
    latency_running: int = 10_000
    latency_samples: int = 5_000
    scrape_functions: int = 100
    scrapes: int = 30
    flat_variant: str = "instrumented"
    smoke: bool = False

    @classmethod
    def smoke_settings(cls) -> Settings:
        return cls(
            n=300, reps=1, wave=100, warmup=100, memory_tasks=500, flat_tasks=3_000,
            flat_history=500, latency_running=300, latency_samples=100, scrape_functions=10,
            scrapes=3, smoke=True,
        )  # fmt: skip


# -- targets ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    name: str
    rule: str
    value: float | None
    limit: float
    unit: str = "x"
    per_round: float | None = None  # median of the ratio taken round by round

    @property
    def borderline(self) -> bool:
        """The per-round statistic gives the other verdict: noise decides, re-run."""
        if self.value is None or self.per_round is None:
            return False
        return (self.value <= self.limit) != (self.per_round <= self.limit)

    @property
    def passed(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]


def _targets(results: dict[str, Any]) -> list[Target]:
    med = {k: v["median_us"] for k, v in results.get("throughput", {}).items()}

    def ratio(a: str, b: str) -> float | None:
        return med[a] / med[b] if a in med and b in med else None

    overhead = None
    if {"ours-instrumented", "ours-core", "sdk-floor"} <= med.keys():
        overhead = (med["ours-instrumented"] - med["ours-core"]) / med["sdk-floor"]
    in_place = None  # the same calls made from a bare middleware in the same manager
    if {"ours-instrumented", "ours-core", "sdk-floor-in-manager"} <= med.keys():
        in_place = (med["ours-instrumented"] - med["ours-core"]) / (
            med["sdk-floor-in-manager"] - med["ours-core"]
        )
    rr = results.get("per_round_ratios", {})
    mem = results.get("memory", {})
    flat = results.get("flat_memory")
    flat_kib = None
    if flat is not None:
        flat_kib = max(flat["rss_growth_bytes"], 0) / 1024
    return [
        Target("core vs raw asyncio", "ours-core ≤ 2.0 x raw-asyncio",
               ratio("ours-core", "raw-asyncio"), 2.0,
               per_round=rr.get("ours-core/raw-asyncio")),
        Target("instrumented vs nexios-contrib", "ours-instrumented ≤ 2.0 x nexios-contrib",
               ratio("ours-instrumented", "nexios-contrib"), 2.0,
               per_round=rr.get("ours-instrumented/nexios-contrib")),
        Target("instrumented vs taskiq+telemetry", "ours-instrumented ≤ 0.4 x taskiq-otel-prom",
               ratio("ours-instrumented", "taskiq-otel-prom"), 0.4,
               per_round=rr.get("ours-instrumented/taskiq-otel-prom")),
        Target("telemetry overhead vs SDK floor",
               "(ours-instrumented - ours-core) ≤ 1.15 x sdk-floor", overhead, 1.15,
               per_round=rr.get("(instrumented-core)/floor")),
        Target("telemetry overhead vs the same SDK calls in place",
               "(ours-instrumented - ours-core) ≤ 1.15 x (sdk-floor-in-manager - ours-core)",
               in_place, 1.15, per_round=rr.get("(instrumented-core)/(in-manager-core)")),
        Target("memory per retained task (core)", "≤ 1024 B per finished task in history",
               mem.get("ours-core", {}).get("bytes_per_task"), 1024, " B"),
        Target("memory per retained task (instrumented)", "≤ 1024 B per finished task in history",
               mem.get("ours-instrumented", {}).get("bytes_per_task"), 1024, " B"),
        Target("flat memory over the long run",
               "RSS growth ≤ 4 MiB once history is full (bounded max_task_history)",
               flat_kib, 4096, " KiB"),
    ]  # fmt: skip


# -- environment --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(os.cpu_count())
    versions = {}
    for dist in (
        "observable-tasks", "nexios", "nexios-contrib", "taskiq", "opentelemetry-sdk",
        "prometheus_client", "structlog", "pyinstrument",
    ):  # fmt: skip
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "observable_tasks"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if dirty:
            commit += " (+ uncommitted changes in observable_tasks/)"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "loadavg_at_start": [round(x, 2) for x in load],
        "nproc": nproc,
        "cpu_model": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "commit": commit,
        "versions": versions,
    }


def quiet_logging() -> None:
    """Root logging at WARNING with a handler, before any library configures it.

    nexios-contrib's TaskManager calls ``logging.basicConfig(level=INFO)``, which would turn on
    taskiq's per-task INFO line ("Executing task ...") and print it to stderr: a root that already
    has a handler makes that call a no-op, and every variant sees the same stdlib logging.
    """
    root = logging.getLogger()
    root.addHandler(logging.NullHandler())
    root.setLevel(logging.WARNING)


# -- the run ------------------------------------------------------------------------------------


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def run(settings: Settings, sections: set[str]) -> dict[str, Any]:
    from bench.floor import DEFAULT_COUNTS, SdkFloor, calibrate
    from bench.instrumented import Telemetry, instrumentation_available
    from bench.measure import (
        create_latency,
        flat_memory,
        retained_memory,
        retained_memory_nexios,
        scrape_time,
    )
    from bench.variants import Ours, make_variants

    s = settings
    results: dict[str, Any] = {"settings": dataclasses.asdict(s), "machine": machine()}
    has_telemetry = instrumentation_available()
    results["instrumented_available"] = has_telemetry
    telemetry = Telemetry() if has_telemetry else None
    counts = dict(DEFAULT_COUNTS)
    if telemetry is not None:
        calib = Ours(telemetry)
        counts = await calibrate(lambda: calib.make_manager(1000), telemetry)
    results["calls_per_task"] = counts
    _say(f"telemetry calls per task: {counts}")

    variants = make_variants(
        lambda noop: (Telemetry(noop=True) if has_telemetry else None) if noop else telemetry,
        lambda noop: (
            SdkFloor(counts, telemetry.processors, noop=noop) if telemetry is not None else None
        ),
    )
    if "throughput" in sections:
        for v in variants:
            await v.setup()
        for v in variants:  # warm-up: imports, caches, label children
            gc.collect()
            await v.run(s.warmup, min(s.wave, s.warmup))
        samples: dict[str, list[float]] = {v.key: [] for v in variants}
        for rnd in range(s.reps):
            shift = rnd % len(variants)
            for v in variants[shift:] + variants[:shift]:
                gc.collect()
                elapsed = await v.run(s.n, s.wave)
                v.settle()
                samples[v.key].append(elapsed / s.n * 1e6)
            _say(f"round {rnd + 1}/{s.reps}: " + ", ".join(
                f"{k}={vals[-1]:.1f}" for k, vals in samples.items()
            ))  # fmt: skip
        throughput: dict[str, Any] = {}
        for v in variants:
            vals = samples[v.key]
            throughput[v.key] = {
                "title": v.title,
                "median_us": statistics.median(vals),
                "min_us": min(vals),
                "max_us": max(vals),
                "samples_us": vals,
                "info": v.info(),
            }
        for v in variants:
            await v.teardown()
        results["throughput"] = throughput
        # Ratios per round as well: neighbours in time share the machine's mood.
        results["per_round_ratios"] = _per_round(samples)

    ours_core = Ours(None)
    ours_inst = Ours(telemetry) if telemetry is not None else None
    if "memory" in sections:
        _say("memory per retained task ...")
        mem: dict[str, Any] = {}
        gc.collect()
        mem["ours-core"] = await retained_memory(ours_core.make_manager, s.memory_tasks, s.wave)
        if ours_inst is not None:
            assert telemetry is not None
            gc.collect()
            mem["ours-instrumented"] = await retained_memory(
                ours_inst.make_manager, s.memory_tasks, s.wave, flush=telemetry.flush
            )
        gc.collect()
        mem["nexios-contrib"] = await retained_memory_nexios(s.memory_tasks, s.wave)
        results["memory"] = mem
    if "flat" in sections:
        subject = ours_inst if ours_inst and s.flat_variant == "instrumented" else ours_core
        _say(f"flat memory over {s.flat_tasks} tasks ({subject.key}) ...")
        gc.collect()
        flat = await flat_memory(
            subject.make_manager, s.flat_tasks, s.wave, s.flat_history,
            flush=telemetry.flush if telemetry is not None else None,
        )  # fmt: skip
        flat["variant"] = subject.key
        results["flat_memory"] = flat
    if "latency" in sections:
        _say("create_task latency under load ...")
        lat: dict[str, Any] = {}
        for v in [ours_core, *([ours_inst] if ours_inst else [])]:
            gc.collect()
            lat[v.key] = await create_latency(v.make_manager, s.latency_running, s.latency_samples)
        gc.collect()
        lat["nexios-contrib"] = await create_latency(
            None, s.latency_running, s.latency_samples, nexios=True
        )
        results["latency"] = lat
    if "scrape" in sections and has_telemetry:
        _say("/metrics scrape ...")
        scrape_tel = Telemetry()
        subject = Ours(scrape_tel)
        results["scrape"] = await scrape_time(
            subject.make_manager, scrape_tel.registry, s.scrape_functions, s.scrapes
        )
        scrape_tel.shutdown()
    if telemetry is not None:
        telemetry.shutdown()
    results["targets"] = [
        {**dataclasses.asdict(t), "verdict": t.verdict, "borderline": t.borderline}
        for t in _targets(results)
    ]
    return results


def _per_round(samples: dict[str, list[float]]) -> dict[str, float]:
    pairs = [
        ("ours-core", "raw-asyncio"),
        ("ours-instrumented", "nexios-contrib"),
        ("ours-instrumented", "taskiq-otel-prom"),
    ]
    out: dict[str, float] = {}
    for a, b in pairs:
        if a in samples and b in samples:
            out[f"{a}/{b}"] = statistics.median(
                x / y for x, y in zip(samples[a], samples[b], strict=True)
            )
    keys = ("ours-instrumented", "ours-core", "sdk-floor")
    if all(k in samples for k in keys):
        out["(instrumented-core)/floor"] = statistics.median(
            (i - c) / f for i, c, f in zip(*(samples[k] for k in keys), strict=True)
        )
    keys = ("ours-instrumented", "ours-core", "sdk-floor-in-manager")
    if all(k in samples for k in keys):
        out["(instrumented-core)/(in-manager-core)"] = statistics.median(
            (i - c) / (m - c) for i, c, m in zip(*(samples[k] for k in keys), strict=True)
        )
    return out


# -- reporting ----------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    """The report as Markdown (printed, and pasted into docs/benchmarks.md)."""
    out: list[str] = []
    m = results["machine"]
    s = results["settings"]
    out.append(
        f"Machine: {m['nproc']} CPUs (nproc), {m['cpu_model']}, {m['python']}, {m['platform']}; "
        f"observable-tasks at {m['commit']}."
    )
    end_load = results.get("loadavg_at_end")
    out.append(
        f"Load average (1/5/15 min) at start {m['loadavg_at_start']}"
        + (f", at end {end_load}" if end_load else "")
        + " (other work shares this machine)."
    )
    out.append(
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v is not None)
    )
    out.append("")
    thr = results.get("throughput")
    if thr:
        out.append(
            f"Throughput: {s['n']} tasks per run in waves of {s['wave']}, {s['reps']} rounds "
            "(round-robin, rotating order), µs per task."
        )
        out.append("")
        refs = [k for k in ("raw-asyncio", "nexios-contrib", "taskiq-otel-prom") if k in thr]
        head = "| variant | median µs/task | min | max | " + " | ".join(f"x {r}" for r in refs)
        out.append(head + " |")
        out.append("|" + "---|" * (4 + len(refs)))
        for key, row in thr.items():
            cells = [
                f"`{key}` — {row['title']}",
                f"{row['median_us']:.2f}",
                f"{row['min_us']:.2f}",
                f"{row['max_us']:.2f}",
            ]
            cells += [f"{row['median_us'] / thr[r]['median_us']:.2f}" for r in refs]
            out.append("| " + " | ".join(cells) + " |")
        if {"ours-instrumented", "ours-core", "sdk-floor"} <= thr.keys():
            diff = thr["ours-instrumented"]["median_us"] - thr["ours-core"]["median_us"]
            floor = thr["sdk-floor"]["median_us"]
            out.append("")
            out.append(
                f"Telemetry overhead (instrumented - core): {diff:.2f} µs/task = "
                f"{diff / floor:.2f} x the SDK floor ({floor:.2f} µs/task)."
            )
            if {"ours-noop-sdk", "sdk-floor-noop"} <= thr.keys():
                noop = thr["ours-noop-sdk"]["median_us"] - thr["ours-core"]["median_us"]
                floor_noop = thr["sdk-floor-noop"]["median_us"]
                own = noop - floor_noop
                in_situ = diff - noop
                sdk = floor - floor_noop
                out.append(
                    f"Of that, the library's own code (no-op tracer and logger, instrumented - "
                    f"core, minus the floor's loop with the same no-ops, {floor_noop:.2f}): "
                    f"{own:.2f} µs/task = {own / floor:.2f} x the SDK floor. The SDK calls "
                    f"themselves cost {in_situ:.2f} µs/task inside the running manager against "
                    f"{sdk:.2f} in the floor's loop ({in_situ / sdk:.2f} x)."
                )
            if "sdk-floor-in-manager" in thr:
                placed = thr["sdk-floor-in-manager"]["median_us"] - thr["ours-core"]["median_us"]
                out.append(
                    f"The same SDK calls made from a bare observer and middleware in the same "
                    f"manager (`sdk-floor-in-manager` - core): {placed:.2f} µs/task = "
                    f"{placed / floor:.2f} x the loop floor; the library's telemetry costs "
                    f"{diff / placed:.2f} x that."
                )
            if {"sdk-floor-in-asyncio", "raw-asyncio"} <= thr.keys():
                plain = thr["sdk-floor-in-asyncio"]["median_us"] - thr["raw-asyncio"]["median_us"]
                out.append(
                    f"The same calls in plain asyncio tasks (`sdk-floor-in-asyncio` - raw): "
                    f"{plain:.2f} µs/task = {plain / floor:.2f} x the loop floor."
                )
            bound = thr["ours-core"]["median_us"] + floor
            peers = [k for k in ("nexios-contrib", "taskiq-otel-prom") if k in thr]
            out.append(
                f"Lower bound for any instrumented variant making these calls (core + floor): "
                f"{bound:.2f} µs/task = "
                + ", ".join(f"{bound / thr[k]['median_us']:.2f} x {k}" for k in peers)
                + "."
            )
        out.append("")
        cpt = results.get("calls_per_task", {})
        out.append(
            "SDK calls per task (counted on a real instrumented run; the floor repeats them): "
            + ", ".join(f"{k} {v:g}" for k, v in cpt.items())
        )
        rr = results.get("per_round_ratios", {})
        if rr:
            out.append(
                "Median of per-round ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in rr.items())
            )
        for key, row in thr.items():
            if row["info"]:
                out.append(f"- `{key}`: {row['info']}")
        out.append("")
    mem = results.get("memory")
    if mem:
        out.append(
            "Memory per retained finished task (tracemalloc, "
            f"{s['memory_tasks']} tasks kept in history):"
        )
        out.append("")
        out.append("| variant | bytes per task |")
        out.append("|---|---|")
        for key, row in mem.items():
            out.append(f"| `{key}` | {row['bytes_per_task']:.0f} |")
        out.append("")
        for key, row in mem.items():
            if row.get("top_allocations"):
                n = row["tasks"]
                sites = ", ".join(
                    f"{a['where'].split('site-packages/')[-1].replace(str(ROOT) + '/', '')} "
                    f"{a['bytes'] / n:.0f}"
                    for a in row["top_allocations"]
                )
                out.append(f"- `{key}` bytes per task by allocation site: {sites}")
        out.append("")
    flat = results.get("flat_memory")
    if flat:
        pts = ", ".join(
            f"{p['tasks'] / 1000:g}k: {p['rss_bytes'] / 2**20:.1f}" for p in flat["points"]
        )
        out.append(
            f"Memory over {flat['total']} tasks (`{flat['variant']}`, max_task_history="
            f"{flat['history']}, {flat['seconds']:.0f} s): RSS growth after {flat['from_tasks']} "
            f"tasks {flat['rss_growth_bytes'] / 1024:.0f} KiB "
            f"({flat['rss_growth_per_task']:.3f} B/task), allocated blocks "
            f"{flat['blocks_growth']:+d}, at most {flat['max_known_tasks']} tasks known. "
            f"RSS MiB by tasks done: {pts}."
        )
        out.append("")
    lat = results.get("latency")
    if lat:
        out.append(
            f"`create_task` latency with {s['latency_running']} tasks running "
            f"({s['latency_samples']} samples):"
        )
        out.append("")
        out.append("| variant | p50 µs | p99 µs | max µs |")
        out.append("|---|---|---|---|")
        for key, row in lat.items():
            out.append(
                f"| `{key}` | {row['p50_us']:.1f} | {row['p99_us']:.1f} | {row['max_us']:.1f} |"
            )
        out.append("")
    sc = results.get("scrape")
    if sc:
        out.append(
            f"`/metrics` exposition with {sc['functions']} task functions x statuses "
            f"{', '.join(sc['statuses'])}: median {sc['median_ms']:.2f} ms, max "
            f"{sc['max_ms']:.2f} ms over {sc['scrapes']} scrapes; {sc['bytes']} bytes, "
            f"{sc['series']} samples, {sc['task_labels']} distinct task labels."
        )
        out.append("")
    out.append("Targets:")
    out.append("")
    out.append("| target | rule | value (from medians) | per-round median | verdict |")
    out.append("|---|---|---|---|---|")
    for t in results["targets"]:
        value = "—" if t["value"] is None else f"{t['value']:.2f}{t['unit']}"
        pr = "—" if t["per_round"] is None else f"{t['per_round']:.2f}{t['unit']}"
        note = " (borderline: the per-round ratio disagrees)" if t["borderline"] else ""
        out.append(f"| {t['name']} | {t['rule']} | {value} | {pr} | **{t['verdict']}**{note} |")
    if not results.get("instrumented_available"):
        out.append("")
        out.append(
            "observable_tasks.telemetry.instrument is not available yet: the instrumented "
            "variant and the targets that need it were not measured."
        )
    return "\n".join(out)


SECTIONS = ("throughput", "memory", "flat", "latency", "scrape")


def parse(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--smoke", action="store_true", help="tiny run for CI (seconds, no timing claims)"
    )
    p.add_argument("--n", type=int, help="tasks per throughput run")
    p.add_argument("--reps", type=int, help="rounds of every variant")
    p.add_argument("--wave", type=int, help="tasks per wave")
    p.add_argument("--flat-tasks", type=int, help="tasks in the long memory run")
    p.add_argument("--memory-tasks", type=int, help="tasks retained for memory per task")
    p.add_argument(
        "--flat-variant",
        choices=("core", "instrumented"),
        default="instrumented",
        help="manager of the long memory run (instrumented includes the core)",
    )
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}"
    )
    p.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    p.add_argument("--markdown", type=Path, help="also write the Markdown report here")
    p.add_argument(
        "--profile", metavar="VARIANT", help="profile one variant with pyinstrument instead"
    )
    p.add_argument("--profile-out", type=Path, help="directory for the profile's HTML and text")
    args = p.parse_args(argv)
    s = Settings.smoke_settings() if args.smoke else Settings()
    for field in ("n", "reps", "wave", "flat_tasks", "memory_tasks"):
        value = getattr(args, field)
        if value is not None:
            setattr(s, field, value)
    return s, args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse(argv)
    settings.flat_variant = args.flat_variant
    quiet_logging()
    if args.profile:
        from bench.profile import profile_variant

        return profile_variant(args.profile, settings, args.profile_out)
    sections = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections: {sorted(unknown)}")
    started = time.perf_counter()
    results = asyncio.run(run(settings, sections))
    results["seconds"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = render(results)
    print(report)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.markdown:
        args.markdown.write_text(report + "\n")
    _say(f"done in {results['seconds']:.0f} s")
    return 0
