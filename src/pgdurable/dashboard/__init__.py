"""pgdurable's web dashboard: runs, a run's timeline, queues (with flow control), schedules,
workers, workflows and the audit log, with actions (on a run: cancel, pause, retry, resume,
fork, emit an event, send a message; pause or resume a queue; pause, resume or trigger a
schedule), each recorded in pgdurable.audit_log with who did it. Server-rendered HTML
(Starlette + Jinja2, a vendored htmx for live parts); needs the extra
``pip install "pgdurable[dashboard]"``. See docs/operations.md.

    from pgdurable.dashboard import create_app
    app = create_app(dsn="postgresql://...", read_only=True)   # any ASGI server, or mount it

Nothing else in pgdurable imports this package.
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f'the pgdurable dashboard needs its extra: pip install "pgdurable[dashboard]" ({exc})'
    ) from exc

from ._app import create_app
from ._security import TOKEN_ENV, InsecureBind, check_bind, load_token
from ._serve import DEFAULT_PORT, serve

__all__ = [
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "InsecureBind",
    "check_bind",
    "create_app",
    "load_token",
    "serve",
]
