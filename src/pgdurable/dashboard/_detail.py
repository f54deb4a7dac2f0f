"""The run page's data: the run, its timeline, its children as a tree, the events and messages
it consumed or waits for, the actions taken on it (audit_log), and which actions its status
allows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .. import _timeline
from ._format import ACTIVE
from ._store import Reader

MAX_CHARS = 100_000  # of a stored value shown on the page; the rest is cut with a note
MAX_CHECKPOINTS = 500
MAX_CHILDREN = 500
MAX_DEPTH = 8
MAX_AUDIT = 200  # actions taken on one run, shown on its page


@dataclass
class Node:
    run: dict[str, Any]
    children: list[Node] = field(default_factory=list)


def tree(rows: list[dict[str, Any]], root: str) -> list[Node]:
    """Descendant rows (id, parent_id, ...) as nested nodes under ``root``."""
    nodes = {str(r["id"]): Node(r) for r in rows}
    top: list[Node] = []
    for node in nodes.values():
        parent = str(node.run["parent_id"])
        if parent == root:
            top.append(node)
        elif parent in nodes:
            nodes[parent].children.append(node)
    return top


def actions_for(run: dict[str, Any]) -> list[str]:
    """The actions this run's status allows, in the order the page shows them."""
    status = run["status"]
    found = []
    if status in ACTIVE and not (status == "running" and run["cancel_requested"]):
        found.append("cancel")
    if status in ("pending", "sleeping", "waiting") or (
        status == "running" and not run.get("pause_requested")
    ):
        found.append("pause")
    if status == "failed":
        found.append("retry")
    if status in ("failed", "cancelled", "paused"):
        found.append("resume")
    found.append("fork")
    if status in ACTIVE:
        found += ["emit", "send"]
    return found


def waits_on(run: dict[str, Any]) -> tuple[str | None, str | None]:
    """(event name, message topic) the run waits for, from runs.wait_for."""
    wait = run["wait_for"] or ""
    if run["status"] != "waiting":
        return None, None
    if wait.startswith("event:"):
        return wait[len("event:") :], None
    if wait.startswith("message:"):
        return None, wait[len("message:") :]
    return None, None


def parse_run_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def load(db: Reader, run_id: uuid.UUID) -> dict[str, Any] | None:
    """Everything the run page shows, or None if the run does not exist (any more)."""
    run = db.row("run", {"id": run_id, "max_chars": MAX_CHARS})
    if run is None:
        return None
    checkpoints = db.rows(
        "run_checkpoints", {"id": run_id, "max_chars": MAX_CHARS, "limit": MAX_CHECKPOINTS + 1}
    )
    truncated = len(checkpoints) > MAX_CHECKPOINTS
    checkpoints = checkpoints[:MAX_CHECKPOINTS]
    descendants = db.rows(
        "run_children", {"id": run_id, "max_depth": MAX_DEPTH, "limit": MAX_CHILDREN}
    )
    direct = {str(r["id"]): r for r in descendants if r["parent_id"] == run_id}
    event, topic = waits_on(run)
    events = (
        db.rows("latest_events", {"name": event, "max_chars": 2000, "limit": 5}) if event else []
    )
    readable = db.row("readable", ()) or {}
    mailbox = (
        db.rows("run_mailbox", {"id": run_id, "max_chars": 2000, "limit": 50})
        if readable.get("messages")
        else []
    )
    audit = (
        db.rows("run_audit", {"id": run_id, "max_chars": 2000, "limit": MAX_AUDIT})
        if readable.get("audit_log")
        else None
    )
    consumed = [cp for cp in checkpoints if cp["kind"] in ("event", "message")]
    return {
        "run": run,
        "checkpoints": checkpoints,
        "timeline": _timeline.build(run, checkpoints, direct, db.now, truncated=truncated),
        "children": tree(descendants, str(run_id)),
        "children_cut": len(descendants) >= MAX_CHILDREN,
        "waiting_event": event,
        "waiting_topic": topic,
        "events": events,
        "mailbox": mailbox,
        "mailbox_readable": bool(readable.get("messages")),
        "audit": audit,
        "consumed": consumed,
        "actions": actions_for(run),
        "finished": run["status"] not in ACTIVE,
    }
