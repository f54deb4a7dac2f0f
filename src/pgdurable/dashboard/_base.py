"""What every page shares: the store, the templates (autoescaped), the CSRF signer, rendering
and the error page."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from . import _format
from ._security import SESSION_COOKIE, Csrf
from ._store import Store

HERE = Path(__file__).resolve().parent
_PLACEHOLDER = re.compile(r"PGDURABLEPARAM(\d+)X")


class Dashboard:
    """What every page needs: the store, the templates, the CSRF signer and the settings."""

    def __init__(
        self, store: Store, *, read_only: bool, page_size: int, poll_seconds: float
    ) -> None:
        self.store = store
        self.read_only = read_only
        self.page_size = page_size
        self.poll_seconds = poll_seconds
        self.csrf = Csrf()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every stored string is text, never markup
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(_format.FILTERS)
        self.env.globals.update(STATUSES=_format.STATUSES, ago=_format.ago, since=_format.since)

    def session(self, request: Request) -> tuple[str, bool]:
        """The request's session id, and whether it is new (then the response sets it)."""
        found = request.cookies.get(SESSION_COOKIE)
        if found and 20 <= len(found) <= 100:
            return found, False
        return self.csrf.new_session(), True

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        status_code: int = 200,
    ) -> HTMLResponse:
        session, new = self.session(request)

        # A route's path is looked up once per page with placeholders (Starlette's url_for
        # walks every route: a table of 200 rows with 3 links each spent 90 ms there).
        shapes: dict[tuple[str, tuple[str, ...]], str] = {}

        def url(route: str, query: str = "", /, **params: Any) -> str:
            names = tuple(sorted(params))
            shape = shapes.get((route, names))
            if shape is None:
                marked = {k: f"PGDURABLEPARAM{i}X" for i, k in enumerate(names)}
                shape = shapes[route, names] = request.url_for(route, **marked).path
            # one pass, so a value that looks like a placeholder stays a value; quoted: a
            # schedule name may hold < > : (Starlette decodes it on the way in)
            values = [quote(str(params[k]), safe="/") for k in names]
            path = _PLACEHOLDER.sub(lambda m: values[int(m.group(1))], shape)
            return f"{path}?{query}" if query else path

        html = self.env.get_template(template).render(
            **context,
            request=request,
            url=url,
            read_only=self.read_only,
            csrf_token=self.csrf.token(session),
            poll_ms=int(self.poll_seconds * 1000),
            poll=f"every {self.poll_seconds:g}s",
        )
        response = HTMLResponse(html, status_code=status_code)
        if new:
            response.set_cookie(
                SESSION_COOKIE,
                session,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path=request.scope.get("root_path") or "/",
            )
        return response

    async def read(self, request: Request, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(reader, *args)`` in a read-only transaction, off the event loop."""

        def work() -> Any:
            with self.store.reading() as db:
                return fn(db, *args)

        return await run_in_threadpool(work)

    def error(self, request: Request, status_code: int, message: str) -> Response:
        if request.headers.get("hx-request"):
            # a poll: keep the last good content on screen (its "updated" time shows its age)
            return Response(status_code=204)
        return self.render(
            request, "error.html", {"message": message, "status": status_code}, status_code
        )
