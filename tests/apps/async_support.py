"""Helpers of the async tests: an event loop per test body, and waiting without blocking it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pgdurable

T = TypeVar("T")


def run_async(app: pgdurable.App, body: Callable[[], Awaitable[T]]) -> T:
    """``body()`` on a fresh event loop, the App's async side closed before the loop ends (as a
    FastAPI lifespan's shutdown would)."""

    async def main() -> T:
        try:
            return await body()
        finally:
            await app.close_async()

    return asyncio.run(main())


async def until(what: str, probe: Callable[[], Any], timeout: float = 15.0) -> Any:
    """``wait_until`` for async tests: poll ``probe`` without blocking the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what} (last: {value!r})"
            )
        await asyncio.sleep(0.02)
