"""pgdurable behind FastAPI: start a workflow in the request's own transaction, await its result.

    python examples/fastapi_app.py [--dsn DSN]   # self-demo: serves on 127.0.0.1, calls itself
    uvicorn --app-dir examples fastapi_app:api   # serve it (its lifespan runs a worker too)

- POST /orders inserts the order row and starts the order's workflow on the same
  AsyncConnection, in one transaction: both commit or neither exists. A request that fails after
  the start (here: the stock reservation that follows it) leaves no order and no run; no worker
  ever sees that run.
- GET /orders/{id}/result waits for the run's result (a long poll: 202 while it still runs).
- GET /orders/{id}/events streams the run's progress as server-sent events, resumable with the
  standard Last-Event-ID header.
- POST /orders/{id}/packed is the warehouse's callback, which the workflow waits for durably.

The workflow is a plain ``def``, executed by a worker thread that the app's lifespan starts and
stops: one process to deploy. To scale the API and the workers apart, serve
``create_api(run_worker=False)`` and run ``PYTHONPATH=examples pgdurable worker fastapi_app:app``
as often as needed. Needs FastAPI, uvicorn and httpx: ``pip install -e ".[examples]"``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Annotated, Any, Literal

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

import pgdurable
from pgdurable import close_stream, write_stream

try:
    import httpx
    import uvicorn
    from fastapi import APIRouter, FastAPI, Header, HTTPException, Path, Query, Request, Response
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, Field
except ImportError as exc:  # optional dependencies: say how to get them
    raise SystemExit(
        f'this example needs FastAPI, uvicorn and httpx: pip install -e ".[examples]" ({exc})'
    ) from exc


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="PostgreSQL to use (default: $PGDURABLE_DSN, else embedded)")
    return parser.parse_args(argv)


# Parsed here because the decorators below need the App; importing this module (uvicorn,
# `pgdurable worker fastapi_app:app`) ignores the command line.
ARGS = _arguments() if __name__ == "__main__" else _arguments([])

app = pgdurable.App(ARGS.dsn)  # the pgdurable App; the FastAPI app is `api`, below

# --- the workflow: plain sync code, run by a worker -----------------------------------------

PRICE_CENTS = {"widget": 1250, "gadget": 4000}
CARD_LIMIT_CENTS = 50_000  # the (fake) payment provider declines larger charges


@app.step(retry=pgdurable.Retry(max_attempts=5, initial_delay=0.2))
def charge_card(order_id: str, cents: int) -> str:
    """The payment API call (a stand-in). Steps are at-least-once: a real call sends the order
    id as its idempotency key, so a retry after a crash does not charge twice."""
    if cents > CARD_LIMIT_CENTS:
        # a refusal, not an outage: retrying cannot help
        raise pgdurable.NonRetryableError(
            f"payment declined: {cents} cents is over the card limit of {CARD_LIMIT_CENTS}"
        )
    return f"ch-{order_id}"


@app.transaction()
def set_status(conn: psycopg.Connection[Any], order_id: str, status: str) -> None:
    conn.execute("update shop_orders set status = %s where order_id = %s", (status, order_id))


@app.transaction()
def release_order(conn: psycopg.Connection[Any], order_id: str, sku: str, quantity: int) -> None:
    """Gives back the stock POST /orders reserved, once: in the transaction of its checkpoint."""
    conn.execute("update shop_orders set status = 'declined' where order_id = %s", (order_id,))
    conn.execute("update shop_stock set in_stock = in_stock + %s where sku = %s", (quantity, sku))


@app.workflow(queue="shop")
def fulfil_order(order_id: str, sku: str, quantity: int) -> dict[str, Any]:
    write_stream("progress", "received")
    cents = quantity * PRICE_CENTS[sku]
    try:
        charge_id = charge_card(order_id, cents)
    except pgdurable.NonRetryableError:
        release_order(order_id, sku, quantity)
        write_stream("progress", "declined")
        close_stream("progress")
        raise  # the run fails; GET /orders/{id}/result answers 422
    set_status(order_id, "paid")
    write_stream("progress", f"paid {cents} cents")
    write_stream("progress", "waiting for the warehouse")
    # The run leaves the worker until POST /orders/{id}/packed emits this event (or fails
    # with EventTimeout after a week).
    packed = pgdurable.wait_for_event(f"packed:{order_id}", timeout=timedelta(days=7))
    set_status(order_id, "shipped")
    write_stream("progress", f"shipped in parcel {packed['parcel']}")
    close_stream("progress")
    return {"status": "shipped", "charge_id": charge_id, "cents": cents, "parcel": packed["parcel"]}


def workflow_id(order_id: str) -> str:
    """One run per order: the order id names it, so the API finds it again without a lookup."""
    return f"order-{order_id}"


SHOP_TABLES = """
create table if not exists shop_orders (
    order_id   text primary key,
    sku        text not null,
    quantity   integer not null,
    status     text not null default 'placed',
    packed_at  timestamptz,
    created_at timestamptz not null default now()
);
create table if not exists shop_stock (
    sku      text primary key,
    in_stock integer not null constraint shop_stock_in_stock_check check (in_stock >= 0)
);
insert into shop_stock (sku, in_stock) values ('widget', 1000000), ('gadget', 0)
on conflict (sku) do nothing;
"""


def prepare_database() -> None:
    """The pgdurable schema (what `pgdurable init` does at deploy time) and the shop's tables,
    which must live in the same database: that is what lets one transaction hold both."""
    app.init_schema()
    with app.connect() as conn:
        conn.execute(SHOP_TABLES)


# --- the HTTP API ------------------------------------------------------------------------------

OrderId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class NewOrder(BaseModel):
    order_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    sku: Literal["widget", "gadget"]
    quantity: int = Field(gt=0, le=1000)


class Packed(BaseModel):
    parcel: str = Field(min_length=1, max_length=64)


router = APIRouter()


@router.post("/orders", status_code=201)
async def create_order(order: NewOrder, request: Request, response: Response) -> dict[str, str]:
    """Record the order and start its workflow, atomically."""
    pool: AsyncConnectionPool = request.app.state.pool
    try:
        # The transaction is committed here, before the 201 leaves: a client that reads the
        # order right after the response always finds it (and a worker finds its run).
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "insert into shop_orders (order_id, sku, quantity) values (%s, %s, %s)",
                (order.order_id, order.sku, order.quantity),
            )
            handle = await fulfil_order.options(
                workflow_id=workflow_id(order.order_id), conn=conn
            ).start_async(order.order_id, order.sku, order.quantity)
            # Reserved after the start on purpose, to show that anything failing later in the
            # request (here: a sold-out item) rolls the run back with the order row.
            await conn.execute(
                "update shop_stock set in_stock = in_stock - %s where sku = %s",
                (order.quantity, order.sku),
            )
    except pg_errors.CheckViolation:
        raise HTTPException(409, f"out of stock: {order.sku}") from None
    except pg_errors.UniqueViolation:
        raise HTTPException(409, f"order {order.order_id} exists") from None
    response.headers["Location"] = f"/orders/{order.order_id}/result"
    return {
        "order_id": order.order_id,
        "workflow_id": handle.workflow_id,
        "run_id": str(handle.run_id),
    }


async def _find(order_id: str) -> pgdurable.RunHandle[Any]:
    try:
        return await app.handle_async(workflow_id(order_id))
    except pgdurable.RunNotFound:
        raise HTTPException(404, f"no order {order_id}") from None


@router.get("/orders/{order_id}/result")
async def order_result(
    order_id: OrderId,
    timeout: Annotated[float, Query(ge=0, le=60, description="seconds to wait")] = 10.0,
) -> Any:
    """The order's outcome once its run has ended: a long poll, 202 while it still runs."""
    handle = await _find(order_id)
    try:
        return await handle.result_async(timeout=timeout)
    except TimeoutError:
        status = await handle.status_async()
        body = {"order_id": order_id, "status": status}
        return JSONResponse(body, status_code=202, headers={"Retry-After": "1"})
    except pgdurable.RunCancelled:
        raise HTTPException(410, f"order {order_id} was cancelled") from None
    except pgdurable.WorkflowFailed as exc:
        if exc.error_type == "pgdurable.NonRetryableError":
            # the workflow refused the order (a business outcome the client can act on)
            raise HTTPException(422, exc.message) from None
        # a bug or an outage: its traceback stays with the run: `pgdurable show RUN`
        raise HTTPException(500, f"order {order_id} failed: see run {exc.run_id}") from None
    except pgdurable.RunNotFound:  # deleted by retention while we waited
        raise HTTPException(404, f"no order {order_id}") from None


@router.post("/orders/{order_id}/packed", status_code=202)
async def order_packed(order_id: OrderId, packed: Packed, request: Request) -> dict[str, str]:
    """The warehouse's callback: recorded, and the waiting run woken, in one transaction."""
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "update shop_orders set packed_at = now() where order_id = %s", (order_id,)
        )
        if cur.rowcount == 0:
            raise HTTPException(404, f"no order {order_id}")
        await app.emit_event_async(f"packed:{order_id}", {"parcel": packed.parcel}, conn=conn)
    return {"order_id": order_id, "parcel": packed.parcel}


KEEPALIVE = 10.0  # seconds without a value before a comment line goes out


@router.get("/orders/{order_id}/events")
async def order_events(
    order_id: OrderId,
    start: Annotated[int | None, Query(ge=0, lt=2**31, description="first offset to send")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """The run's progress as server-sent events, each with its offset as the event id; ends
    with an ``end`` event. A browser's EventSource resumes by itself with Last-Event-ID."""
    handle = await _find(order_id)
    if start is None:
        if last_event_id is not None and not re.fullmatch(r"[0-9]{1,9}", last_event_id):
            raise HTTPException(400, "Last-Event-ID must be an event id this stream sent")
        start = 0 if last_event_id is None else int(last_event_id) + 1
    return StreamingResponse(
        _sse(handle, start), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


async def _sse(handle: pgdurable.RunHandle[Any], offset: int) -> AsyncIterator[str]:
    while True:
        # No thread and no connection per listening client: every reader on this event loop is
        # woken by one LISTEN session and borrows a pooled connection only for each read.
        # aclosing: a client that goes away stops its reader at once.
        async with contextlib.aclosing(
            handle.read_stream_async("progress", start=offset, timeout=KEEPALIVE)
        ) as values:
            try:
                async for value in values:
                    yield f"id: {offset}\ndata: {json.dumps(value)}\n\n"
                    offset += 1
            except TimeoutError:
                # Nothing new for a while: a comment keeps proxies from closing the connection
                # and tells a vanished client apart; then a fresh reader goes on from there.
                yield ": keep-alive\n\n"
                continue
        yield "event: end\ndata: {}\n\n"
        return


def create_api(run_worker: bool = True) -> FastAPI:
    """The FastAPI app. ``run_worker``: execute the workflows in a thread of this process
    (else run `pgdurable worker fastapi_app:app` next to it)."""

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(prepare_database)
        # The app's own pool, for its own tables; start_async writes the run through it too.
        pool = AsyncConnectionPool(app.dsn, min_size=1, max_size=10, open=False)
        await pool.open(wait=True, timeout=30)
        api.state.pool = pool
        worker = app.worker(concurrency=4, poll_interval=0.5) if run_worker else None
        thread = threading.Thread(target=worker.run, name="pgdurable-worker") if worker else None
        try:
            if worker and thread:
                thread.start()
                if not await asyncio.to_thread(worker.ready.wait, 30):
                    raise RuntimeError("the pgdurable worker did not start within 30 s")
            yield
        finally:
            if worker and thread:
                # hands its runs back at their next durable operation; another worker resumes them
                worker.stop()
                await asyncio.to_thread(thread.join, 30)
            await pool.close()
            await app.close_async()

    api = FastAPI(title="pgdurable shop", lifespan=lifespan)
    api.include_router(router)
    return api


api = create_api()


# --- the self-demo: serve on a free port of 127.0.0.1, call the API like a client would ------


@contextlib.contextmanager
def serving(asgi: FastAPI, startup_timeout: float = 120.0) -> Iterator[str]:
    """Run uvicorn in a thread on a free port of 127.0.0.1; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # port 0: the kernel picks a free one, no race to find it
    host, port = sock.getsockname()
    config = uvicorn.Config(
        asgi, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn")
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn stopped while starting (its log is above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {startup_timeout} s")
            time.sleep(0.05)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("uvicorn did not stop within 60 s")


def sse_events(response: httpx.Response, deadline: float) -> Iterator[tuple[str, str]]:
    """(event type, data) of each server-sent event of ``response``; comments are skipped."""
    kind, data = "message", []
    for line in response.iter_lines():
        if time.monotonic() > deadline:
            raise TimeoutError("the event stream did not end in time")
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            if field == "event":
                kind = value.strip()
            elif field == "data":
                data.append(value.removeprefix(" "))


def await_result(http: httpx.Client, order_id: str, within: float = 60.0) -> httpx.Response:
    """Long-poll GET /orders/{id}/result until it answers something else than 202."""
    deadline = time.monotonic() + within
    while True:
        response = http.get(f"/orders/{order_id}/result", params={"timeout": 5})
        if response.status_code != 202 or time.monotonic() > deadline:
            return response


def in_database(order_id: str) -> tuple[int, int]:
    """(order rows, runs) of one order, read with plain SQL."""
    with app.connect() as conn:
        orders = conn.execute("select count(*) from shop_orders where order_id = %s", (order_id,))
        n_orders = orders.fetchone()
        runs = conn.execute(
            "select count(*) from pgdurable.runs where workflow_id = %s", (workflow_id(order_id),)
        )
        n_runs = runs.fetchone()
    return (n_orders[0] if n_orders else -1, n_runs[0] if n_runs else -1)


def widgets_in_stock() -> int:
    with app.connect() as conn:
        row = conn.execute("select in_stock from shop_stock where sku = 'widget'").fetchone()
    return row[0] if row else -1


def demo(http: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]  # fresh order ids: running the demo again starts anew
    first, second, third = (f"{tag}-{n}" for n in (1, 2, 3))

    # 1. An order that goes through: 201, then 202 while it waits, live events, then 200.
    r = http.post("/orders", json={"order_id": first, "sku": "widget", "quantity": 2})
    print(f"order 1: POST /orders 2 x widget -> {r.status_code} {sorted(r.json())}")
    orders, runs = in_database(first)
    print(f"order 1: committed together: order rows {orders}, runs {runs}")
    r = http.get(f"/orders/{first}/result", params={"timeout": 0.5})
    print(f"order 1: GET /orders/{{id}}/result?timeout=0.5 -> {r.status_code} (still running)")

    deadline = time.monotonic() + 60
    with http.stream("GET", f"/orders/{first}/events") as stream:
        events = sse_events(stream, deadline)
        seen: list[str] = []
        for _, data in events:
            seen.append(json.loads(data))
            if seen[-1] == "waiting for the warehouse":
                break
        print(f"order 1: GET /orders/{{id}}/events, live: {', '.join(seen)}")
        r = http.post(f"/orders/{first}/packed", json={"parcel": "P-1"})
        print(f"order 1: POST /orders/{{id}}/packed -> {r.status_code}")
        rest = [json.loads(data) if kind == "message" else f"({kind})" for kind, data in events]
        print(f"order 1: the same event stream goes on: {', '.join(rest)}")
    r = await_result(http, first)
    result = r.json()
    shown = ", ".join(f"{k}={result[k]}" for k in ("status", "cents", "parcel"))
    print(f"order 1: GET /orders/{{id}}/result -> {r.status_code} {shown}")
    r = http.get(f"/orders/{first}/events", headers={"Last-Event-ID": "1"})
    resumed = [json.loads(d) for kind, d in sse_events(r, deadline) if kind == "message"]
    print(f"order 1: reconnecting with Last-Event-ID: 1 -> {', '.join(resumed)}")

    # 2. A request that fails after it started the workflow: neither the order nor the run.
    r = http.post("/orders", json={"order_id": second, "sku": "gadget", "quantity": 1})
    print(f"order 2: POST /orders 1 x gadget -> {r.status_code} {r.json()['detail']}")
    orders, runs = in_database(second)
    print(f"order 2: rolled back together: order rows {orders}, runs {runs}")
    r = http.get(f"/orders/{second}/result")
    detail = r.json()["detail"].replace(second, "{id}")
    print(f"order 2: GET /orders/{{id}}/result -> {r.status_code} {detail}")

    # 3. A run that fails: the workflow's refusal is a 422 carrying its message.
    before = widgets_in_stock()
    r = http.post("/orders", json={"order_id": third, "sku": "widget", "quantity": 50})
    print(f"order 3: POST /orders 50 x widget -> {r.status_code}")
    r = await_result(http, third)
    print(f"order 3: GET /orders/{{id}}/result -> {r.status_code} {r.json()['detail']}")
    print(f"order 3: the workflow gave the 50 widgets back: {widgets_in_stock() == before}")


def _where() -> str:
    if ARGS.dsn:
        return "the database given with --dsn"
    if os.environ.get("PGDURABLE_DSN"):
        return "the database in $PGDURABLE_DSN"
    home = os.environ.get("PGDURABLE_HOME", "~/.local/share/pgdurable")
    return f"the embedded PostgreSQL in {home}/pgdata"


def main() -> None:
    print(f"database: {_where()}")
    with serving(api) as base_url, httpx.Client(base_url=base_url, timeout=30) as http:
        print("server: uvicorn on 127.0.0.1 (a free port), the worker started by its lifespan")
        demo(http)
    print("server: stopped; its lifespan stopped the worker and closed the pools")


if __name__ == "__main__":
    main()
