"""The queues, schedules, workers, workflows and audit pages: what the registry, the settings
and the active runs say, read on partial indexes so the pages cost the same with a million
finished runs in the table."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ._format import STATUSES
from ._store import Reader

LIVE_WITHIN = timedelta(minutes=1)  # a worker seen this recently is live (as in unserved_runs)
FINISHED_WINDOW = timedelta(hours=1)
MAX_HELD = 2000  # running runs read for the workers page
SHOWN_PER_WORKER = 50
MAX_LISTED = 1000  # schedules on the page (queries.sql)


def _live(worker: dict[str, Any], now: datetime) -> bool:
    return bool(worker["last_seen_at"] > now - LIVE_WITHIN)


def queues(db: Reader) -> dict[str, Any]:
    """Per queue: its flow control (limits, rate used, paused), runs by status (finished ones
    over the last hour), the oldest due pending run's age, delayed runs, and the live workers
    claiming from it."""
    rows = db.rows("queue_depths", {"now": db.now, "finished_since": db.now - FINISHED_WINDOW})
    settings = {q["name"]: q for q in db.rows("queue_settings", {"now": db.now})}
    workers = [w for w in db.rows("workers", ()) if _live(w, db.now)]
    registered = db.rows("registered_workflows", ())
    names = {r["queue_name"] for r in rows} | {r["queue_name"] for r in registered}
    names |= {q for w in workers for q in w["queues"]} | set(settings)
    table: dict[str, dict[str, Any]] = {
        name: {
            "name": name,
            "counts": dict.fromkeys(STATUSES, 0),
            "oldest_due": None,
            "delayed": 0,
            "workers": sorted(w["id"] for w in workers if name in w["queues"]),
            "settings": settings.get(name),
            "paused": bool(settings.get(name, {}).get("paused")),
        }
        for name in names
    }
    for r in rows:
        entry = table[r["queue_name"]]
        entry["counts"][r["status"]] = r["runs"]
        if r["status"] == "pending":
            entry["oldest_due"] = r["oldest_due"]
            entry["delayed"] = r["delayed"]
    return {"queues": [table[n] for n in sorted(table)], "window": "1 h"}


def schedules(db: Reader, name: str | None = None) -> dict[str, Any]:
    """Every schedule (or the one named), with its last run."""
    return {"schedules": db.rows("schedules", {"name": name}), "limit": MAX_LISTED}


def audit(db: Reader, before: int | None, size: int) -> dict[str, Any]:
    """A page of audit_log, newest first, from the keyset cursor ``before`` (an entry id)."""
    found = db.rows("audit_older", {"before": before, "limit": size + 1, "max_chars": 500})
    older = found[size - 1]["id"] if len(found) > size else None
    return {"entries": found[:size], "older": older, "before": before}


def workers(db: Reader) -> dict[str, Any]:
    """Registered workers (live or not) and the runs each holds now; runs held by a worker id
    that is not registered any more are listed too."""
    found = db.rows("workers", ())
    held = db.rows("held_runs", {"limit": MAX_HELD})
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for run in held:
        by_worker.setdefault(run["worker_id"] or "(none)", []).append(run)
    out = []
    for w in found:
        out.append({**w, "live": _live(w, db.now), "unregistered": False})
        out[-1]["runs"] = by_worker.pop(w["id"], [])
    for worker_id, runs in sorted(by_worker.items()):
        out.append(
            {
                "id": worker_id,
                "queues": [],
                "workflows": [],
                "started_at": None,
                "last_seen_at": None,
                "live": False,
                "unregistered": True,
                "runs": runs,
            }
        )
    for w in out:
        w["held"] = len(w["runs"])
        w["runs"] = w["runs"][:SHOWN_PER_WORKER]
    return {
        "workers": out,
        "live_count": sum(1 for w in out if w["live"]),
        "held_cut": len(held) >= MAX_HELD,
    }


def workflows(db: Reader) -> dict[str, Any]:
    """Registered workflows with their queue, the live workers serving them and their active
    runs; and the pending runs that no live worker serves, with the reason."""
    registered = db.rows("registered_workflows", ())
    live = [w for w in db.rows("workers", ()) if _live(w, db.now)]
    active: dict[str, dict[str, int]] = {}
    for r in db.rows("active_by_workflow", ()):
        active.setdefault(r["workflow_name"], {})[r["status"]] = r["count"]
    unserved = db.rows("unserved", ())
    unserved_by: dict[str, int] = {}
    for u in unserved:
        unserved_by[u["workflow_name"]] = unserved_by.get(u["workflow_name"], 0) + u["runs"]
    rows = []
    for wf in registered:
        serving = [w for w in live if wf["name"] in w["workflows"]]
        rows.append(
            {
                **wf,
                "workers": sorted(w["id"] for w in serving),
                "on_queue": sorted(w["id"] for w in serving if wf["queue_name"] in w["queues"]),
                "pending": active.get(wf["name"], {}).get("pending", 0),
                "running": active.get(wf["name"], {}).get("running", 0),
                "unserved": unserved_by.get(wf["name"], 0),
            }
        )
    return {"workflows": rows, "unserved": unserved}
