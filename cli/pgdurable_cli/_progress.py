"""Progress of long commands (gc, queues drain) on stderr, never on stdout, so a script that
reads stdout (or --json) gets only the result. On a terminal: a progress bar. Otherwise (a log,
a CI job): a line every few seconds, so a quick command prints none."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

import click

LINE_EVERY = 5.0  # seconds between two lines when stderr is not a terminal


class Progress:
    """Counts ``done`` of about ``total`` (an estimate: done may pass it)."""

    def __init__(self, label: str, total: int, unit: str) -> None:
        self.label = label
        self.total = max(total, 0)
        self.unit = unit
        self.done = 0
        self._bar: Any = None
        self._last_line = time.monotonic()
        if sys.stderr.isatty() and self.total:
            self._bar = click.progressbar(
                length=self.total, label=label, file=sys.stderr, show_pos=True, show_eta=True
            )

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, exc, tb)

    def advance(self, count: int) -> None:
        self.set(self.done + count)

    def set(self, done: int) -> None:
        if self._bar is not None:
            step = min(done, self.total) - min(self.done, self.total)
            if step > 0:
                self._bar.update(step)
            self.done = done
            return
        self.done = done
        now = time.monotonic()
        if now - self._last_line >= LINE_EVERY:
            self._last_line = now
            click.echo(f"{self.label}: {self.line()}", err=True)
            sys.stderr.flush()

    def line(self) -> str:
        if not self.total:
            return f"{self.done} {self.unit}"
        share = min(self.done / self.total, 1.0) * 100
        return f"{self.done} of ~{self.total} {self.unit} ({share:.0f}%)"
