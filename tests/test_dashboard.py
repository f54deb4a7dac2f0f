"""The dashboard over HTTP (a real uvicorn on loopback, httpx, a real database with runs made
by a real worker): pages, filters, keyset pagination, escaping, actions with their CSRF and
read-only refusals, authentication, and the refusal to listen beyond loopback without it."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo
from starlette.applications import Starlette
from starlette.routing import Mount

import pgdurable
from apps.dashboard_app import (
    HOSTILE_ERROR,
    HOSTILE_ID,
    Flags,
    define,
    make_runs,
    serving,
    status_of,
    wait_until,
    worker_thread,
)
from conftest import PYTHON, ROOT, _admin, with_db
from pgdurable.dashboard import InsecureBind, check_bind, create_app, serve
from pgdurable.dashboard._store import QUERIES
from pgdurable.dashboard._timeline import build
from pgdurable_cli.main import cli

TOKEN = "s3cret-token-for-the-dashboard-tests"


class World:
    def __init__(self, dsn: str, app: pgdurable.App, wfs: dict[str, Any], ids: dict[str, str]):
        self.dsn = dsn
        self.app = app
        self.wfs = wfs
        self.ids = ids
        self.base = ""

    def run_id(self, workflow_id: str) -> str:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "select id from pgdurable.runs where workflow_id = %s", (workflow_id,)
            ).fetchone()
        assert row is not None, workflow_id
        return str(row[0])


@pytest.fixture(scope="module")
def world(server_dsn: str, template_db: str) -> Iterator[World]:
    """One database for the module: runs in every state (one running, held by a step), seven
    runs started in one transaction (the same created_at: keyset ties), a worker, a server."""
    name = f"pgdurable_dash_{uuid.uuid4().hex[:12]}"
    with _admin(server_dsn) as admin:
        admin.execute(f'create database "{name}" template "{template_db}"')
    dsn = with_db(server_dsn, name)
    app = pgdurable.App(dsn, lease=2.0)
    flags = Flags()
    wfs = define(app, flags)
    try:
        with worker_thread(app):
            ids = make_runs(app, dsn, wfs, flags, busy=True)
            with psycopg.connect(dsn) as conn:
                for i in range(7):
                    wfs["backlog"].options(workflow_id=f"tie-{i}", conn=conn).start(f"t{i}")
            world = World(dsn, app, wfs, ids)
            with serving(create_app(dsn)) as base:
                world.base = base
                yield world
            flags.release.set()
    finally:
        flags.release.set()
        app.close()
        with _admin(server_dsn) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def client(world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.base, timeout=10) as c:
        yield c


def _workflow_ids(html: str) -> list[str]:
    """The workflow ids of the runs table, in order, unescaped as a browser shows them."""
    import html as html_lib

    return [
        html_lib.unescape(m)
        for m in re.findall(r'<td class="wid"><a href="[^"]+">([^<]*)</a>', html)
    ]


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "no CSRF field on the confirmation page"
    return match.group(1)


def _confirm_and_post(
    client: httpx.Client, run_id: str, action: str, **fields: str
) -> httpx.Response:
    page = client.get(f"/runs/{run_id}/{action}")
    assert page.status_code == 200, page.text
    data = {"csrf": _csrf(page.text), "confirm": "yes", **fields}
    return client.post(f"/runs/{run_id}/{action}", data=data)


# --- pages -------------------------------------------------------------------------------------


def test_runs_page_lists_every_state_with_counts(world: World, client: httpx.Client) -> None:
    page = client.get("/runs")
    assert page.status_code == 200
    shown = _workflow_ids(page.text)
    for workflow_id in world.ids.values():
        assert workflow_id in shown
    for status in ("pending", "running", "sleeping", "waiting", "completed", "failed"):
        assert f'class="status s-{status}"' in page.text
    counts = client.get("/runs/counts").text
    found = dict(re.findall(r'data-status="(\w+)">\s*<span class="n">([\d,]+)</span>', counts))
    assert found["pending"] == "8"  # backlog-1 and the seven ties
    assert found["running"] == found["sleeping"] == found["waiting"] == "1"
    assert found["failed"] == "2" and found["cancelled"] == "1"
    assert 'hx-trigger="every 3s"' in counts  # the page polls it


def test_run_page_shows_error_timeline_lease_and_children(
    world: World, client: httpx.Client
) -> None:
    failed = client.get(f"/runs/{world.run_id('order-declined')}").text
    assert "RuntimeError" in failed and "card declined for o-declined" in failed
    assert "Traceback (most recent call last)" in failed
    timeline = failed[failed.index('class="gantt"') :]
    assert "step reserve" in timeline and "step charge" in timeline
    assert "2 attempts" in timeline and 'data-kind="end-failed"' in timeline
    running = client.get(f"/runs/{world.run_id(world.ids['running'])}").text
    assert world.app.worker_id in running and "Lease until" in running
    parent = client.get(f"/runs/{world.run_id('batch-1')}").text
    for child in ("batch-1/dash_order", "batch-1/dash_order#3"):
        assert f'href="/runs/{world.run_id(child)}"' in parent
    waiting = client.get(f"/runs/{world.run_id('approval-1')}").text
    assert "Waiting for event <code>approve:a1</code>" in waiting


def test_queues_workers_and_workflows_pages(world: World, client: httpx.Client) -> None:
    queues = client.get("/queues").text
    row = re.search(r'<tr data-queue="nobody-serves" data-paused="no">(.*?)</tr>', queues, re.S)
    assert row and ">8</a>" in row.group(1)  # pending
    workers = client.get("/workers").text
    assert world.app.worker_id in workers and "busy-1" in workers and "1 live worker." in workers
    workflows = client.get("/workflows").text
    assert "no live worker serves workflow dash_backlog on queue nobody-serves" in workflows
    assert 'data-workflow="dash_order"' in workflows
    assert client.get("/runs/not-a-uuid").status_code == 404
    assert client.get(f"/runs/{uuid.uuid4()}").status_code == 404


def test_filters(world: World, client: httpx.Client) -> None:
    def ids(**params: str) -> set[str]:
        page = client.get("/runs", params=params)
        assert page.status_code == 200, page.text
        return set(_workflow_ids(page.text))

    assert ids(status="failed") == {"order-declined", HOSTILE_ID}
    assert ids(workflow="dash_nap") == {"nap-1"}
    assert ids(queue="nobody-serves") == {"backlog-1", *(f"tie-{i}" for i in range(7))}
    assert ids(q="approval") == {"approval-1", "approval-cancelled"}
    assert ids(q=world.run_id("nap-1")) == {"nap-1"}
    assert ids(status="pending", workflow="dash_backlog", since="1h") == ids(queue="nobody-serves")
    assert ids(until="1h") == set()
    assert "No runs match these filters." in client.get("/runs", params={"until": "1h"}).text
    bad = client.get("/runs", params={"since": "yesterday-ish"})
    assert bad.status_code == 400 and "is not a time" in bad.text
    assert client.get("/runs", params={"status": "sleepy"}).status_code == 400
    assert client.get("/runs", params={"before": "nonsense"}).status_code == 400


def test_keyset_pagination_walks_every_run_once_both_ways(world: World) -> None:
    with psycopg.connect(world.dsn) as conn:
        expected = [
            r[0]
            for r in conn.execute(
                "select workflow_id from pgdurable.runs order by created_at desc, id desc"
            )
        ]
    pages: list[list[str]] = []
    with (
        serving(create_app(world.dsn, page_size=5)) as base,
        httpx.Client(base_url=base) as client,
    ):
        url: str | None = "/runs"
        while url:
            html = client.get(url).text
            pages.append(_workflow_ids(html))
            found = re.search(r'<a href="([^"]+)" rel="next">', html)
            url = found.group(1).replace("&amp;", "&") if found else None
        assert [w for page in pages for w in page] == expected
        assert len(pages) == -(-len(expected) // 5) and all(len(p) == 5 for p in pages[:-1])
        back: list[list[str]] = [pages[-1]]
        found = re.search(r'<a href="([^"]+)" rel="prev">', html)
        while found:
            html = client.get(found.group(1).replace("&amp;", "&")).text
            back.append(_workflow_ids(html))
            found = re.search(r'<a href="([^"]+)" rel="prev">', html)
        assert back == list(reversed(pages))
    for name, statement in QUERIES.items():
        assert " offset " not in statement.lower(), name


def test_stored_strings_are_shown_as_text(world: World, client: httpx.Client) -> None:
    run_id = world.run_id(HOSTILE_ID)
    for html in (
        client.get("/runs").text,
        client.get(f"/runs/{run_id}").text,
        client.get(f"/runs/{run_id}/fork").text,
        client.get("/runs", params={"q": HOSTILE_ID}).text,
    ):
        assert "<script>alert(" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    detail = client.get(f"/runs/{run_id}").text
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&amp;amp;" in detail
    assert HOSTILE_ERROR not in detail


# --- actions -----------------------------------------------------------------------------------


def test_post_without_a_valid_csrf_token_is_refused(world: World, client: httpx.Client) -> None:
    world.wfs["approval"].options(workflow_id="csrf-target").start("c1")
    wait_until(lambda: status_of(world.dsn, "csrf-target") == "waiting", "csrf-target waits")
    run_id = world.run_id("csrf-target")
    token = _csrf(client.get(f"/runs/{run_id}/cancel").text)
    url = f"/runs/{run_id}/cancel"
    attempts = [
        client.post(url, data={"confirm": "yes"}),
        client.post(url, data={"confirm": "yes", "csrf": "0" * 64}),
        client.post(
            url, data={"confirm": "yes", "csrf": token}, headers={"origin": "https://evil"}
        ),
    ]
    with httpx.Client(base_url=world.base) as stranger:  # another session, the stolen token
        attempts.append(stranger.post(url, data={"confirm": "yes", "csrf": token}))
    for response in attempts:
        assert response.status_code == 403 and "CSRF" in response.text
    assert status_of(world.dsn, "csrf-target") == "waiting"
    done = client.post(url, data={"confirm": "yes", "csrf": token})
    assert done.status_code == 303 and done.headers["location"].endswith("?done=cancelled")
    assert status_of(world.dsn, "csrf-target") == "cancelled"
    assert "Run cancelled." in client.get(done.headers["location"]).text


def test_emit_send_and_fork_through_the_engine(
    world: World, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="pgdurable.dashboard")
    world.wfs["approval"].options(workflow_id="emit-target").start("e1")
    world.wfs["inbox"].options(workflow_id="send-target").start("s1")
    for wid in ("emit-target", "send-target"):
        wait_until(lambda w=wid: status_of(world.dsn, w) == "waiting", f"{wid} waits")
    emit_id = world.run_id("emit-target")
    form = client.get(f"/runs/{emit_id}/emit").text
    assert 'value="approve:e1"' in form  # prefilled from what the run waits for
    bad = _confirm_and_post(client, emit_id, "emit", name="approve:e1", payload="{not json")
    assert bad.status_code == 409 and "not valid JSON" in bad.text
    ok = _confirm_and_post(client, emit_id, "emit", name="approve:e1", payload='{"by": "ann"}')
    assert ok.status_code == 303
    send_id = world.run_id("send-target")
    assert _confirm_and_post(client, send_id, "send", topic="go", payload="42").status_code == 303
    wait_until(lambda: status_of(world.dsn, "emit-target") == "completed", "emit-target ends")
    wait_until(lambda: status_of(world.dsn, "send-target") == "completed", "send-target ends")
    assert world.app.handle("emit-target").result(timeout=5) == {"by": "ann"}
    assert world.app.handle("send-target").result(timeout=5) == 42
    source = world.run_id("order-ok")
    fork = _confirm_and_post(client, source, "fork", from_seq="1")
    assert fork.status_code == 303
    new_id = fork.headers["location"].split("/runs/")[1].split("?")[0]
    assert new_id != source
    with psycopg.connect(world.dsn) as conn:
        copied = conn.execute(
            "select step_key from pgdurable.checkpoints where run_id = %s and run_attempt = 0",
            (new_id,),
        ).fetchall()
    assert copied == [("reserve",)]
    actions = [r for r in caplog.records if getattr(r, "action", None)]
    assert {r.action for r in actions} >= {"emit", "send", "fork"}  # type: ignore[attr-defined]
    assert all(getattr(r, "actor", "").startswith("anonymous@127.0.0.1") for r in actions)


def test_read_only_hides_actions_and_refuses_them(world: World) -> None:
    run_id = world.run_id("approval-1")
    with (
        serving(create_app(world.dsn, read_only=True)) as base,
        httpx.Client(base_url=base) as client,
    ):
        page = client.get(f"/runs/{run_id}").text
        assert "read-only" in page and "/cancel" not in page and "fork here" not in page
        assert client.get(f"/runs/{run_id}/cancel").status_code == 403
        posted = client.post(f"/runs/{run_id}/cancel", data={"confirm": "yes", "csrf": "x"})
        assert posted.status_code == 403 and "read-only" in posted.text
    assert status_of(world.dsn, "approval-1") == "waiting"


# --- flow control, schedules and the audit log --------------------------------------------------


def _sql(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def _audit(dsn: str, target: str | None = None, run_id: str | None = None) -> list[tuple[Any, ...]]:
    """(actor, action, run_id, target) of the audit entries about ``target`` or ``run_id``."""
    return _sql(
        dsn,
        "select actor, action, run_id::text, target from pgdurable.audit_log"
        " where target = %s or run_id = %s::uuid order by id",
        (target, run_id),
    )


def _confirm_and_post_to(client: httpx.Client, url: str) -> httpx.Response:
    page = client.get(url)
    assert page.status_code == 200, page.text
    return client.post(url, data={"csrf": _csrf(page.text), "confirm": "yes"})


ME = "dashboard:anonymous@127.0.0.1"


def test_queues_page_shows_flow_control_and_pauses_and_resumes_a_queue(
    world: World, client: httpx.Client
) -> None:
    _sql(
        world.dsn,
        "select pgdurable.configure_queue('dash-limited', p_concurrency => 3, "
        "p_key_concurrency => 2, p_key_fifo => true, p_rate_count => 10, "
        "p_rate_period => interval '1 minute')",
    )
    page = client.get("/queues").text
    row = re.search(r'<tr data-queue="dash-limited" data-paused="no">(.*?)</tr>', page, re.S)
    assert row, page
    cells = re.sub(r"\s+", " ", row.group(1))
    assert "0 / <span" in cells and ">3</span>" in cells  # running / limit
    assert ">2, in order<" in cells and "0 / 10 per 1 min" in cells
    assert 'hx-trigger="every 3s"' in page  # the table polls itself
    url = "/queues/dash-limited/pause"
    token = _csrf(client.get(url).text)
    assert client.post(url, data={"confirm": "yes"}).status_code == 403  # no CSRF token
    assert client.post(url, data={"confirm": "yes", "csrf": "0" * 64}).status_code == 403
    paused = "select paused from pgdurable.queues where name = 'dash-limited'"
    assert _sql(world.dsn, paused) == [(False,)] and _audit(world.dsn, "dash-limited") == []
    done = client.post(url, data={"confirm": "yes", "csrf": token})
    assert done.status_code == 303 and done.headers["location"] == "/queues?done=queue-paused"
    assert _sql(world.dsn, paused) == [(True,)]
    after = client.get(done.headers["location"]).text
    assert "Queue paused" in after and 'data-queue="dash-limited" data-paused="yes"' in after
    assert 'href="/queues/dash-limited/resume"' in after
    assert _confirm_and_post_to(client, "/queues/dash-limited/resume").status_code == 303
    assert _sql(world.dsn, paused) == [(False,)]
    assert _audit(world.dsn, "dash-limited") == [
        (ME, "pause_queue", None, "dash-limited"),
        (ME, "resume_queue", None, "dash-limited"),
    ]
    # resuming a queue without settings is refused by the engine: an error, nothing recorded
    refused = _confirm_and_post_to(client, "/queues/nobody-serves/resume")
    assert refused.status_code == 409 and "has no settings" in refused.text
    assert _audit(world.dsn, "nobody-serves") == []
    assert client.get("/queues/no-such-queue/pause").status_code == 404
    assert client.get("/queues/dash-limited/explode").status_code == 404


def test_schedules_page_pause_resume_and_trigger(world: World, client: httpx.Client) -> None:
    _sql(
        world.dsn,
        "select pgdurable.upsert_schedule('yearly-report', 'dash_nap', '0 3 1 1 *', "
        '\'Europe/Berlin\', \'{"args": ["s1"], "kwargs": {}}\')',
    )
    assert 'href="/schedules"' in client.get("/runs").text  # in the nav
    page = client.get("/schedules").text
    row = re.search(r'<tr data-schedule="yearly-report" data-paused="no">(.*?)</tr>', page, re.S)
    assert row and "dash_nap" in row.group(1) and "<code>0 3 1 1 *</code>" in row.group(1)
    assert "Europe/Berlin" in row.group(1) and 'hx-trigger="every 3s"' in page
    base = "/schedules/yearly-report"
    assert client.post(f"{base}/trigger", data={"confirm": "yes"}).status_code == 403
    assert _sql(world.dsn, "select count(*) from pgdurable.runs where workflow_name = 'dash_nap'"
                " and workflow_id like 'schedule:yearly-report:%'") == [(0,)]  # fmt: skip
    started = _confirm_and_post_to(client, f"{base}/trigger")
    assert started.status_code == 303 and started.headers["location"].endswith("?done=triggered")
    run_id = started.headers["location"].split("/runs/")[1].split("?")[0]
    ((workflow_id,),) = _sql(
        world.dsn, "select workflow_id from pgdurable.runs where id = %s", (run_id,)
    )
    assert workflow_id.startswith("schedule:yearly-report:now:")
    run_page = client.get(started.headers["location"]).text
    assert "Started now by its schedule" in run_page
    actions = run_page[run_page.index("Actions taken on this run") :]
    assert "trigger_schedule" in actions and ME in actions
    listed = client.get("/schedules").text
    assert f'class="lastrun" href="/runs/{run_id}"' in listed
    assert _confirm_and_post_to(client, f"{base}/pause").status_code == 303
    assert _sql(world.dsn, "select paused from pgdurable.schedules") == [(True,)]
    assert 'data-schedule="yearly-report" data-paused="yes"' in client.get("/schedules").text
    assert _confirm_and_post_to(client, f"{base}/resume").status_code == 303
    assert _sql(world.dsn, "select paused from pgdurable.schedules") == [(False,)]
    assert _audit(world.dsn, "yearly-report") == [
        (ME, "trigger_schedule", run_id, "yearly-report"),
        (ME, "pause_schedule", None, "yearly-report"),
        (ME, "resume_schedule", None, "yearly-report"),
    ]
    audit_page = client.get("/audit").text
    assert audit_page.index("resume_schedule") < audit_page.index("trigger_schedule")
    assert client.get("/schedules/no-such/pause").status_code == 404
    _sql(world.dsn, "select pgdurable.delete_schedule('yearly-report')")


def test_run_actions_record_who_did_them_and_a_no_op_records_nothing(
    world: World, client: httpx.Client
) -> None:
    world.wfs["approval"].options(workflow_id="pause-target").start("p1")
    wait_until(lambda: status_of(world.dsn, "pause-target") == "waiting", "pause-target waits")
    run_id = world.run_id("pause-target")
    assert f'href="/runs/{run_id}/pause"' in client.get(f"/runs/{run_id}").text
    paused = _confirm_and_post(client, run_id, "pause")
    assert paused.status_code == 303 and paused.headers["location"].endswith("done=paused")
    assert status_of(world.dsn, "pause-target") == "paused"
    page = client.get(f"/runs/{run_id}").text
    assert f'href="/runs/{run_id}/resume"' in page and f'href="/runs/{run_id}/pause"' not in page
    again = _confirm_and_post(client, run_id, "pause")  # a stale form: nothing to do
    assert again.headers["location"].endswith("done=already-paused")
    assert _confirm_and_post(client, run_id, "resume").status_code == 303
    wait_until(lambda: status_of(world.dsn, "pause-target") == "waiting", "it waits again")
    refused = _confirm_and_post(client, run_id, "resume")  # a waiting run: the engine refuses
    assert refused.status_code == 409 and "only failed, cancelled or paused" in refused.text
    assert _confirm_and_post(client, run_id, "cancel").status_code == 303
    assert _confirm_and_post(client, run_id, "cancel").status_code == 303  # finished: no-op
    assert _audit(world.dsn, run_id=run_id) == [
        (ME, "pause", run_id, None),
        (ME, "resume", run_id, None),
        (ME, "cancel", run_id, None),
    ]
    page = client.get(f"/runs/{run_id}").text
    rows = re.findall(r'<tr data-action="(\w+)"><td class="t">[^<]+</td><td class="actor">([^<]+)<',
                      page[page.index("Actions taken on this run") :])  # fmt: skip
    assert rows == [("pause", ME), ("resume", ME), ("cancel", ME)]


def test_actions_and_audit_escape_names_and_actors_and_read_only_refuses(world: World) -> None:
    hostile_schedule = "x<b>bold<i>"
    hostile_user = '<img src=x onerror="alert(1)">'
    tricky_schedule = "PGDURABLEPARAM0X"  # looks like the placeholder of a link's path
    for name in (hostile_schedule, tricky_schedule):
        _sql(world.dsn, "select pgdurable.upsert_schedule(%s, 'dash_nap', '0 3 1 1 *')", (name,))
    try:
        with (
            serving(create_app(world.dsn, auth=TOKEN)) as base,
            httpx.Client(base_url=base, auth=(hostile_user, TOKEN)) as client,
        ):
            page = client.get("/schedules").text
            assert "<b>bold" not in page and "x&lt;b&gt;bold&lt;i&gt;" in page
            url = "/schedules/x%3Cb%3Ebold%3Ci%3E/pause"
            assert f'href="{url}"' in page
            assert f'href="/schedules/{tricky_schedule}/trigger"' in page
            confirm = client.get(url)
            assert confirm.status_code == 200 and "x&lt;b&gt;bold&lt;i&gt;" in confirm.text
            assert _confirm_and_post_to(client, url).status_code == 303
            actor = f"dashboard:{hostile_user}@127.0.0.1"
            assert _audit(world.dsn, hostile_schedule) == [
                (actor, "pause_schedule", None, hostile_schedule)
            ]
            audit_page = client.get("/audit").text
            assert hostile_user not in audit_page and "<b>bold" not in audit_page
            assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;@127.0.0.1" in audit_page
        with (
            serving(create_app(world.dsn, read_only=True)) as base,
            httpx.Client(base_url=base) as client,
        ):
            for page_url in ("/queues", "/schedules"):
                html = client.get(page_url).text
                assert "/pause" not in html and "/trigger" not in html and "/resume" not in html
            for url in ("/queues/dash-limited/pause", "/schedules/x%3Cb%3Ebold%3Ci%3E/trigger"):
                assert client.get(url).status_code == 403
                posted = client.post(url, data={"confirm": "yes", "csrf": "x"})
                assert posted.status_code == 403 and "read-only" in posted.text
    finally:
        for name in (hostile_schedule, tricky_schedule):
            _sql(world.dsn, "select pgdurable.delete_schedule(%s)", (name,))
    assert len(_audit(world.dsn, hostile_schedule)) == 1


def test_audit_page_walks_every_entry_once_newest_first(world: World) -> None:
    for i in range(12):
        _sql(world.dsn, "select pgdurable.record_action('cli:ops', 'retry', null, %s)", (f"t{i}",))
    expected = [
        r[0] for r in _sql(world.dsn, "select id from pgdurable.audit_log order by id desc")
    ]
    seen: list[int] = []
    with (
        serving(create_app(world.dsn, page_size=5)) as base,
        httpx.Client(base_url=base) as client,
    ):
        url: str | None = "/audit"
        while url:
            html = client.get(url).text
            seen += [int(i) for i in re.findall(r'<tr data-action="\w+" data-id="(\d+)">', html)]
            found = re.search(r'<a href="([^"]+)" rel="next">', html)
            url = found.group(1) if found else None
        assert client.get("/audit?before=drop%20table").status_code == 400
    assert seen == expected and len(seen) >= 12


def test_a_client_only_login_acts_and_records_what_its_role_allows(
    world: World, server_dsn: str
) -> None:
    from psycopg import sql

    name = f"pgd_dashclient_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login in role pgdurable_client").format(
            sql.Identifier(name)))  # fmt: skip
    try:
        world.wfs["approval"].options(workflow_id="client-target").start("c9")
        wait_until(lambda: status_of(world.dsn, "client-target") == "waiting", "it waits")
        run_id = world.run_id("client-target")
        client_dsn = make_conninfo(world.dsn, user=name)
        with serving(create_app(client_dsn)) as base, httpx.Client(base_url=base) as client:
            page = client.get(f"/runs/{run_id}")
            assert page.status_code == 200
            assert "The audit log is not readable by the dashboard" in page.text
            assert _confirm_and_post(client, run_id, "cancel").status_code == 303
            denied = _confirm_and_post_to(client, "/queues/nobody-serves/pause")
            assert denied.status_code == 409 and "permission denied" in denied.text
            assert client.get("/audit").status_code == 403
        assert status_of(world.dsn, "client-target") == "cancelled"
        assert _audit(world.dsn, run_id=run_id) == [(ME, "cancel", run_id, None)]
        assert _audit(world.dsn, "nobody-serves") == []  # the refused pause recorded nothing
        assert _sql(world.dsn, "select count(*) from pgdurable.queues where paused") == [(0,)]
    finally:
        with psycopg.connect(world.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


# --- who may connect, and where ----------------------------------------------------------------


def test_token_is_required_when_configured(world: World) -> None:
    with serving(create_app(world.dsn, auth=TOKEN)) as base:
        for path in ("/runs", "/static/htmx.min.js"):
            denied = httpx.get(base + path)
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"].startswith("Basic")
        assert httpx.get(base + "/runs", auth=("ann", "wrong-token-wrong-token")).status_code == 401
        assert httpx.get(base + "/runs", auth=("ann", TOKEN)).status_code == 200
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.get(base + "/runs", headers=bearer).status_code == 200
    with pytest.raises(ValueError, match="at least 16"):
        create_app(world.dsn, auth="short")


def test_refuses_to_listen_beyond_loopback_without_a_token(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGDURABLE_DASHBOARD_TOKEN", raising=False)
    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind(host, None)
    check_bind("0.0.0.0", TOKEN)
    for host in ("0.0.0.0", "::", "192.0.2.10", "example.org"):
        with pytest.raises(InsecureBind, match="refusing to listen"):
            check_bind(host, None)
    with pytest.raises(InsecureBind):
        serve(world.dsn, host="0.0.0.0", port=1)
    runner = CliRunner()
    refused = runner.invoke(cli, ["dashboard", "--dsn", world.dsn, "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and "refusing to listen on 0.0.0.0" in refused.output
    short = tmp_path / "token"
    short.write_text("tiny\n")
    bad = runner.invoke(cli, ["dashboard", "--dsn", world.dsn, "--token-file", str(short)])
    assert bad.exit_code == 2 and "at least 16" in bad.output


def test_cli_serves_the_dashboard(world: World, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "pgdurable_cli.main",
            "dashboard",
            "--dsn",
            world.dsn,
            "--port",
            str(port),
            "--read-only",
            "--token-file",
            str(token),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/runs", timeout=1).status_code == 401
            except httpx.TransportError:
                if proc.poll() is not None:
                    output = proc.communicate()[0]
                    raise AssertionError(f"pgdurable dashboard exited: {output}") from None
                return False

        wait_until(up, "pgdurable dashboard to answer", timeout=20)
        page = httpx.get(f"http://127.0.0.1:{port}/runs", auth=("ops", TOKEN))
        assert (
            page.status_code == 200 and "order-declined" in page.text and "read-only" in page.text
        )
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0]
    assert f"on http://127.0.0.1:{port}/ (read-only)" in output


# --- pieces ------------------------------------------------------------------------------------


def test_security_headers_and_session_cookie(client: httpx.Client) -> None:
    page = client.get("/runs")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_mounted_under_a_prefix_links_stay_inside_it(world: World) -> None:
    parent = Starlette(routes=[Mount("/ops/durable", app=create_app(world.dsn))])
    with serving(parent) as base, httpx.Client(base_url=base) as client:
        html = client.get("/ops/durable/runs").text
        links = re.findall(r'(?:href|src|hx-get)="(/[^"]*)"', html)
        assert links and all(link.startswith("/ops/durable/") for link in links), links
        assert client.get("/ops/durable/static/dashboard.css").status_code == 200


def test_every_dashboard_query_is_used_and_defined() -> None:
    package = ROOT / "src" / "pgdurable" / "dashboard"
    code = "\n".join(p.read_text() for p in package.glob("*.py"))
    used = set(re.findall(r"""(?:rows|row|act)\(\s*["'](\w+)["']""", code))
    used |= set(re.findall(r"""QUERIES\[["'](\w+)["']\]""", code))
    used |= set(re.findall(r"""function=["'](\w+)["']""", code))  # _operate.OPERATIONS
    used |= set(re.findall(r"""\(["'](\w+)["'], \(run_id,\)\)""", code))  # before=...
    assert used == set(QUERIES), used ^ set(QUERIES)
    outside = [
        p
        for p in (ROOT / "src" / "pgdurable").rglob("*.py")
        if package not in p.parents
        and re.search(r"^\s*(?:from|import)\s+[\w.]*dashboard", p.read_text(), re.M)
    ]
    assert not outside, f"the SDK must not import the dashboard: {outside}"


def test_timeline_places_bars_gaps_and_waits() -> None:
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)

    def at(s: float) -> datetime:
        return t0 + timedelta(seconds=s)

    run = {
        "status": "waiting", "created_at": t0, "started_at": at(1), "finished_at": None,
        "updated_at": at(5), "attempt": 1, "wait_for": "event:go", "wakes_at": None,
        "wake_reason": None, "retry_step_key": None, "retry_step_attempts": 0, "error_type": None,
    }  # fmt: skip
    cps = [
        {"seq": 0, "step_key": "a", "kind": "step", "step_name": "a", "attempts": 3,
         "run_attempt": 1, "started_at": at(1), "completed_at": at(3), "error": None},
        {"seq": 1, "step_key": "sleep", "kind": "sleep", "step_name": "sleep", "attempts": 1,
         "run_attempt": 1, "started_at": at(3), "completed_at": at(3), "error": None,
         "wake_at": at(4).isoformat()},
    ]  # fmt: skip
    tl = build(run, cps, {}, at(10))
    kinds = [b.kind for b in tl.bars]
    assert kinds == ["queued", "step", "sleep", "waiting"]
    step, sleep, wait = tl.bars[1:]
    assert step.detail == "3 attempts" and step.seconds == 2 and step.left == pytest.approx(10)
    assert sleep.seconds == 1 and not sleep.open
    assert wait.open and wait.start == at(5) and wait.gap_before is None
    assert tl.now == pytest.approx(100)
    assert all(0 <= b.left <= 100 and b.left + b.width <= 100.0001 for b in tl.bars)


def test_cli_names_the_extra_when_it_is_missing() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "from pgdurable_cli.main import cli\n"
        "cli(['dashboard', '--dsn', 'postgresql://nobody@127.0.0.1:1/none'])\n"
    )
    proc = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 1
    assert 'pip install "pgdurable[dashboard]"' in proc.stderr
