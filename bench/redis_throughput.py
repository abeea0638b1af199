"""End-to-end tasks per second through Redis, one worker process, side by side with peers.

``python -m bench.redis_throughput [--tasks 5000] [--repeat 3] [--systems ours,arq,...]``

Each system runs a worker process (100 tasks at once) and a producer process (100 enqueues in
flight) on one redis-server this script starts (free port, persistence off). A run: the
producer enqueues a warm-up task until the worker has run it, resets Redis' statistics, then
enqueues ``--tasks`` no-op tasks; the time is from the first enqueue to the last task's
execution (the worker writes it). Figures: tasks/s (median of ``--repeat`` runs, systems
interleaved); round trips per task (``total_reads_processed`` delta: socket reads Redis served,
a pipeline arriving in one read counts once); commands clients sent per task (one ``MONITOR``-ed
run, not timed: ``--no-monitor`` skips it); commands Redis ran per task (``INFO commandstats``
delta, commands inside Lua scripts included); bytes of Redis memory per finished task
(``used_memory`` delta, results kept as each system keeps them by default); Redis CPU per task.

Systems: ``ours`` (tracing with an SDK TracerProvider + BatchSpanProcessor to a discarding
exporter, and Prometheus metrics, in both processes), ``ours-logs`` (also the JSON log lines,
written to /dev/null), ``ours-bare`` (no telemetry), ``arq`` (``poll_delay=0.01``),
``arq-default`` (its default 0.5 s poll delay), ``saq`` (``concurrency=100``), ``taskiq``
(taskiq-redis ``RedisStreamBroker`` + ``RedisAsyncResultBackend``, ``max_async_tasks=100``).
Peers pin Redis clients that conflict with ours (arq: redis<6, saq[redis]: redis<8), so each
peer runs in its own virtualenv under ``--cache-dir``, created at first run with
``python -m venv`` and ``pip install`` of the pinned versions below.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
PEERS = {
    "arq": ["arq==0.28.0", "hiredis==3.5.0"],
    "saq": ["saq[redis]==0.26.4", "hiredis==3.5.0", "typing_extensions"],
    "taskiq": ["taskiq==0.13.0", "taskiq-redis==1.2.4", "hiredis==3.5.0"],
}
VENV_OF = {"arq": "arq", "arq-default": "arq", "saq": "saq", "taskiq": "taskiq"}
DEFAULT_SYSTEMS = ("ours", "ours-bare", "arq", "arq-default", "saq", "taskiq")


def _python_for(system: str, cache: Path) -> str:
    venv = VENV_OF.get(system)
    if venv is None:
        return sys.executable
    python = cache / venv / "bin" / "python"
    if not python.exists():
        print(f"creating the {venv} virtualenv in {cache / venv} (first run)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(cache / venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", *PEERS[venv]]
        subprocess.run(pip, check=True)
    return str(python)


def _start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(directory)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    return proc, f"redis://127.0.0.1:{port}/0"


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode}) before {path.name}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path.name} after {timeout}s")
        time.sleep(0.005)
    return path.read_text()


class _Monitor(threading.Thread):
    """Counts the commands clients send (and those run inside scripts) after ``bench-start``."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.sent = 0
        self.in_scripts = 0
        self.ready = threading.Event()

    def run(self) -> None:
        counting = False
        with self.client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self.ready.set()
            try:
                for command in monitor.listen():
                    text = command.get("command", "")
                    if not counting:
                        counting = text == "ECHO bench-start"
                        continue
                    if command.get("client_type") == "lua":
                        self.in_scripts += 1
                    elif not text.startswith(("INFO", "MONITOR")):
                        self.sent += 1
            except (redis.ConnectionError, ValueError):
                return


def run_once(
    system: str, url: str, n: int, cache: Path, work: Path, *, monitor: bool = False
) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    client.flushall()
    directory = Path(tempfile.mkdtemp(dir=work, prefix=f"{system}-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    python = _python_for(system, cache)
    peer = [python, "-m", "bench._peer", system]
    log = (directory / "worker.log").open("wb")
    worker = subprocess.Popen(
        [*peer, "worker", url, str(n), str(directory)], stdout=log, stderr=log, env=env, cwd=ROOT
    )
    watcher = None
    try:
        if monitor:
            watcher = _Monitor(url)
            watcher.start()
            watcher.ready.wait(5)
        produced = subprocess.run(
            [*peer, "produce", url, str(n), str(directory)],
            env=env, cwd=ROOT, capture_output=True, timeout=600,
        )  # fmt: skip
        if produced.returncode != 0:
            raise RuntimeError(f"{system} producer failed: {produced.stderr.decode()[-2000:]}")
        done = float(_wait_file(directory / "done", worker, 600))
        started, enqueued, used_before, cpu_before = (directory / "start").read_text().split()
        time.sleep(0.5)  # outcomes of the last tasks land; then what stays in Redis is counted
        stats = client.info("commandstats")
        calls = sum(
            int(v["calls"])
            for k, v in stats.items()
            if k not in ("cmdstat_info", "cmdstat_echo", "cmdstat_monitor")
        )
        reads = int(client.info("stats")["total_reads_processed"])  # reset with the stats
        used = int(client.info("memory")["used_memory"])
        cpu = client.info("cpu")
        redis_cpu = cpu["used_cpu_user"] + cpu["used_cpu_sys"] - float(cpu_before)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(5)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
        log.close()
        client.close()
    elapsed = done - float(started)
    result: dict[str, Any] = {
        "system": system,
        "tasks": n,
        "tasks_per_s": round(n / elapsed),
        "enqueue_per_s": round(n / (float(enqueued) - float(started))),
        "commands_per_task": round(calls / n, 2),
        "round_trips_per_task": round(reads / n, 3),
        "bytes_per_finished_task": round((used - int(used_before)) / n),
        "redis_cpu_us_per_task": round(redis_cpu / n * 1e6, 1),
    }
    if watcher is not None:
        watcher.client.close()
        watcher.join(5)
        result["sent_per_task"] = round(watcher.sent / n, 2)
        result["in_scripts_per_task"] = round(watcher.in_scripts / n, 2)
    shutil.rmtree(directory, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per system")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help="comma-separated")
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get(
            "OT_BENCH_CACHE", str(Path.home() / ".cache" / "observable-tasks-bench")
        ),
        help="where the peers' virtualenvs live (env OT_BENCH_CACHE)",
    )
    parser.add_argument("--no-monitor", action="store_true", help="skip the MONITOR-ed run")
    parser.add_argument("--json", action="store_true", help="one JSON line per run as well")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found (scripts/setup-tests installs it)")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    for system in systems:
        _python_for(system, cache)  # venvs first, so that no run waits for pip
    work = Path(tempfile.mkdtemp(prefix="ot-throughput-"))
    proc, url = _start_redis(work)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    try:
        for _ in range(args.repeat):
            for system in systems:  # interleaved: drift of the machine hits all alike
                one = run_once(system, url, args.tasks, cache, work)
                runs[system].append(one)
                if args.json:
                    print(json.dumps(one), flush=True)
        monitored = {}
        if not args.no_monitor:
            for system in systems:
                monitored[system] = run_once(system, url, args.tasks, cache, work, monitor=True)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{args.tasks} no-op tasks, one worker process, median of {args.repeat} "
        f"(Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n"
    )
    header = "| system | tasks/s (median) | runs | enqueue/s | round trips/task | "
    header += "commands sent/task | commands run/task | bytes/finished task | Redis CPU µs/task |"
    print(header)
    print("|---|---|---|---|---|---|---|---|---|")
    for system in systems:
        rs = runs[system]
        tps = statistics.median(r["tasks_per_s"] for r in rs)
        sent = monitored.get(system, {}).get("sent_per_task", "-")
        print(
            f"| {system} | {tps:.0f} | {', '.join(str(r['tasks_per_s']) for r in rs)} | "
            f"{statistics.median(r['enqueue_per_s'] for r in rs):.0f} | "
            f"{statistics.median(r['round_trips_per_task'] for r in rs)} | {sent} | "
            f"{statistics.median(r['commands_per_task'] for r in rs)} | "
            f"{statistics.median(r['bytes_per_finished_task'] for r in rs):.0f} | "
            f"{statistics.median(r['redis_cpu_us_per_task'] for r in rs)} |"
        )


if __name__ == "__main__":
    main()
