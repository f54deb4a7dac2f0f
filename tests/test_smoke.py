from __future__ import annotations

import threading

import pgdurable


def test_workflow_runs_in_process_and_on_a_worker(app: pgdurable.App) -> None:
    calls: list[int] = []

    @app.step()
    def add(a: int, b: int) -> int:
        calls.append(a)
        return a + b

    @app.workflow()
    def flow(x: int) -> dict[str, int]:
        return {"y": add(add(x, 1), 2)}

    assert flow(1) == {"y": 4}
    handle = flow.start(10)
    worker = app.worker(concurrency=2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert handle.result(timeout=10) == {"y": 13}
    finally:
        worker.stop()
        thread.join(10)
    assert handle.status() == "completed"
    assert [s["step_key"] for s in handle.steps()] == ["add", "add#2"]
    assert calls == [1, 2, 10, 11]
