"""The page: one HTML file, a script and a style sheet, read from the package (no build step,
no CDN). Only the token and the base URL go into the HTML, escaped; task data never does: the
script fetches it as JSON and renders it with ``textContent``."""

from __future__ import annotations

import functools
import html
from importlib import resources

__all__ = ["CSP", "asset", "render_page"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Content-Security-Policy of the page: its own script only, no inline code, no framing."""

ASSETS = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}


@functools.cache
def asset(name: str) -> str:
    """The text of a file of ``observable_tasks/console/static``."""
    return (
        resources.files("observable_tasks.console")
        .joinpath("static")
        .joinpath(name)
        .read_text("utf-8")
    )


def render_page(
    base: str, token: str, *, read_only: bool, has_trace: bool, replays: bool = False
) -> str:
    """The HTML with its settings in ``<meta>`` tags (attribute-escaped)."""
    settings = {
        "console-base": base,
        "console-token": token,
        "console-read-only": "1" if read_only else "0",
        "console-trace": "1" if has_trace else "0",
        "console-replays": "1" if replays else "0",
    }
    metas = "\n".join(
        f'<meta name="{name}" content="{html.escape(value, quote=True)}">'
        for name, value in settings.items()
    )
    page = asset("index.html")
    return page.replace("<!--SETTINGS-->", metas).replace("{{BASE}}", html.escape(base, quote=True))
