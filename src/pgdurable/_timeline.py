"""A run's timeline: one bar per durable operation (step, transaction, sleep, wait, child,
value...), the time it spent queued, the gaps between operations, a pending retry and what it
does now. Pure (rows in, bars out, no I/O and no web framework), so the web page, the CLI's
`pgdurable show --timeline` and their tests share it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

# Kinds whose checkpoint is written when the awaited thing arrived: the gap before them is a
# wait, not idle time.
_WAITS = frozenset({"event", "message", "result"})
_MIN_WIDTH = 0.4  # percent: an instant operation still shows as a sliver
_LABELS = {
    "result": "result of",
    "value": "recorded",
    "send": "sent",
    "emit": "emitted",
    "compensate": "compensation",
}


def duration(seconds: float | timedelta | None) -> str:
    """12 ms, 3.2 s, 4 min 3 s, 2 h 5 min, 3 d 4 h."""
    if seconds is None:
        return "-"
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1:
        return f"{sign}{s * 1000:.0f} ms"
    if s < 60:
        return f"{sign}{s:.1f} s"
    whole = int(s)
    for unit, size, sub, subsize in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "min", 60),
        ("min", 60, "s", 1),
    ):
        if whole >= size:
            big, rest = divmod(whole, size)
            small = rest // subsize
            return f"{sign}{big} {unit}" + (f" {small} {sub}" if small else "")
    return f"{sign}{whole} s"  # pragma: no cover - every case returned above


@dataclass
class Bar:
    label: str
    kind: str
    start: datetime
    end: datetime
    seq: int | None = None
    key: str | None = None
    detail: str = ""
    gap_before: float | None = None
    gap_label: str = ""
    link_run: str | None = None
    open: bool = False
    failed: bool = False
    run_attempt: int | None = None
    attempts: int | None = None
    left: float = 0.0
    width: float = 0.0

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def took(self) -> str:
        return duration(self.seconds)

    @property
    def state(self) -> str:
        """failed, open (still going on) or done."""
        return "failed" if self.failed else "open" if self.open else "done"


@dataclass
class Timeline:
    bars: list[Bar] = field(default_factory=list)
    origin: datetime | None = None
    span: float = 0.0
    ticks: list[tuple[float, str]] = field(default_factory=list)
    truncated: bool = False
    now: float | None = None  # percent where "now" falls, while the run goes on


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _checkpoint_bar(cp: dict[str, Any], children: dict[str, dict[str, Any]], now: datetime) -> Bar:
    kind = str(cp["kind"])
    end: datetime = cp["completed_at"]
    start: datetime = cp["started_at"] or end
    start = min(start, end)
    name = str(cp["step_name"])
    bar = Bar(
        label="sleep" if kind == "sleep" else f"{_LABELS.get(kind, kind)} {name}",
        kind=kind,
        start=start,
        end=end,
        seq=cp["seq"],
        key=cp["step_key"],
        failed=cp["error"] is not None,
        run_attempt=cp["run_attempt"],
        attempts=cp["attempts"],
    )
    if cp["attempts"] and cp["attempts"] > 1:
        bar.detail = f"{cp['attempts']} attempts"
    if kind == "sleep":
        wake = _parse_time(cp.get("wake_at"))
        if wake is not None:
            bar.end = max(wake, start)
            bar.open = wake > now
            bar.detail = f"until {wake.strftime('%Y-%m-%d %H:%M:%S')}"
    elif kind == "child":
        child = children.get(str(cp.get("child_id") or ""))
        bar.link_run = str(cp.get("child_id") or "") or None
        if child is not None:
            bar.end = child["finished_at"] or now
            bar.open = child["finished_at"] is None
            bar.detail = f"child {child['status']}"
            bar.failed = child["status"] in ("failed", "cancelled")
    elif kind == "message" and name.startswith("recv:"):
        bar.label = f"message {name[5:] or '(default topic)'}"
    if bar.failed and not bar.detail:
        bar.detail = "error recorded"
    return bar


def _current(run: dict[str, Any], cursor: datetime, now: datetime) -> Bar | None:
    """What the run is doing now, as an open bar (None once it has finished)."""
    status = run["status"]
    since = max(cursor, run["updated_at"] if status != "running" else cursor)
    if status == "running":
        return Bar(f"running (attempt {run['attempt']})", "running", cursor, now, open=True)
    if status == "sleeping" and run["wake_reason"] == "retry":
        end = run["wakes_at"] or now
        return Bar(
            f"retry of {run['retry_step_key'] or 'a step'}",
            "retry",
            run["updated_at"],
            max(end, run["updated_at"]),
            detail=f"{run['retry_step_attempts']} failed attempt(s); next at "
            f"{end.strftime('%Y-%m-%d %H:%M:%S')}",
            open=True,
            failed=True,
            attempts=run["retry_step_attempts"],
        )
    if status == "waiting":
        end = max(now, since)
        detail = ""
        if run["wakes_at"] is not None:
            detail = f"times out at {run['wakes_at'].strftime('%Y-%m-%d %H:%M:%S')}"
        return Bar(
            f"waiting for {run['wait_for']}", "waiting", since, end, detail=detail, open=True
        )
    if status == "pending":
        if run["started_at"] is None:
            return None  # the queued bar already covers it
        return Bar("pending (ready for a worker)", "queued", since, max(now, since), open=True)
    return None


def build(
    run: dict[str, Any],
    checkpoints: list[dict[str, Any]],
    children: dict[str, dict[str, Any]],
    now: datetime,
    *,
    truncated: bool = False,
) -> Timeline:
    """The bars of ``run`` (a row of the ``run`` query), its ``checkpoints`` in seq order and
    its direct ``children`` by id, placed on one axis from its creation to its end (or now)."""
    created: datetime = run["created_at"]
    bars: list[Bar] = []
    first_start = run["started_at"]
    if first_start is None and run["status"] == "pending":
        bars.append(Bar("queued (no worker has taken it yet)", "queued", created, now, open=True))
    elif first_start is not None and first_start > created:
        bars.append(Bar("queued", "queued", created, first_start))
    cursor = first_start or created
    for cp in checkpoints:
        bar = _checkpoint_bar(cp, children, now)
        gap = (bar.start - cursor).total_seconds()
        if gap > 0.001:
            bar.gap_before = gap
            bar.gap_label = "waited" if bar.kind in _WAITS else "gap"
        bars.append(bar)
        cursor = (
            bar.end if bar.kind == "sleep" and not bar.open else max(cursor, cp["completed_at"])
        )
    current = _current(run, cursor, now)
    if current is not None:
        bars.append(current)
    finished = run["finished_at"]
    if finished is not None:
        label = {"completed": "completed", "failed": "failed", "cancelled": "cancelled"}
        end_bar = Bar(
            f"run {label.get(run['status'], run['status'])}",
            f"end-{run['status']}",
            finished,
            finished,
            failed=run["status"] != "completed",
            detail=(run["error_type"] or "") if run["status"] != "completed" else "",
        )
        gap = (finished - cursor).total_seconds()
        if gap > 0.001:
            end_bar.gap_before = gap
        bars.append(end_bar)
    timeline = _place(bars, created, truncated)
    if finished is None and timeline.span > 0:
        timeline.now = min(max((now - created).total_seconds() / timeline.span * 100, 0.0), 100.0)
    return timeline


def _place(bars: list[Bar], origin: datetime, truncated: bool) -> Timeline:
    last = max([origin, *(b.end for b in bars)])
    span = max((last - origin).total_seconds(), 0.001)
    for bar in bars:
        bar.left = min(max((bar.start - origin).total_seconds() / span * 100, 0.0), 100.0)
        width = bar.seconds / span * 100
        bar.width = max(min(width, 100.0 - bar.left), _MIN_WIDTH)
        if bar.left + bar.width > 100.0:
            bar.left = 100.0 - bar.width
    ticks = [(pct, "+" + duration(span * pct / 100)) for pct in (0.0, 25.0, 50.0, 75.0, 100.0)]
    ticks[0] = (0.0, "0")
    return Timeline(bars, origin, span, ticks, truncated)
