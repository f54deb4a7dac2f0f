"""The pattern examples (approval, saga, fan-out, LLM stream) run as subprocesses; their output
is asserted.

Each example is self-contained: App() from $PGDURABLE_DSN, init_schema(), a worker thread, and
it emits or cancels by itself, so its output is the same on every run.
"""

from __future__ import annotations

import os

import pytest

from conftest import ROOT
from test_examples import _run

EXPECTED: dict[str, list[str]] = {
    "approval.py": [
        "database: the database in $PGDURABLE_DSN",
        "expense 1: denied by bob (over budget)",
        "  history: ask_manager, event",
        "expense 2: no answer within 1 s, reminder sent, status waiting",
        "expense 2: approved by ann",
        "  history: ask_manager, event(timed out), send_reminder, event",
        "expense 3: withdrawn, cancel() -> cancelled",
        "expense 3: status cancelled",
    ],
    "saga.py": [
        "database: the database in $PGDURABLE_DSN",
        "order 1: 2 x widget, 2500 cents, to Lyon",
        "  reserve 2 x widget",
        "  charge 2500 cents",
        "  book courier to Lyon",
        "order 1: completed, courier-Lyon",
        "order 1: compensations recorded: none",
        "order 2: 2 x widget, 2500 cents, to Atlantis",
        "  reserve 2 x widget",
        "  charge 2500 cents",
        "  undo: refund ch-2500",  # newest first
        "  undo: release res-widget",
        "order 2: failed with pgdurable.NonRetryableError: no courier delivers to Atlantis",
        "order 2: compensations recorded: undo:refund_card, undo:release_stock",
    ],
    "fanout.py": [
        "database: the database in $PGDURABLE_DSN",
        "question: plan a picnic in Paris on Saturday for 4",
        "  weather(Paris, Saturday) -> sunny, 24 C",
        "  search(parks in Paris) -> Parc des Buttes-Chaumont",
        "  calculator(4 * 12.5) -> 50.00",
        "answer: Saturday in Paris looks sunny, 24 C: picnic at Parc des Buttes-Chaumont, "
        "budget 50.00 EUR",
        "children of the agent run: 3, all completed",
        "tool attempts: 1, 2, 1",
    ],
    "llm_stream.py": [
        "database: the database in $PGDURABLE_DSN",
        "prompt: Why is the sky blue?",
        "client 1: Sunlight scatters off the molecules of",
        "client 1: disconnected at offset 6",
        "client 2: resumed at offset 6: the air, and blue light, with its short wavelength, "
        "scatters the most: the sky glows blue from every direction.",
        "client 2: stream closed at offset 25",
        "answer: Sunlight scatters off the molecules of the air, and blue light, with its short "
        "wavelength, scatters the most: the sky glows blue from every direction.",
        "the client got every token exactly once: True",
        "status stream: queued, generating, done",  # written before a replay, yet once
        "in SQL: answer 25 values, closed; status 3 values, closed",
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pattern_example(name: str, dsn: str) -> None:
    env = dict(os.environ, PGDURABLE_DSN=dsn, PYTHONUNBUFFERED="1")
    lines = _run(ROOT / "examples" / name, [], env, timeout=60)
    assert lines == EXPECTED[name]  # exactly: nothing printed twice after a replay


def test_examples_run_twice_on_one_database_start_anew(dsn: str) -> None:
    """Fresh ids per run: a second run neither reuses old events nor finds finished runs."""
    env = dict(os.environ, PGDURABLE_DSN=dsn, PYTHONUNBUFFERED="1")
    for _ in range(2):
        assert (
            _run(ROOT / "examples" / "approval.py", [], env, timeout=60) == EXPECTED["approval.py"]
        )
