"""The App that tests/test_cli.py runs with `pgdurable worker cli_app:app`."""

from __future__ import annotations

import pgdurable

app = pgdurable.App()  # its DSN comes from $PGDURABLE_DSN, or from the worker's --dsn

not_an_app = 42


@app.step()
def shout(name: str) -> str:
    return name.upper()


@app.workflow(name="cli_greet")
def greet(name: str) -> str:
    return f"hello {shout(name)}"


def make_app() -> pgdurable.App:
    return app
