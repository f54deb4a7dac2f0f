"""Streaming a model's answer through a durable workflow to a client that disconnects and
comes back.

    PGDURABLE_DSN=postgresql://... python examples/llm_stream.py

The step that calls the (fake) model writes each token to the run's stream ``answer`` as it
arrives; the workflow reports its progress on a second stream, ``status``. A client reads the
answer live, disconnects halfway (a closed browser tab, a dropped mobile connection) and comes
back with the offset it had reached: it gets exactly the tokens it missed, none twice.

The workflow also waits durably for a free model slot before it starts, so its code runs twice
(the run leaves the worker and replays from the top): the status written before the wait is
still in the stream once. Streams are rows in ``pgdurable.streams``, readable with plain SQL.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Iterator

import pgdurable
from pgdurable import close_stream, write_stream

app = pgdurable.App()  # $PGDURABLE_DSN, else the embedded development database

PROMPT = "Why is the sky blue?"
ANSWER = (
    "Sunlight scatters off the molecules of the air, and blue light, with its short "
    "wavelength, scatters the most: the sky glows blue from every direction."
)


def fake_model(prompt: str) -> Iterator[str]:
    """A stand-in for an LLM client streaming its completion, token by token."""
    for token in re.findall(r"\S+\s*", ANSWER):
        time.sleep(0.02)
        yield token


@app.step()
def ask_model(prompt: str) -> str:
    """Calls the model once; each token reaches the readers as soon as it is written."""
    tokens = []
    for token in fake_model(prompt):
        write_stream("answer", token)
        tokens.append(token)
    return "".join(tokens)


@app.workflow()
def answer(prompt: str) -> str:
    write_stream("status", "queued")
    pgdurable.sleep(0.2)  # waiting for a free model slot: the run replays after it
    write_stream("status", "generating")
    text = ask_model(prompt)
    close_stream("answer")  # here, not in the step: exactly once, after the step's last try
    write_stream("status", "done")
    close_stream("status")
    return text


def main() -> None:
    where = "the database in $PGDURABLE_DSN" if os.environ.get("PGDURABLE_DSN") else "embedded"
    print(f"database: {where}")
    app.init_schema()

    worker = app.worker(concurrency=4, poll_interval=0.05)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        # a fresh workflow id, so running the example twice starts anew
        handle = answer.options(workflow_id=f"answer-{uuid.uuid4().hex[:8]}").start(PROMPT)
        print(f"prompt: {PROMPT}")

        # 1. A client reads the answer live, then goes away halfway.
        live = handle.read_stream("answer")
        seen = [next(live) for _ in range(6)]
        live.close()  # the client disconnects: its database session ends
        offset = len(seen)
        print(f"client 1: {''.join(seen).strip()}")
        print(f"client 1: disconnected at offset {offset}")

        # 2. It comes back with its offset and gets the rest, as it is still being written.
        rest = list(handle.read_stream("answer", start=offset, timeout=30))
        print(f"client 2: resumed at offset {offset}: {''.join(rest).strip()}")
        print(f"client 2: stream closed at offset {offset + len(rest)}")

        text = handle.result(timeout=30)
        print(f"answer: {text}")
        print(f"the client got every token exactly once: {''.join(seen + rest) == text}")
        status = list(handle.read_stream("status"))
        print(f"status stream: {', '.join(status)}")
        with app.connect() as conn:
            rows = conn.execute(
                "select stream_key, count(*) filter (where not closed), bool_or(closed) "
                "from pgdurable.streams where run_id = %s group by 1 order by 1",
                (handle.run_id,),
            ).fetchall()
        described = "; ".join(
            f"{key} {n} values, {'closed' if closed else 'open'}" for key, n, closed in rows
        )
        print(f"in SQL: {described}")
    finally:
        worker.stop()
        thread.join(timeout=30)
        app.close()


if __name__ == "__main__":
    main()
