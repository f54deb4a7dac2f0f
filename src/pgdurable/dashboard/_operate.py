"""Actions on queues and schedules: pause or resume a queue (pause_queue, resume_queue); pause,
resume or trigger a schedule (pause_schedule, resume_schedule, trigger_schedule). The same two
steps as a run's actions (a GET that says what will happen, a POST with the session's CSRF
token that does it through the engine's function), recorded in audit_log in its transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .._errors import PgDurableError, RunNotFound
from . import _overview
from ._acting import Refused, actor, checked_form, log_done, log_refused, refuse_if_read_only
from ._base import Dashboard
from ._store import AuditEntry


@dataclass(frozen=True)
class Operation:
    title: str
    button: str
    explain: str
    function: str  # the engine function, and the name of its statement in queries.sql


OPERATIONS: dict[str, dict[str, Operation]] = {
    "queue": {
        "pause": Operation(
            "Pause this queue",
            "Yes, pause the queue",
            "No run of this queue is claimed until it is resumed. Its running runs go on to "
            "their end or next resting point; sleeping and waiting ones become pending as usual "
            "and wait. Calls pgdurable.pause_queue.",
            function="pause_queue",
        ),
        "resume": Operation(
            "Resume this queue",
            "Yes, resume the queue",
            "Workers claim this queue's runs again, within its limits, and are woken at once. "
            "Calls pgdurable.resume_queue.",
            function="resume_queue",
        ),
    },
    "schedule": {
        "pause": Operation(
            "Pause this schedule",
            "Yes, pause the schedule",
            "The schedule starts nothing until it is resumed; runs it already started go on. "
            "Calls pgdurable.pause_schedule.",
            function="pause_schedule",
        ),
        "resume": Operation(
            "Resume this schedule",
            "Yes, resume the schedule",
            "The schedule fires again from its next tick; the ticks missed while it was paused "
            "are not caught up. Calls pgdurable.resume_schedule.",
            function="resume_schedule",
        ),
        "trigger": Operation(
            "Run this schedule now",
            "Yes, start a run now",
            "Starts one run of the schedule's workflow with its input at once, under the "
            "workflow id schedule:<name>:now:<time>; its overlap policy applies (with 'skip', "
            "nothing starts while its last run goes on) and its next tick does not move. Calls "
            "pgdurable.trigger_schedule.",
            function="trigger_schedule",
        ),
    },
}

# What a redirect may ask the queues or schedules page to say (?done=...): fixed texts only.
DONE = {
    "queue-paused": "Queue paused: nothing more of it is claimed until you resume it.",
    "queue-resumed": "Queue resumed: workers claim its runs again.",
    "schedule-paused": "Schedule paused: it starts nothing until you resume it.",
    "schedule-resumed": "Schedule resumed: it fires again from its next tick.",
    "trigger-skipped": "Nothing started: the schedule's overlap policy is skip and its last run "
    "has not finished.",
}
PAGE = {"queue": "queues", "schedule": "schedules"}


def _guard(dash: Dashboard, request: Request, kind: str) -> tuple[str, str]:
    refuse_if_read_only(dash)
    action = request.path_params["action"]
    name = request.path_params["name"]
    if action not in OPERATIONS[kind] or not 1 <= len(name) <= 200:
        raise Refused(404, f"no such page: open the {PAGE[kind]} page and use its buttons")
    return name, action


async def _target(dash: Dashboard, request: Request, kind: str, name: str) -> dict[str, Any]:
    def load(db: Any) -> dict[str, Any]:
        if kind == "queue":
            found = [q for q in _overview.queues(db)["queues"] if q["name"] == name]
        else:
            found = _overview.schedules(db, name)["schedules"]
        if not found:
            raise RunNotFound(f"there is no {kind} named {name!r}: see the {PAGE[kind]} page")
        return {"target": found[0], "now": db.now}

    data: dict[str, Any] = await dash.read(request, load)
    return data


def _page(
    dash: Dashboard,
    request: Request,
    kind: str,
    action: str,
    data: dict[str, Any],
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    context = {**data, "kind": kind, "action": action, "spec": OPERATIONS[kind][action]}
    return dash.render(request, "confirm_target.html", {**context, "error": error}, status_code)


async def _confirm(dash: Dashboard, request: Request, kind: str) -> Response:
    try:
        name, action = _guard(dash, request, kind)
    except Refused as exc:
        return dash.error(request, exc.status, str(exc))
    return _page(dash, request, kind, action, await _target(dash, request, kind, name))


def _execute(dash: Dashboard, kind: str, name: str, action: str, who: str) -> tuple[str, Any]:
    """Do the action and record it in the same transaction; (done code, engine result)."""
    op = OPERATIONS[kind][action]
    verb = f"{action}_{kind}"

    def entry(result: Any) -> AuditEntry | None:
        if kind == "schedule" and not result:
            return None  # no such schedule, or a trigger its overlap policy skipped
        if action == "trigger":
            return AuditEntry(who, verb, uuid.UUID(str(result)), name)
        detail = {"running": result} if action == "pause" and kind == "queue" else None
        return AuditEntry(who, verb, None, name, detail)

    result = dash.store.act(op.function, (name,), entry)
    if kind == "schedule" and action != "trigger" and not result:
        raise RunNotFound(f"there is no schedule named {name!r} (any more)")
    if action == "trigger":
        return ("triggered" if result else "trigger-skipped"), result
    return f"{kind}-{action}d", result


async def _perform(dash: Dashboard, request: Request, kind: str) -> Response:
    try:
        name, action = _guard(dash, request, kind)
        form = await checked_form(dash, request, f"{PAGE[kind]} page")
    except Refused as exc:
        return dash.error(request, exc.status, str(exc))
    if form.get("confirm") != "yes":
        return _page(dash, request, kind, action, await _target(dash, request, kind, name))
    verb, subject = f"{action}_{kind}", f"{kind} {name!r}"
    try:
        done, result = await run_in_threadpool(_execute, dash, kind, name, action, actor(request))
    except RunNotFound as exc:
        return dash.error(request, 404, str(exc))
    except (PgDurableError, psycopg.errors.InsufficientPrivilege) as exc:
        log_refused(request, verb, subject, exc, target=name)
        data = await _target(dash, request, kind, name)
        return _page(dash, request, kind, action, data, str(exc), 409)
    log_done(request, verb, subject, str(result), target=name)
    if done == "triggered":
        url = request.url_for("run", run_id=str(result)).path
    else:
        url = request.url_for(PAGE[kind]).path
    return RedirectResponse(url + "?" + urlencode({"done": done}), status_code=303)


async def confirm_queue(dash: Dashboard, request: Request) -> Response:
    """GET: what pausing or resuming the queue will do, and the button that does it."""
    return await _confirm(dash, request, "queue")


async def perform_queue(dash: Dashboard, request: Request) -> Response:
    """POST: check the CSRF token, pause or resume the queue, show the queues page."""
    return await _perform(dash, request, "queue")


async def confirm_schedule(dash: Dashboard, request: Request) -> Response:
    """GET: what the schedule action will do, and the button that does it."""
    return await _confirm(dash, request, "schedule")


async def perform_schedule(dash: Dashboard, request: Request) -> Response:
    """POST: check the CSRF token, act on the schedule, show the schedules page (or the run a
    trigger started)."""
    return await _perform(dash, request, "schedule")
