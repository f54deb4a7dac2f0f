"""Workflows for the hardening tests, served by a real `pgdurable worker` process:
``pgdurable worker apps.hardening_app:app --queue pq`` (DSN from $PGDURABLE_DSN)."""

from __future__ import annotations

from typing import Any

import pgdurable

app = pgdurable.App(lease=2.0)


@app.workflow(name="p.echo", queue="pq")
def echo(*args: Any) -> int:
    """Returns how many arguments it got (not the arguments: they may be huge)."""
    return len(args)


@app.workflow(name="p.wait", queue="pq")
def wait(name: str) -> str:
    payload = pgdurable.wait_for_event(name)
    return f"got {type(payload).__name__}"
