"""create_app: the dashboard as a Starlette ASGI app, its routes and error handlers."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._errors import PgDurableError, RunNotFound
from .._metrics import store_exposition
from . import _actions, _operate, _pages
from ._base import HERE, Dashboard
from ._security import SecurityHeaders, TokenAuth, check_token
from ._store import DatabaseUnavailable, Store

log = logging.getLogger("pgdurable.dashboard")


def _handlers(dash: Dashboard) -> dict[Any, Callable[[Request, Exception], Any]]:
    async def unavailable(request: Request, exc: Exception) -> Response:
        return dash.error(request, 503, str(exc))

    async def not_found(request: Request, exc: Exception) -> Response:
        return dash.error(request, 404, str(exc))

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("dashboard: %s %s failed", request.method, request.url.path, exc_info=exc)
        return dash.error(
            request, 500, f"internal error ({type(exc).__name__}); the server log has the details"
        )

    async def denied(request: Request, exc: Exception) -> Response:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "permission denied"
        return dash.error(
            request,
            403,
            f"the dashboard's database role may not do this ({first}): give its login the "
            "role pgdurable_admin, or pgdurable_client for reading, cancel, emit and send "
            "(docs/security.md)",
        )

    return {
        Exception: internal,
        psycopg.errors.InsufficientPrivilege: denied,
        DatabaseUnavailable: unavailable,
        PgDurableError: unavailable,  # schema missing, outdated or untrusted
        RunNotFound: not_found,
    }


def create_app(
    dsn: str | None = None,
    *,
    read_only: bool = False,
    auth: str | None = None,
    page_size: int = 50,
    poll_seconds: float = 3.0,
    statement_timeout: str = "10s",
) -> Starlette:
    """The dashboard as an ASGI app for ``dsn`` (default: $PGDURABLE_DSN).

    ``auth``: a token every request must carry (``Authorization: Bearer TOKEN``, or basic auth
    with any user name and the token as password); None leaves authentication to you, as when
    the app is mounted behind your own. ``read_only`` hides every action and refuses its POSTs.
    The app opens its own small connection pool on first use; its lifespan closes it (mounted
    in another app, close it with ``app.state.dashboard.store.close()``).
    """
    dsn = dsn or os.environ.get("PGDURABLE_DSN")
    if not dsn:
        raise ValueError("create_app needs a database: pass dsn= or set $PGDURABLE_DSN")
    if not 5 <= page_size <= 500:
        raise ValueError(f"page_size must be between 5 and 500, got {page_size}")
    if not 0.5 <= poll_seconds <= 3600:
        raise ValueError(f"poll_seconds must be between 0.5 and 3600, got {poll_seconds}")
    token = check_token(auth, "auth=") if auth is not None else None

    dash = Dashboard(
        Store(dsn, statement_timeout=statement_timeout),
        read_only=read_only,
        page_size=page_size,
        poll_seconds=poll_seconds,
    )

    def bind(fn: Callable[[Dashboard, Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Any:
            return await fn(dash, request)

        endpoint.__name__ = getattr(fn, "__name__", "endpoint")
        return endpoint

    async def home(request: Request) -> Response:
        return RedirectResponse(request.url_for("runs").path, status_code=302)

    async def metrics(request: Request) -> Response:
        # Prometheus: queue depth and ages read from the database (docs/operations.md#metrics)
        status, body, media_type = await run_in_threadpool(store_exposition, dash.store)
        return Response(body, status_code=status, media_type=media_type)

    routes = [
        Route("/", home, name="home"),
        Route("/metrics", metrics, name="metrics"),
        Route("/runs", bind(_pages.runs), name="runs"),
        Route("/runs/counts", bind(_pages.counts), name="counts"),
        Route("/runs/{run_id}", bind(_pages.run), name="run"),
        Route("/runs/{run_id}/live", bind(_pages.run_live), name="run_live"),
        Route(
            "/runs/{run_id}/{action}",
            bind(_actions.confirm),
            methods=["GET"],
            name="confirm",
        ),
        Route(
            "/runs/{run_id}/{action}",
            bind(_actions.perform),
            methods=["POST"],
            name="perform",
        ),
        Route("/queues", bind(_pages.queues), name="queues"),
        Route(
            "/queues/{name}/{action}",
            bind(_operate.confirm_queue),
            methods=["GET"],
            name="queue_confirm",
        ),
        Route(
            "/queues/{name}/{action}",
            bind(_operate.perform_queue),
            methods=["POST"],
            name="queue_perform",
        ),
        Route("/schedules", bind(_pages.schedules), name="schedules"),
        Route(
            "/schedules/{name}/{action}",
            bind(_operate.confirm_schedule),
            methods=["GET"],
            name="schedule_confirm",
        ),
        Route(
            "/schedules/{name}/{action}",
            bind(_operate.perform_schedule),
            methods=["POST"],
            name="schedule_perform",
        ),
        Route("/audit", bind(_pages.audit), name="audit"),
        Route("/workers", bind(_pages.workers), name="workers"),
        Route("/workflows", bind(_pages.workflows), name="workflows"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if token is not None:
        middleware.append(Middleware(TokenAuth, token=token))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(dash.store.close)

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=_handlers(dash),
        lifespan=lifespan,
    )
    app.state.dashboard = dash
    return app
