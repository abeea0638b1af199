"""Who may see the console (auth hook, HTTP basic auth) and whether a POST is the page's own.

Cross-site request forgery: a cancel must carry the ``X-Console-Token`` header with the value
of the ``ot_console`` cookie the page was served with (a custom header makes a cross-site
``fetch`` need a CORS preflight, which the console never grants, and another site can read
neither the cookie nor the page), and an ``Origin`` (browsers send one on every POST) naming
the host the request was sent to. The token is random per page view and checked against the
cookie, so it works whichever worker process answers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

from .options import ConsoleOptions

__all__ = ["COOKIE", "TOKEN_HEADER", "authorized", "new_token", "same_origin", "token_ok"]

logger = logging.getLogger("observable_tasks")

TOKEN_HEADER = "x-console-token"
COOKIE = "ot_console"
REALM = 'Basic realm="observable-tasks console", charset="UTF-8"'


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _basic_ok(header: str, expected: tuple[str, str]) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, password = decoded.partition(":")
    if not sep:
        return False
    # Both compared, always, in constant time: no early exit tells which one was wrong.
    user_ok = hmac.compare_digest(user.encode(), expected[0].encode())
    password_ok = hmac.compare_digest(password.encode(), expected[1].encode())
    return user_ok and password_ok


async def authorized(request: Any, options: ConsoleOptions) -> tuple[int, dict[str, str]] | None:
    """``None`` when the request may go on, else ``(status, headers)`` to refuse it with."""
    if options.basic_auth is not None:
        header = request.headers.get("authorization") or ""
        if not _basic_ok(header, options.basic_auth):
            return 401, {"WWW-Authenticate": REALM}
    if options.auth is not None:
        try:
            allowed = options.auth(request)
            if inspect.isawaitable(allowed):
                allowed = await allowed
        except Exception as exc:
            logger.warning("observable_tasks: the console's auth hook raised %r", exc)
            return 401, {}  # a hook that raises lets nobody in
        if allowed is not True:
            return 401, {}
    return None


def token_ok(request: Any) -> bool:
    """The header token equals the page's cookie (both present, constant-time compare)."""
    sent = request.headers.get(TOKEN_HEADER) or ""
    cookie = _cookie(request.headers.get("cookie") or "", COOKIE)
    if not sent or not cookie:
        return False
    return hmac.compare_digest(sent.encode(), cookie.encode())


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def same_origin(request: Any) -> bool:
    """No foreign ``Origin`` (absent is fine: not a browser) and no cross-site fetch."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    netloc = urlsplit(origin).netloc.lower()
    hosts = {
        (request.headers.get("host") or "").lower(),
        (request.headers.get("x-forwarded-host") or "").split(",")[0].strip().lower(),
    }
    return bool(netloc) and netloc in hosts
