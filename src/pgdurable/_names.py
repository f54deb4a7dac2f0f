"""Checks of the names and keys the engine stores as text. Pure."""

from __future__ import annotations

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:<>-")


def check_name(kind: str, name: str) -> str:
    """A workflow, step or schedule name: the characters start_run accepts, at most 200."""
    if not name or len(name) > 200 or not set(name) <= _NAME_OK or name[0].isdigit():
        raise ValueError(
            f"invalid {kind} name {name!r}: use letters, digits and _ . : < > -, "
            "not starting with a digit, at most 200 characters"
        )
    return name


_QUEUE_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


def check_queue(name: str) -> str:
    """A queue name: the characters start_run and the queues table accept, at most 100."""
    if not isinstance(name, str) or not name or len(name) > 100 or not set(name) <= _QUEUE_OK:
        raise ValueError(
            f"invalid queue name {name!r}: use letters, digits and _ . : -, 1 to 100 characters"
        )
    return name


def check_text(what: str, value: str, limit: int = 500) -> str:
    """A name or key the engine stores as text: a string, 1 to ``limit`` characters, no NUL."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    if not value or len(value) > limit:
        raise ValueError(f"{what} must be 1 to {limit} characters, got {len(value)}")
    if "\x00" in value:
        raise ValueError(
            f"{what} {value!r} contains a NUL character, which PostgreSQL cannot store"
        )
    return value
