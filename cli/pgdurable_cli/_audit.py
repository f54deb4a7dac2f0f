"""Who did it: every CLI action records its actor in pgdurable.audit_log, in the action's own
transaction (an action that fails records nothing; an entry never lacks its action)."""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
import psycopg
from psycopg.types.json import Jsonb

from ._support import call

PREFIX = "cli:"
MAX_ACTOR = 200  # audit_log_actor_check
F = TypeVar("F", bound=Callable[..., Any])


def os_user() -> str:
    """The operating-system user running the command (getpass: $LOGNAME, $USER..., then the
    password database), or the uid when none of those names one."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # KeyError before Python 3.13
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def actor_name(given: str | None) -> str:
    """``cli:`` and --actor, else $PGDURABLE_ACTOR (click reads it into ``given``), else the OS
    user. Refused when it cannot be stored, before anything is done."""
    name = (given or "").strip() or os_user()
    if not name.startswith(PREFIX):
        name = PREFIX + name
    if len(name) > MAX_ACTOR or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise click.BadParameter(
            f"at most {MAX_ACTOR - len(PREFIX)} characters and no control characters: name "
            "the person or the automation acting, e.g. --actor ann or --actor deploy-bot",
            param_hint="--actor / $PGDURABLE_ACTOR",
        )
    return name


def actor_option(fn: F) -> F:
    return click.option(
        "--actor",
        envvar="PGDURABLE_ACTOR",
        show_envvar=True,
        metavar="NAME",
        help="Who acts, for `pgdurable audit` (recorded as cli:NAME). Default: the OS user.",
    )(fn)


def record(
    conn: psycopg.Connection[Any],
    actor: str,
    action: str,
    *,
    run_id: Any = None,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write the audit entry of ``action``; call it inside the action's transaction."""
    call(
        conn,
        "cli_record_action",
        (actor, action, run_id, target, None if detail is None else Jsonb(detail)),
    )
