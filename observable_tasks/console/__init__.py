"""The task console: a live web page, its JSON admin API and event stream (issue 11).

``mount_console(app, manager)`` or ``setup_tasks(app, console=True)`` serves it at
``/console``; see :class:`ConsoleOptions` for auth, read-only mode, payloads and trace links.
"""

from __future__ import annotations

from .api import mount_console
from .options import AuthHook, ConsoleOptions
from .views import task_view

__all__ = ["AuthHook", "ConsoleOptions", "mount_console", "task_view"]
