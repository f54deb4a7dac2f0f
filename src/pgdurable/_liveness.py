"""Telling, without a round trip, whether a pooled connection may still be alive."""

from __future__ import annotations

import select
from typing import Any

import psycopg


def quietly_alive(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """True when a pool checkout may skip its ping (a round trip: a fifth of a plain INSERT's
    cost): the connection is open and idle, and the server has sent it nothing. A server that
    ends a session (restart, pg_terminate_backend, idle timeout, failover) sends a FATAL
    message or closes the socket, which makes it readable: that connection gets the ping and
    is replaced. A peer that vanished without a close is not caught by a ping either (it would
    hang the same way): TCP keepalives are the tool for that."""
    if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return False
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(conn.fileno(), select.POLLIN)
            return not poller.poll(0)
        return not select.select([conn.fileno()], [], [], 0)[0]
    except (OSError, ValueError):
        return False
