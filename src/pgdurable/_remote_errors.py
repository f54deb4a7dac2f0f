"""Rebuilding recorded errors from stored type names, without trusting the names; no I/O.

A stored error is data anyone with write access to the database could have forged. Its type
name is only ever looked up among classes already loaded (``sys.modules``, by dictionary
lookups that run no module or class hooks) or registered with ``register_error``; it never
causes an import. Only ``Exception`` subclasses are rebuilt; anything else, or a constructor
that fails, gives ``StepFailed`` carrying the recorded type name.
"""

from __future__ import annotations

import builtins
import sys
import threading
from typing import Any, TypeVar

from ._codec import type_name
from ._errors import RunCancelled, StepFailed, WorkflowFailed

E = TypeVar("E", bound=type[Exception])

_registry: dict[str, type[Exception]] = {}
_registry_lock = threading.Lock()

# Longer names are not class paths anyone wrote.
_MAX_NAME = 500


def register_error(cls: E, *, name: str | None = None) -> E:
    """Let ``replay_error`` rebuild ``cls`` from its stored name (usable as a decorator).

    Loaded classes are found without registering; register a class whose module may not be
    imported yet when a run replays, or, with ``name=``, a class renamed since errors were
    recorded under its old name.
    """
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        raise TypeError(
            f"register_error() takes an Exception subclass, got {cls!r}: BaseException-only "
            "classes (SystemExit, KeyboardInterrupt, ...) are never rebuilt from stored data"
        )
    key = type_name(cls) if name is None else name
    if not isinstance(key, str) or not key:
        raise TypeError(f"register_error(name=...) must be a non-empty str, got {key!r}")
    with _registry_lock:
        _registry[key] = cls
    return cls


def unregister_error(name: str) -> None:
    """Forget a registered name (tests, plugins that unload)."""
    with _registry_lock:
        _registry.pop(name, None)


def _own(mapping: Any, key: str) -> Any:
    # Plain dictionary lookups: getattr could run a module's __getattr__ (lazy imports) or a
    # metaclass hook with a string an attacker chose.
    try:
        return mapping.get(key)
    except Exception:  # a hostile mapping: treat as absent
        return None


def _loaded_class(name: str) -> type[Exception] | None:
    """The Exception subclass called ``name`` among loaded modules, or None."""
    with _registry_lock:
        cls = _registry.get(name)
    if cls is not None:
        return cls
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    if len(parts) == 1:
        found = _own(vars(builtins), name)
    else:
        found = None
        # "pkg.mod.Outer.Inner": the module is the longest dotted prefix that is loaded.
        for cut in range(len(parts) - 1, 0, -1):
            module = sys.modules.get(".".join(parts[:cut]))
            if module is None:
                continue
            obj = _own(vars(module), parts[cut])
            for part in parts[cut + 1 :]:
                obj = _own(vars(obj), part) if isinstance(obj, type) else None
            found = obj
            break
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    return None


def replay_error(error: Any) -> BaseException:
    """The exception a recorded error stands for: its own class when known, else StepFailed.

    ``error`` is a stored ``{"type", "message", ...}`` record; anything malformed still gives a
    ``StepFailed``. Never imports, never raises.
    """
    if not isinstance(error, dict):
        return StepFailed("Exception", f"malformed error record ({type(error).__name__})")
    raw_type = error.get("type")
    raw_message = error.get("message")
    if raw_message is None or isinstance(raw_message, str):
        message = raw_message or ""
    else:
        message = f"<malformed message of type {type(raw_message).__name__}>"
    if not isinstance(raw_type, str) or not raw_type:
        return StepFailed("Exception", message)
    name = raw_type
    cls = _loaded_class(name) if len(name) <= _MAX_NAME else None
    if cls is not None:
        try:
            exc = cls(message)
        except KeyboardInterrupt:
            raise
        except BaseException:
            # Its constructor wants more than a message, or fails: the name still tells.
            pass
        else:
            if isinstance(exc, Exception):
                return exc
    return StepFailed(name, message)


def run_outcome(run_id: Any, workflow_id: str, status: str, output: Any, error: Any) -> Any:
    """A finished run's result as its caller sees it: the output, or the exception its end
    means (RunCancelled, or WorkflowFailed carrying the recorded error)."""
    if status == "completed":
        return output
    if status == "cancelled":
        raise RunCancelled(f"run {run_id} ({workflow_id}) was cancelled")
    raise WorkflowFailed(str(run_id), error or {})
