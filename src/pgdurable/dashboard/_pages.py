"""The pages: runs (with counts), a run, queues, schedules, workers, workflows, the audit log.
Each reads in one read-only transaction and renders server-side; the parts that change are
re-fetched by htmx."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .._errors import RunNotFound
from . import _detail, _operate, _overview
from ._base import Dashboard
from ._runs import BadFilter, RunFilter, fetch_page, status_counts

# The messages an action's redirect may ask the run page to show (?done=...): fixed texts only,
# so a link cannot make the page say anything else.
DONE = {
    "cancelled": "Run cancelled.",
    "cancelling": "Cancel requested: the run is running, and its worker stops it at its next "
    "durable operation.",
    "finished": "The run had already finished: nothing to cancel.",
    "paused": "Run paused: it holds no worker until you resume it.",
    "pausing": "Pause requested: the run is running, and its worker parks it at its next durable "
    "operation.",
    "finished-pause": "The run had already finished: nothing to pause.",
    "already-paused": "The run was already paused: nothing changed.",
    "retried": "Retry started: the run is pending again; it replays its checkpoints and runs "
    "the failed step again.",
    "resumed": "Resumed: the run is pending again and goes on from its last checkpoint.",
    "forked": "This run is a fork: it replays the original's checkpoints before the chosen "
    "step, then runs the rest anew.",
    "emitted": "Event emitted: every run waiting for it is woken.",
    "sent": "Message sent to this run's mailbox.",
    "triggered": "Started now by its schedule (trigger_schedule).",
}


def _runs_data(db: Any, flt: RunFilter, size: int) -> dict[str, Any]:
    page = fetch_page(db, flt, size)
    return {
        "page": page,
        "counts": status_counts(db, flt),
        "choices": db.rows("filter_choices", ()),
        "now": db.now,
    }


async def runs(dash: Dashboard, request: Request) -> Response:
    params = dict(request.query_params)
    try:
        flt = RunFilter.parse(params)
        data = await dash.read(request, _runs_data, flt, dash.page_size)
    except BadFilter as exc:
        flt = RunFilter()
        return dash.render(
            request,
            "runs.html",
            {"flt": flt, "page": None, "counts": None, "choices": [], "bad": str(exc)},
            400,
        )
    return dash.render(request, "runs.html", {"flt": flt, "bad": None, **data})


def _counts_data(db: Any, flt: RunFilter) -> dict[str, Any]:
    return {"counts": status_counts(db, flt), "now": db.now}


async def counts(dash: Dashboard, request: Request) -> Response:
    """The counts by status alone: what the runs page polls."""
    try:
        flt = RunFilter.parse(dict(request.query_params))
    except BadFilter as exc:
        return dash.error(request, 400, str(exc))
    data = await dash.read(request, _counts_data, flt)
    return dash.render(request, "_counts.html", {"flt": flt, **data})


def _run_data(db: Any, run_id: Any) -> dict[str, Any]:
    found = _detail.load(db, run_id)
    if found is None:
        raise RunNotFound(f"run {run_id} does not exist (it may have been garbage-collected)")
    return {**found, "now": db.now}


async def _run_context(dash: Dashboard, request: Request) -> dict[str, Any]:
    run_id = _detail.parse_run_id(request.path_params["run_id"])
    if run_id is None:
        raise RunNotFound(
            f"{request.path_params['run_id'][:60]!r} is not a run id: open a run from the runs page"
        )
    data: dict[str, Any] = await dash.read(request, _run_data, run_id)
    return data


async def run(dash: Dashboard, request: Request) -> Response:
    data = await _run_context(dash, request)
    done = DONE.get(request.query_params.get("done", ""))
    return dash.render(request, "run.html", {**data, "done": done})


async def run_live(dash: Dashboard, request: Request) -> Response:
    """The run page's changing part: what it polls while the run has not finished."""
    data = await _run_context(dash, request)
    return dash.render(request, "_run_live.html", {**data, "done": None})


async def queues(dash: Dashboard, request: Request) -> Response:
    data = await dash.read(request, _with_now(_overview.queues))
    return dash.render(request, _part(request, "queues.html"), {**data, "done": _done(request)})


async def schedules(dash: Dashboard, request: Request) -> Response:
    data = await dash.read(request, _with_now(_overview.schedules))
    return dash.render(request, _part(request, "schedules.html"), {**data, "done": _done(request)})


async def audit(dash: Dashboard, request: Request) -> Response:
    """Recent audit_log entries, newest first, keyset-paged on their id."""
    text = request.query_params.get("before", "")
    if text and not (text.isdigit() and len(text) <= 19):
        return dash.error(
            request, 400, f"before={text[:40]!r} is not an entry id: use the Older link"
        )
    before = int(text) if text else None
    data = await dash.read(request, _with_now(_overview.audit), before, dash.page_size)
    return dash.render(request, "audit.html", data)


async def workers(dash: Dashboard, request: Request) -> Response:
    data = await dash.read(request, _with_now(_overview.workers))
    return dash.render(request, _part(request, "workers.html"), data)


async def workflows(dash: Dashboard, request: Request) -> Response:
    data = await dash.read(request, _with_now(_overview.workflows))
    return dash.render(request, _part(request, "workflows.html"), data)


def _part(request: Request, page: str) -> str:
    """The page, or only its live part when htmx polls it."""
    return f"_{page}" if request.headers.get("hx-request") else page


def _done(request: Request) -> str | None:
    return _operate.DONE.get(request.query_params.get("done", ""))


def _with_now(fn: Any) -> Any:
    def wrapped(db: Any, *args: Any) -> dict[str, Any]:
        return {**fn(db, *args), "now": db.now}

    return wrapped
