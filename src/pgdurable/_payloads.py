"""What an event or a message carries to the engine, checked and encoded once for every caller:
the App (sync and async) and workflow code. Pure."""

from __future__ import annotations

import uuid
from typing import Any

from . import _codec
from ._limits import Limits
from ._names import check_text


def event_params(name: str, payload: Any, limits: Limits) -> tuple[str, Any]:
    """(name, payload as jsonb) for emit_event."""
    check_text("event name", name)
    return name, _codec.checked(payload, f"payload of event {name!r}", limits)


def message_params(
    target: str | uuid.UUID, payload: Any, topic: str | None, limits: Limits
) -> tuple[str, Any, str | None]:
    """(target, payload as jsonb, topic) for send_message."""
    check_text("message target", str(target))
    if topic is not None:
        check_text("message topic", topic)
    return str(target), _codec.checked(payload, "message payload", limits), topic
