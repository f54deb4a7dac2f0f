"""Log formats of `pgdurable worker`: text for people, JSON lines for log pipelines.

The SDK attaches what it knows to its records as ``extra`` fields (run_id, workflow, step,
attempt, delay, worker_id, queue, outcome, error, ...). Both formats carry every such field,
found generically: any attribute a standard LogRecord does not have.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from ._output import dumps, safe

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields given to the logging call as ``extra``, in the order they were given."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the extra
    fields, and ``exception`` / ``stack`` when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)  # an extra named "time" or "level" cannot forge those
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return dumps(entry)
        except (TypeError, ValueError, RecursionError):
            # A log line must never be lost to a strange extra value: fall back to its repr.
            return dumps({k: v if isinstance(v, str) else repr(v) for k, v in entry.items()})


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``, one line per record (a traceback
    follows on its own lines); control characters from stored data are escaped."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = [f"{key}={_logfmt(value)}" for key, value in extra_fields(record).items()]
        return safe(" ".join([line, *pairs]))

    def formatException(self, ei: Any) -> str:
        return safe(super().formatException(ei), multiline=True)

    def formatStack(self, stack_info: str) -> str:
        return safe(super().formatStack(stack_info), multiline=True)


def _logfmt(value: Any) -> str:
    """A value as one token: numbers, booleans, null, lists and dicts as compact JSON; other
    values as their text, bare when it is a simple word, else JSON-quoted."""
    if value is None or isinstance(value, (bool, int, float, list, tuple, dict)):
        try:
            return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            value = repr(value)
    text = str(value)
    if text and not any(c.isspace() or c in '"=\\' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Log at ``level`` to stderr in format ``fmt`` (text or json), unless the process already
    has logging set up (as under a test runner), which is then left as it is."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        root.addHandler(handler)
