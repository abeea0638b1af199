"""Settings of the console (``mount_console`` keywords, or ``setup_tasks(console=...)``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["AuthHook", "ConsoleOptions"]

AuthHook = Callable[[Any], "bool | Awaitable[bool]"]
"""``auth(request) -> bool`` (sync or async): True lets the request in."""


@dataclass(frozen=True)
class ConsoleOptions:
    """Where the console is served and what it allows.

    ``path``: URL path of the page (its API is under ``{path}/api``). ``auth``: a callable given
    the request, returning (or resolving to) True to let it in. ``basic_auth``: ``(user,
    password)`` for ready HTTP basic auth. Both guard the page, its API and its event stream
    (with both set, both must pass). ``read_only``: no cancel (405). ``show_payloads``: show
    task arguments and results (they may hold secrets; off by default). ``trace_url``: a link
    template per task, ``{trace_id}`` replaced (``http://localhost:16686/trace/{trace_id}``).
    ``in_schema``: list the API in the app's OpenAPI document. ``keepalive``: seconds between
    keep-alive comments on an idle event stream. ``stream_max_age``: seconds after which an
    event stream ends (the browser reconnects at once; on Redis it resumes from its
    ``Last-Event-ID``), so that open pages never hold up a server's graceful shutdown longer.
    """

    path: str = "/console"
    auth: AuthHook | None = None
    basic_auth: tuple[str, str] | None = None
    read_only: bool = False
    show_payloads: bool = False
    trace_url: str | None = None
    in_schema: bool = False
    keepalive: float = 15.0
    stream_max_age: float = 30.0

    def __post_init__(self) -> None:
        path = self.path
        if not isinstance(path, str) or (
            path != "/" and (not path.startswith("/") or path.endswith("/"))
        ):
            raise ValueError(f"console path must start with '/' and not end with one: {path!r}")
        if any(c in path for c in "{}?#%\\ \"'<>"):
            raise ValueError(f"console path must be a plain path: {path!r}")
        if self.auth is not None and not callable(self.auth):
            raise TypeError(f"auth must be a callable given the request, got {self.auth!r}")
        if self.basic_auth is not None:
            pair = self.basic_auth
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not all(isinstance(x, str) and x for x in pair)
                or ":" in pair[0]
            ):
                raise ValueError("basic_auth must be a (user, password) pair of non-empty strings")
        if self.trace_url is not None and "{trace_id}" not in self.trace_url:
            raise ValueError(f"trace_url must contain '{{trace_id}}': {self.trace_url!r}")
        if not self.keepalive > 0:
            raise ValueError(f"keepalive must be > 0 seconds, got {self.keepalive!r}")
        if not self.stream_max_age > 0:
            raise ValueError(f"stream_max_age must be > 0 seconds, got {self.stream_max_age!r}")

    @property
    def base(self) -> str:
        """The path without a trailing slash ('' for the root)."""
        return "" if self.path == "/" else self.path
