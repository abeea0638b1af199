"""A private redis-server for tests: free port, own directory, start/stop/restart/kill.

Never the machine's service on 6379. Persistence is off unless ``appendonly=True`` (AOF with
fsync always, so a SIGKILL loses nothing a test wrote). Import as ``from redis_server import ...``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from helpers import free_port

__all__ = ["RedisServer", "redis_server_available"]


def redis_server_available() -> bool:
    """Whether a ``redis-server`` binary is on PATH (scripts/setup-tests installs it)."""
    return shutil.which("redis-server") is not None


class RedisServer:
    """One redis-server process on 127.0.0.1:<free port> with its data in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        port: int | None = None,
        password: str | None = None,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.password = password
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL to connect with (``redis://:<password>@...`` when started with one)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                if self.password:
                    pw = self.password.encode()
                    sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
                    if not sock.recv(64).startswith(b"+OK"):
                        return False
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or start again, same port and directory) and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--dir", str(self.directory), "--daemonize", "no"]
        args += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.appendonly:
            args += ["--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on {self.port}")
            time.sleep(0.02)
        return self

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "redis.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _end(self, sig: int, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None

    def stop(self) -> None:
        """Graceful stop (SIGTERM: the AOF is flushed)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), as in a crash."""
        self._end(signal.SIGKILL)

    def restart(self, *, kill: bool = False) -> RedisServer:
        """Stop (or kill) and start again on the same port with the same data directory."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()
