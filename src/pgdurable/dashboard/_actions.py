"""Actions on a run: cancel, pause, retry, resume, fork from a step, emit an event, send a
message.

Each is a GET that shows what will happen (the confirmation) and a POST that does it through
the engine's SQL function, never an UPDATE. A POST needs the session's CSRF token and, when the
browser sends one, an Origin of this host; a read-only dashboard refuses both with 403. Who did
what is recorded in pgdurable.audit_log in the action's transaction, and logged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .._codec import checked
from .._decoding import loads
from .._errors import InvalidInput, PgDurableError, RunNotFound, SerializationError
from . import _detail
from ._acting import Refused, actor, checked_form, log_done, log_refused, refuse_if_read_only
from ._base import Dashboard
from ._format import FINISHED
from ._store import AuditEntry

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


def _guard(dash: Dashboard, request: Request) -> tuple[uuid.UUID, str]:
    refuse_if_read_only(dash)
    action = request.path_params["action"]
    run_id = _detail.parse_run_id(request.path_params["run_id"])
    if action not in ACTIONS or run_id is None:
        raise Refused(404, "no such page: open a run from the runs page and use its buttons")
    return run_id, action


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
    dash: Dashboard, run_id: uuid.UUID, action: str, form: dict[str, str], actor: str
) -> tuple[uuid.UUID, str, str]:
    """Do the action and record it in audit_log in the same transaction; (run to show next,
    done code for its page, outcome for the log). An action that changed nothing (the run had
    finished) records nothing."""
    store = dash.store

    def recorded(_result: Any) -> AuditEntry:
        return AuditEntry(actor, action, run_id)

    def changed(pair: tuple[Any, Any]) -> AuditEntry | None:
        # cancel_run and pause_run answer a run that had finished (or was paused) with its
        # status: its status before, read in the same transaction, tells a change from a no-op
        prior, outcome = pair
        if prior in FINISHED or (action == "pause" and prior == "paused"):
            return None
        return AuditEntry(actor, action, run_id, None, {"outcome": outcome})

    status = ("run_status", (run_id,))
    if action == "cancel":
        _, result = store.act("cancel_run", (run_id,), changed, before=status)
        outcome = str(result)
        return run_id, outcome if outcome in ("cancelled", "cancelling") else "finished", outcome
    if action == "pause":
        prior, result = store.act("pause_run", (run_id,), changed, before=status)
        outcome = str(result)
        if prior == "paused":
            return run_id, "already-paused", "already paused"
        return run_id, outcome if outcome in ("paused", "pausing") else "finished-pause", outcome
    if action == "retry":
        store.act("retry_run", (run_id,), recorded)
        return run_id, "retried", "pending"
    if action == "resume":
        store.act("resume_run", (run_id,), recorded)
        return run_id, "resumed", "pending"
    if action == "fork":
        try:
            seq = int(form.get("from_seq", ""))
        except ValueError:
            raise InvalidInput("choose the step to fork from") from None
        if not 0 <= seq <= 10_000_000:
            raise InvalidInput("the step's sequence number is out of range")
        new = store.act(
            "fork_run",
            (run_id, seq),
            lambda new: AuditEntry(
                actor, action, run_id, None, {"from_seq": seq, "new_run": str(new)}
            ),
        )
        return uuid.UUID(str(new)), "forked", f"fork {new} from seq {seq}"
    if action == "emit":
        name = _name(form, "name", "event name", required=True)
        event_id = store.act(
            "emit_event",
            (name, _payload(form.get("payload", ""))),
            lambda event: AuditEntry(actor, action, run_id, name, {"event_id": event}),
        )
        return run_id, "emitted", f"event {name!r} id {event_id}"
    topic = _name(form, "topic", "topic", required=False)
    message_id = store.act(
        "send_message",
        (str(run_id), _payload(form.get("payload", "")), topic or None),
        lambda message: AuditEntry(actor, action, run_id, topic or None, {"message_id": message}),
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
    """POST: check the CSRF token, then do the action (recorded in audit_log) and show the run."""
    try:
        run_id, action = _guard(dash, request)
        form = await checked_form(dash, request, "run page")
    except Refused as exc:
        return dash.error(request, exc.status, str(exc))
    if form.get("confirm") != "yes":
        data = await _run_data(dash, request, run_id)
        return _confirm_page(dash, request, data, action, form)
    subject = f"run {run_id}"
    try:
        target, done, outcome = await run_in_threadpool(
            _execute, dash, run_id, action, form, actor(request)
        )
    except RunNotFound as exc:
        return dash.error(request, 404, str(exc))
    except (PgDurableError, psycopg.errors.InsufficientPrivilege) as exc:
        log_refused(request, action, subject, exc, run_id=str(run_id))
        data = await _run_data(dash, request, run_id)
        return _confirm_page(dash, request, data, action, form, str(exc), 409)
    log_done(request, action, subject, outcome, run_id=str(run_id))
    url = request.url_for("run", run_id=str(target)).path + "?" + urlencode({"done": done})
    return RedirectResponse(url, status_code=303)
