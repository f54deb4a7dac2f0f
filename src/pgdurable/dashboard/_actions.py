"""Actions on a run: cancel, pause, retry, resume, fork from a step, emit an event, send a
message.

Each is a GET that shows what will happen (the confirmation) and a POST that does it through
the engine's SQL function, never an UPDATE. A POST needs the session's CSRF token and, when the
browser sends one, an Origin of this host; a read-only dashboard refuses both with 403. Who did
what, and when, goes to the logger "pgdurable.dashboard" (no engine function takes a note yet).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .._codec import checked
from .._decoding import loads
from .._errors import InvalidInput, PgDurableError, RunNotFound, SerializationError
from . import _detail
from ._base import Dashboard
from ._security import SESSION_COOKIE, same_origin

log = logging.getLogger("pgdurable.dashboard")

MAX_FORM = 1 << 20  # bytes of a POSTed form: a payload typed into a dashboard stays small
MAX_NAME = 500


@dataclass(frozen=True)
class Action:
    title: str
    button: str
    explain: str


ACTIONS = {
    "cancel": Action(
        "Cancel this run",
        "Yes, cancel it",
        "A pending, sleeping or waiting run ends cancelled at once; a running one is flagged and "
        "its worker stops it at its next durable operation. Its unfinished children are "
        "cancelled too. Calls pgdurable.cancel_run.",
    ),
    "pause": Action(
        "Pause this run",
        "Yes, pause it",
        "A pending, sleeping or waiting run is paused at once; a running one is flagged and its "
        "worker parks it at its next durable operation. A paused run holds no worker and ignores "
        "its timers until you resume it; it then goes on from its last checkpoint. Calls "
        "pgdurable.pause_run.",
    ),
    "retry": Action(
        "Retry this failed run",
        "Yes, retry it",
        "The run becomes pending again: a worker replays its completed checkpoints and runs the "
        "failed step again. Calls pgdurable.retry_run.",
    ),
    "resume": Action(
        "Resume this run",
        "Yes, resume it",
        "The failed, cancelled or paused run becomes pending again and goes on from its last "
        "checkpoint. Calls pgdurable.resume_run.",
    ),
    "fork": Action(
        "Fork this run from a step",
        "Yes, start the fork",
        "Starts a NEW run of the same workflow and input that replays this run's checkpoints "
        "before the chosen step and executes that step and everything after it anew. This run "
        "is not changed. Calls pgdurable.fork_run.",
    ),
    "emit": Action(
        "Emit an event",
        "Yes, emit it",
        "Records a durable event under this name; every run waiting for it (not only this one) "
        "wakes and receives the payload. Calls pgdurable.emit_event.",
    ),
    "send": Action(
        "Send a message to this run",
        "Yes, send it",
        "Puts a message in this run's mailbox under the topic; if the run waits on that topic it "
        "wakes. Calls pgdurable.send_message.",
    ),
}


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


def _guard(dash: Dashboard, request: Request) -> tuple[uuid.UUID, str]:
    if dash.read_only:
        raise Refused(403, "this dashboard is read-only: actions are disabled")
    action = request.path_params["action"]
    run_id = _detail.parse_run_id(request.path_params["run_id"])
    if action not in ACTIONS or run_id is None:
        raise Refused(404, "no such page: open a run from the runs page and use its buttons")
    return run_id, action


async def _form(request: Request) -> dict[str, str]:
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


def _payload(text: str) -> Any:
    try:
        return checked(loads(text.strip() or "null", "payload"), "payload")
    except SerializationError as exc:
        raise InvalidInput(f'{exc}; type JSON such as {{"approved": true}} or null') from exc


def _name(form: dict[str, str], field: str, what: str, *, required: bool) -> str:
    value = form.get(field, "").strip()
    if required and not value:
        raise InvalidInput(f"give the {what}")
    if len(value) > MAX_NAME:
        raise InvalidInput(f"the {what} must be at most {MAX_NAME} characters")
    return value


def _execute(
    dash: Dashboard, run_id: uuid.UUID, action: str, form: dict[str, str]
) -> tuple[uuid.UUID, str, str]:
    """Do the action; (run to show next, done code for its page, outcome for the log)."""
    store = dash.store
    if action == "cancel":
        outcome = str(store.act("cancel_run", (run_id,)))
        done = outcome if outcome in ("cancelled", "cancelling") else "finished"
        return run_id, done, outcome
    if action == "pause":
        outcome = str(store.act("pause_run", (run_id,)))
        done = outcome if outcome in ("paused", "pausing") else "finished-pause"
        return run_id, done, outcome
    if action == "retry":
        store.act("retry_run", (run_id,))
        return run_id, "retried", "pending"
    if action == "resume":
        store.act("resume_run", (run_id,))
        return run_id, "resumed", "pending"
    if action == "fork":
        try:
            seq = int(form.get("from_seq", ""))
        except ValueError:
            raise InvalidInput("choose the step to fork from") from None
        if not 0 <= seq <= 10_000_000:
            raise InvalidInput("the step's sequence number is out of range")
        new = store.act("fork_run", (run_id, seq))
        return uuid.UUID(str(new)), "forked", f"fork {new} from seq {seq}"
    if action == "emit":
        name = _name(form, "name", "event name", required=True)
        event_id = store.act("emit_event", (name, _payload(form.get("payload", ""))))
        return run_id, "emitted", f"event {name!r} id {event_id}"
    topic = _name(form, "topic", "topic", required=False)
    message_id = store.act(
        "send_message", (str(run_id), _payload(form.get("payload", "")), topic or None)
    )
    return run_id, "sent", f"message id {message_id} on topic {topic!r}"


def _confirm_page(
    dash: Dashboard,
    request: Request,
    data: dict[str, Any],
    action: str,
    form: dict[str, str],
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    return dash.render(
        request,
        "confirm.html",
        {**data, "action": action, "spec": ACTIONS[action], "form": form, "error": error},
        status_code,
    )


async def _run_data(dash: Dashboard, request: Request, run_id: uuid.UUID) -> dict[str, Any]:
    def load(db: Any) -> dict[str, Any]:
        found = _detail.load(db, run_id)
        if found is None:
            raise RunNotFound(f"run {run_id} does not exist (it may have been garbage-collected)")
        return {**found, "now": db.now}

    data: dict[str, Any] = await dash.read(request, load)
    return data


async def confirm(dash: Dashboard, request: Request) -> Response:
    """GET: what the action will do, with its fields, and the button that does it."""
    try:
        run_id, action = _guard(dash, request)
    except Refused as exc:
        return dash.error(request, exc.status, str(exc))
    data = await _run_data(dash, request, run_id)
    prefill = {
        "name": data["waiting_event"] or "",
        "topic": data["waiting_topic"] or "",
        "from_seq": request.query_params.get("from_seq", ""),
    }
    return _confirm_page(dash, request, data, action, prefill)


async def perform(dash: Dashboard, request: Request) -> Response:
    """POST: check the CSRF token, then do the action and show the run."""
    try:
        run_id, action = _guard(dash, request)
        form = await _form(request)
        host = request.headers.get("host")
        if not same_origin(request.headers.get("origin"), host) or not dash.csrf.valid(
            request.cookies.get(SESSION_COOKIE), form.get("csrf")
        ):
            raise Refused(
                403,
                "refused: this form's CSRF token is missing or stale (or it came from another "
                "site). Reload the run page and use its buttons again",
            )
    except Refused as exc:
        return dash.error(request, exc.status, str(exc))
    if form.get("confirm") != "yes":
        data = await _run_data(dash, request, run_id)
        return _confirm_page(dash, request, data, action, form)
    actor = who(request)
    try:
        target, done, outcome = await _run_blocking(dash, run_id, action, form)
    except RunNotFound as exc:
        return dash.error(request, 404, str(exc))
    except (PgDurableError, psycopg.errors.InsufficientPrivilege) as exc:
        log.warning(
            "dashboard: %s %s run %s refused: %s",
            actor,
            action,
            run_id,
            exc,
            extra={"action": action, "run_id": str(run_id), "actor": actor},
        )
        data = await _run_data(dash, request, run_id)
        return _confirm_page(dash, request, data, action, form, str(exc), 409)
    log.info(
        "dashboard: %s %s run %s: %s",
        actor,
        action,
        run_id,
        outcome,
        extra={"action": action, "run_id": str(run_id), "actor": actor, "outcome": outcome},
    )
    url = request.url_for("run", run_id=str(target)).path + "?" + urlencode({"done": done})
    return RedirectResponse(url, status_code=303)


async def _run_blocking(
    dash: Dashboard, run_id: uuid.UUID, action: str, form: dict[str, str]
) -> tuple[uuid.UUID, str, str]:
    return await run_in_threadpool(_execute, dash, run_id, action, form)
