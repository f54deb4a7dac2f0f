"""Fan-out / fan-in: an agent's tool calls run in parallel as child workflows.

    PGDURABLE_DSN=postgresql://... python examples/fanout.py

The agent workflow plans three tool calls, starts each as a child workflow (the start is
checkpointed: a replay never starts a tool twice), and waits for all of them with
``pgdurable.gather``. While it waits the parent holds no worker slot, so even a worker with a
single slot runs parent and children without deadlock. Each tool call is a retried step: the
flaky search tool fails once and succeeds on its retry. A child's failure would reach the
parent as ``WorkflowFailed``.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import pgdurable

app = pgdurable.App()  # $PGDURABLE_DSN, else the embedded development database

_search_failures = {"left": 1}  # the search API times out once


@app.step(retry=pgdurable.Retry(max_attempts=3, initial_delay=0.05))
def call_tool(tool: str, arg: str) -> str:
    """Stand-ins for real tool APIs (weather service, search engine, calculator)."""
    if tool == "weather":
        return "sunny, 24 C"
    if tool == "search":
        if _search_failures["left"]:
            _search_failures["left"] -= 1
            raise TimeoutError("search API timed out")
        return "Parc des Buttes-Chaumont"
    if tool == "calculator":
        people, each = arg.split(" * ")
        return f"{int(people) * float(each):.2f}"
    raise pgdurable.NonRetryableError(f"unknown tool {tool!r}")


@app.workflow()
def tool_call(tool: str, arg: str) -> dict[str, str]:
    return {"tool": tool, "arg": arg, "result": call_tool(tool, arg)}


@app.step()
def plan(question: str) -> list[list[str]]:
    """The model's plan (fixed here): which tools to call with which arguments."""
    return [
        ["weather", "Paris, Saturday"],
        ["search", "parks in Paris"],
        ["calculator", "4 * 12.5"],
    ]


@app.workflow()
def agent(question: str) -> dict[str, Any]:
    calls = plan(question)
    handles = [tool_call.start(tool, arg) for tool, arg in calls]  # fan-out
    results = pgdurable.gather(*handles)  # fan-in: durable, no slot held
    by_tool = {r["tool"]: r["result"] for r in results}
    answer = (
        f"Saturday in Paris looks {by_tool['weather']}: picnic at {by_tool['search']}, "
        f"budget {by_tool['calculator']} EUR"
    )
    return {"calls": results, "answer": answer}


def main() -> None:
    where = "the database in $PGDURABLE_DSN" if os.environ.get("PGDURABLE_DSN") else "embedded"
    print(f"database: {where}")
    app.init_schema()
    question = "plan a picnic in Paris on Saturday for 4"
    print(f"question: {question}")

    worker = app.worker(concurrency=1, poll_interval=0.1)  # one slot: parent and children share
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        handle = agent.options(workflow_id=f"agent-{uuid.uuid4().hex[:8]}").start(question)
        out = handle.result(timeout=30)
    finally:
        worker.stop()
        thread.join(timeout=30)
    for call in out["calls"]:
        print(f"  {call['tool']}({call['arg']}) -> {call['result']}")
    print(f"answer: {out['answer']}")
    with app.connect() as conn:
        rows = conn.execute(
            "select r.workflow_name, r.status, c.attempts from pgdurable.runs r "
            "join pgdurable.checkpoints c on c.run_id = r.id and c.kind = 'step' "
            "where r.parent_id = %s order by r.workflow_id",
            (handle.run_id,),
        ).fetchall()
    print(
        f"children of the agent run: {len(rows)}, "
        f"all {'completed' if {r[1] for r in rows} == {'completed'} else 'NOT completed'}"
    )
    print(f"tool attempts: {', '.join(str(r[2]) for r in rows)}")
    app.close()


if __name__ == "__main__":
    main()
