"""What every action shares, on runs, queues or schedules: who acts (for the audit log), the
refusals (read-only, CSRF, Origin), reading its form, and the log line of what was done."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from ._base import Dashboard
from ._security import SESSION_COOKIE, same_origin
from ._store import MAX_ACTOR

log = logging.getLogger("pgdurable.dashboard")

MAX_FORM = 1 << 20  # bytes of a POSTed form: a payload typed into a dashboard stays small
ACTOR_PREFIX = "dashboard:"


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def who(request: Request) -> str:
    """The person behind a request: the dashboard token's user, else the user of the embedding
    app's authentication (Starlette's request.user), else anonymous; with the client address."""
    user = request.scope.get("state", {}).get("pgdurable_user")
    if not user:
        found = request.scope.get("user")
        if found is not None and getattr(found, "is_authenticated", False):
            user = str(getattr(found, "display_name", "") or "authenticated user")
    client = request.client.host if request.client else "unknown address"
    return f"{user or 'anonymous'}@{client}"


def actor(request: Request) -> str:
    """Who the audit log records: ``dashboard:`` and who(), cut to what the column holds
    (the address, at the end, is kept)."""
    name = who(request)
    room = MAX_ACTOR - len(ACTOR_PREFIX)
    if len(name) > room:
        user, _, client = name.rpartition("@")
        name = user[: max(room - len(client) - 2, 1)] + "\u2026@" + client
    return ACTOR_PREFIX + name


def refuse_if_read_only(dash: Dashboard) -> None:
    if dash.read_only:
        raise Refused(403, "this dashboard is read-only: actions are disabled")


async def read_form(request: Request) -> dict[str, str]:
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Refused(415, "actions take a form (application/x-www-form-urlencoded)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise Refused(413, f"the form is larger than {MAX_FORM} bytes")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, f"the form cannot be read: {exc}") from exc


async def checked_form(dash: Dashboard, request: Request, page: str) -> dict[str, str]:
    """The POSTed form, once its CSRF token (and Origin, when sent) prove it came from a page
    of this dashboard in this session; ``page`` names where to start again."""
    form = await read_form(request)
    host = request.headers.get("host")
    if not same_origin(request.headers.get("origin"), host) or not dash.csrf.valid(
        request.cookies.get(SESSION_COOKIE), form.get("csrf")
    ):
        raise Refused(
            403,
            "refused: this form's CSRF token is missing or stale (or it came from another "
            f"site). Reload the {page} and use its buttons again",
        )
    return form


def log_done(request: Request, action: str, subject: str, outcome: str, **fields: Any) -> None:
    name = who(request)
    log.info(
        "dashboard: %s %s %s: %s",
        name,
        action,
        subject,
        outcome,
        extra={"action": action, "actor": name, "outcome": outcome, **fields},
    )


def log_refused(
    request: Request, action: str, subject: str, reason: Exception, **fields: Any
) -> None:
    name = who(request)
    log.warning(
        "dashboard: %s %s %s refused: %s",
        name,
        action,
        subject,
        reason,
        extra={"action": action, "actor": name, **fields},
    )
