"""OpenTelemetry spans: one per run attempt, one per step, parented across workers and sleeps.

Only ``opentelemetry-api`` is used, and only once the application has imported it: pgdurable
never imports OpenTelemetry itself unless it is already loaded, so without it (or without a
tracer provider) tracing costs a dictionary lookup per start and nothing per step. A run started
inside a span stores that span's W3C headers (``runs.trace_context``); every attempt of the run
then starts its span as a child of them, so one trace follows the run across workers, crashes
and sleeps. A child workflow is started inside its parent's attempt span, so it joins the trace.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import TYPE_CHECKING, Any

from ._telemetry import Observer, install, uninstall

if TYPE_CHECKING:
    from ._claims import Claim
    from ._context import RunContext

_propagator: Any = None
_installed: TracingObserver | None = None
_lock = threading.Lock()


def _trace_module() -> Any:
    """opentelemetry.trace if the application loaded it, else None (never imported here)."""
    return sys.modules.get("opentelemetry.trace")


def _w3c() -> Any:
    global _propagator
    if _propagator is None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _propagator = TraceContextTextMapPropagator()
    return _propagator


def current_headers() -> dict[str, str] | None:
    """The W3C headers (traceparent, tracestate) of the active span, for the run being started;
    None when no span is active."""
    trace = _trace_module()
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _w3c().inject(carrier)
    return carrier or None


def with_trace(options: dict[str, Any]) -> dict[str, Any]:
    """Start options (StartOptions.to_json) plus ``trace_context`` when a span is active, so the
    run's attempts join the starter's trace."""
    headers = current_headers()
    if headers is not None:
        options["trace_context"] = headers
    return options


def configured() -> bool:
    """True when the application set a tracer provider (the SDK's, or any real one)."""
    trace = _trace_module()
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def ensure_installed() -> None:
    """Called when a worker starts and by direct workflow calls: trace this process's runs
    from now on if a tracer provider is set. The check is made once per call, never per step."""
    global _installed
    if _installed is not None or not configured():
        return
    with _lock:
        if _installed is None:
            _installed = TracingObserver()
            install(_installed)


def stop_tracing() -> None:
    """Stop tracing runs (tests that swap tracer providers call it)."""
    global _installed
    with _lock:
        if _installed is not None:
            uninstall(_installed)
            _installed = None


def _parent_context(text: str | None) -> Any:
    """The context stored with the run (None: none, or unusable: stored data is only data)."""
    if not text:
        return None
    try:
        headers = json.loads(text)
    except ValueError:
        return None
    if not isinstance(headers, dict):
        return None
    carrier = {k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)}
    return _w3c().extract(carrier)


class TracingObserver(Observer):
    """Spans ``pgdurable.run <workflow>`` per attempt and ``pgdurable.step <name>`` per step,
    each the current span while its code runs (so spans the user's code opens nest under it)."""

    def __init__(self) -> None:
        from opentelemetry import context, trace

        self._context = context
        self._trace = trace
        self._tracer = trace.get_tracer("pgdurable")

    def _open(self, name: str, parent: Any, kind: Any, attributes: dict[str, Any]) -> Any:
        span = self._tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        return span, self._context.attach(self._trace.set_span_in_context(span))

    def _close(self, opened: Any, outcome: str, error: BaseException | None, failed: bool) -> None:
        span, token = opened
        span.set_attribute("pgdurable.outcome", outcome)
        if error is not None and failed:
            span.record_exception(error)
            status = self._trace.Status(self._trace.StatusCode.ERROR, _describe(error))
            span.set_status(status)
        self._context.detach(token)
        span.end()

    def attempt_started(self, claim: Claim) -> Any:
        attributes = {
            "pgdurable.run_id": str(claim.run_id),
            "pgdurable.workflow_id": claim.workflow_id,
            "pgdurable.workflow": claim.workflow_name,
            "pgdurable.attempt": claim.attempt,
            "pgdurable.queue": claim.queue,
        }
        parent = _parent_context(claim.trace_context_text)
        kind = self._trace.SpanKind.CONSUMER
        return self._open(f"pgdurable.run {claim.workflow_name}", parent, kind, attributes)

    def attempt_ended(self, claim: Claim, token: Any, outcome: str, value: Any) -> None:
        error = value if isinstance(value, BaseException) else None
        self._close(token, outcome, error, outcome in ("failed", "error", "lost"))

    def step_started(self, ctx: RunContext, kind: str, name: str, key: str) -> Any:
        attributes = {
            "pgdurable.run_id": str(ctx.run_id),
            "pgdurable.workflow_id": ctx.workflow_id,
            "pgdurable.workflow": ctx.workflow_name,
            "pgdurable.attempt": ctx.attempt,
            "pgdurable.step": name,
            "pgdurable.step_key": key,
            "pgdurable.step_kind": kind,
        }
        internal = self._trace.SpanKind.INTERNAL
        return self._open(f"pgdurable.step {name}", None, internal, attributes)

    def step_ended(
        self,
        ctx: RunContext,
        kind: str,
        name: str,
        key: str,
        token: Any,
        outcome: str,
        error: BaseException | None,
        seconds: float,
    ) -> None:
        self._close(token, outcome, error, outcome == "failed")

    def step_retried(
        self, ctx: RunContext, name: str, key: str, attempts: int, error: Exception, delay: float
    ) -> None:
        # called inside the step's plan: its span is the current one
        span = self._trace.get_current_span()
        span.record_exception(
            error, attributes={"pgdurable.step_attempt": attempts, "pgdurable.retry_in": delay}
        )


def _describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"[:500]
    except Exception:  # a user's __str__ may raise
        return type(error).__name__
