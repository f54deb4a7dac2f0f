"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
runs in every state, filter, open a failed run, read its timeline, retry it and watch it
complete, cancel a sleeping run and check the database, pause a queue from the queues page,
trigger a schedule and open the run it started. With PGDURABLE_SCREENSHOTS=1 it saves
docs/img/dashboard-runs.png, dashboard-timeline.png and dashboard-queues.png."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

import pgdurable
from apps.dashboard_app import (
    HOSTILE_ID,
    Flags,
    define,
    make_runs,
    serving,
    status_of,
    worker_thread,
)
from conftest import ROOT, _admin, with_db
from pgdurable.dashboard import create_app

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "docs" / "img"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: the dashboard's browser test needs Debian's Chromium "
        "(apt-get install chromium; .ci/run installs it). It never downloads a browser."
    )
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


def test_dashboard_in_chromium(server_dsn: str, template_db: str, browser: Browser) -> None:
    name = f"pgdurable_dashb_{uuid.uuid4().hex[:12]}"
    with _admin(server_dsn) as admin:
        admin.execute(f'create database "{name}" template "{template_db}"')
    dsn = with_db(server_dsn, name)
    app = pgdurable.App(dsn, lease=2.0)
    flags = Flags()
    wfs = define(app, flags)
    try:
        with worker_thread(app):
            ids = make_runs(app, dsn, wfs, flags, busy=False)
            with serving(create_app(dsn, poll_seconds=0.5)) as base:
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                dialogs: list[str] = []
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                _walk(page, base, app, wfs, flags, ids, dsn)
                assert not dialogs, f"a stored string ran as script: {dialogs}"
                page.close()
    finally:
        flags.release.set()
        app.close()
        with _admin(server_dsn) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def _shot(page: Page, name: str, height: int | None = None) -> None:
    if os.environ.get("PGDURABLE_SCREENSHOTS") != "1":
        return
    SHOTS.mkdir(parents=True, exist_ok=True)
    clip = {"x": 0, "y": 0, "width": 1280, "height": height} if height else None
    page.screenshot(path=str(SHOTS / name), full_page=bool(height), clip=clip)  # type: ignore[arg-type]


def _walk(
    page: Page,
    base: str,
    app: pgdurable.App,
    wfs: dict[str, object],
    flags: Flags,
    ids: dict[str, str],
    dsn: str,
) -> None:
    # The runs page: every state, the hostile workflow id as text, live counts.
    page.goto(f"{base}/runs")
    table = page.locator("table.runs")
    for status in ("pending", "sleeping", "waiting", "completed", "failed", "cancelled"):
        expect(table.locator(f".status.s-{status}").first).to_be_visible()
    expect(table.get_by_text(HOSTILE_ID, exact=True)).to_be_visible()
    pending = page.locator('#counts a[data-status="pending"] .n')
    expect(pending).to_have_text("1")
    _shot(page, "dashboard-runs.png")
    app.start("dash_backlog", ["b2"], workflow_id="backlog-2")
    expect(pending).to_have_text("2", timeout=10_000)  # polled by htmx, no reload

    # Filter: failed runs only.
    page.select_option("select[name=status]", "failed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"status=failed"))
    statuses = page.locator("table.runs .status").all_inner_texts()
    assert statuses and set(statuses) == {"failed"}

    # The failed run: its error and the timeline of its steps.
    page.get_by_role("link", name=ids["failed"], exact=True).click()
    expect(page.locator("h1.runtitle")).to_contain_text(ids["failed"])
    expect(page.locator(".errorbox")).to_contain_text("card declined for o-declined")
    gantt = page.locator("table.gantt")
    expect(gantt.locator('tr[data-kind="step"]')).to_have_count(2)
    expect(gantt).to_contain_text("step reserve")
    expect(gantt).to_contain_text("step charge")
    expect(gantt).to_contain_text("2 attempts")
    expect(gantt.locator("svg.bar rect")).to_have_count(4)  # queued, two steps, the end
    _shot(page, "dashboard-timeline.png", height=900)

    # Retry it (the step succeeds now), confirm, and watch it complete without a reload.
    flags.charge_fails = False
    page.get_by_role("link", name="Retry", exact=True).click()
    expect(page.locator("h1")).to_have_text("Retry this failed run")
    page.get_by_role("button", name="Yes, retry it").click()
    expect(page.locator(".done")).to_contain_text("Retry started")
    expect(page.locator("#run-live")).to_have_attribute("data-status", "completed", timeout=15_000)
    expect(page.locator("h1.runtitle .status")).to_have_text("completed")
    assert status_of(dsn, ids["failed"]) == "completed"
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/live" in r.url else None)
    page.wait_for_timeout(1500)  # three poll intervals: a finished run is not polled any more
    assert polls == []

    # Cancel the sleeping run; the database says cancelled.
    page.goto(f"{base}/runs?status=sleeping")
    page.get_by_role("link", name=ids["sleeping"], exact=True).click()
    page.get_by_role("link", name="Cancel", exact=True).click()
    expect(page.locator(".explain")).to_contain_text("pgdurable.cancel_run")
    page.get_by_role("button", name="Yes, cancel it").click()
    expect(page.locator(".done")).to_have_text("Run cancelled.")
    expect(page.locator("h1.runtitle .status")).to_have_text("cancelled")
    assert status_of(dsn, ids["sleeping"]) == "cancelled"

    # Who did it: the run page lists the cancel, with the actor.
    audit = page.locator("section.audit table.audit tr[data-action]")
    expect(audit).to_have_count(1)
    expect(audit.first).to_contain_text("dashboard:anonymous@127.0.0.1")
    expect(audit.first).to_contain_text("cancel")

    _queues_and_schedules(page, base, dsn)


def _scalar(dsn: str, statement: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(statement).fetchone()
    return None if row is None else row[0]


def _queues_and_schedules(page: Page, base: str, dsn: str) -> None:
    # Pause the unserved queue from the queues page; the database says paused.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "select pgdurable.configure_queue('default', p_concurrency => 4, "
            "p_rate_count => 100, p_rate_period => interval '1 minute')"
        )
        conn.execute(
            "select pgdurable.upsert_schedule('nightly-digest', 'dash_order', '0 3 1 1 *', "
            '\'Europe/Berlin\', \'{"args": ["digest"], "kwargs": {}}\')'
        )
    page.get_by_role("link", name="Queues", exact=True).click()
    row = page.locator('tr[data-queue="nobody-serves"]')
    expect(row).to_have_attribute("data-paused", "no")
    expect(page.locator('tr[data-queue="default"] td.running')).to_contain_text("/ 4")
    row.get_by_role("link", name="Pause").click()
    expect(page.locator("h1")).to_have_text("Pause this queue")
    expect(page.locator(".explain")).to_contain_text("pgdurable.pause_queue")
    page.get_by_role("button", name="Yes, pause the queue").click()
    expect(page.locator(".done")).to_contain_text("Queue paused")
    expect(row).to_have_attribute("data-paused", "yes")
    expect(row.locator(".status.s-paused")).to_be_visible()
    assert _scalar(dsn, "select paused from pgdurable.queues where name = 'nobody-serves'")
    _shot(page, "dashboard-queues.png")

    # Trigger the schedule: its run appears, and the schedules page links it as the last run.
    page.get_by_role("link", name="Schedules", exact=True).click()
    schedule = page.locator('tr[data-schedule="nightly-digest"]')
    expect(schedule).to_contain_text("Europe/Berlin")
    expect(schedule.locator("a.lastrun")).to_have_count(0)
    schedule.get_by_role("link", name="Trigger now").click()
    page.get_by_role("button", name="Yes, start a run now").click()
    expect(page.locator(".done")).to_contain_text("Started now by its schedule")
    expect(page.locator("h1.runtitle .wid")).to_contain_text("schedule:nightly-digest:now:")
    expect(page.locator("section.audit")).to_contain_text("trigger_schedule")
    started = _scalar(
        dsn, "select count(*) from pgdurable.runs where workflow_id like 'schedule:nightly-%'"
    )
    assert started == 1
    page.get_by_role("link", name="Schedules", exact=True).click()
    expect(schedule.locator("a.lastrun")).to_contain_text("schedule:nightly-digest:now:")
    page.get_by_role("link", name="Audit", exact=True).click()
    expect(page.locator("table.audit tr[data-action]")).to_have_count(4)  # retry, cancel, ...
