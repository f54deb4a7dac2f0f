"""The run page's timeline model now lives below the dashboard, in pgdurable._timeline, so the
CLI draws the same timeline without the dashboard extra; this name stays for its importers."""

from __future__ import annotations

from .._timeline import Bar, Timeline, build, duration

__all__ = ["Bar", "Timeline", "build", "duration"]
