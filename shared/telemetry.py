"""Trace and measure the pipeline with OpenTelemetry (the ``[otel]`` extra); nothing runs when it is off.

Off (the default, ``OTEL_ENABLED=false``, ``OTEL_SDK_DISABLED=true``, or the extra not installed) every function
here is a no-op: :func:`span` returns one shared empty context manager, :func:`instruments` returns None, and
this module imports no OpenTelemetry module. On (``OTEL_ENABLED=true`` with ``pip install videogen-shared[otel]``), the
container's ``telemetry`` Resource (:func:`init_telemetry`) starts, for the process:

- traces: the kept instrumentors (redis, httpx, FastAPI through :func:`instrument_fastapi`; asyncpg with
  ``OTEL_DB_SPANS=asyncpg``; by default a stage's statements are counted on its span, see
  :func:`statement_span`) and the library's own spans (stage, admission, reservation, commit, storage,
  validation, paid calls with the GenAI semantic-convention attributes), exported over OTLP/HTTP when
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or a per-signal ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set. The SDK
  reads the other standard variables itself (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_EXPORTER_OTLP_HEADERS``...).
- ``job_id`` and ``stage`` on every span: a span processor copies them from the job context
  (:func:`job_context`, the same context variables that put them on log lines), so the instrumentors' spans
  carry them too; ``trace_id`` and ``span_id`` on every JSON log line written inside a span.
- the trace context travels with a queued stage: :func:`inject_trace_context` gives the W3C ``traceparent``
  to store with the stage, :func:`stage_span` continues that trace in the worker that runs it.
- metrics (:class:`Instruments`, recorded where they happen, and gauges read from PostgreSQL on each collection:
  queue depth and oldest age per stage, running and stale stages, active holds, spend today), offered on a
  Prometheus endpoint (``OTEL_EXPORTER_PROMETHEUS_PORT``) and over OTLP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import inspect
import logging
import os
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast
from uuid import UUID

from shared.errors import ConfigError, PipelineError
from shared.logging import _set_trace_hook, current_job_id, current_stage
from shared.logging import job_context as _log_context

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.metrics import Counter, Histogram, Meter, Observation, UpDownCounter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

    from shared.config import Settings
    from shared.database import Database

__all__ = [
    "JOB_ID",
    "STAGE",
    "Instruments",
    "PaidCallSpan",
    "Telemetry",
    "configure",
    "current_telemetry",
    "init_telemetry",
    "inject_trace_context",
    "instrument_fastapi",
    "instruments",
    "job_context",
    "otel_installed",
    "paid_call_span",
    "span",
    "stage_span",
    "statement_span",
    "traced",
]

_log = logging.getLogger("shared.telemetry")
P = ParamSpec("P")
R = TypeVar("R")

JOB_ID = "job_id"
STAGE = "stage"
_SCOPE = "videogen.shared"

# The one running configuration of this process (None: off). Read on every hot path, so a plain global.
_active: Telemetry | None = None
_lock = threading.Lock()
_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()


def otel_installed() -> bool:
    """Return whether the ``[otel]`` extra (the OpenTelemetry SDK) is installed."""
    return importlib.util.find_spec("opentelemetry.sdk") is not None


def current_telemetry() -> Telemetry | None:
    """Return the process's running telemetry, or None when it is off."""
    return _active


def instruments() -> Instruments | None:
    """Return the metric instruments to record on, or None when telemetry is off (record nothing then)."""
    active = _active
    return None if active is None else active.instruments


# --- spans -------------------------------------------------------------------------------------------------


def span(
    name: str, attributes: Mapping[str, str | int | float | bool] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """Return a context manager that runs its block in a span of the library (an empty one when off).

    An exception leaving the block is recorded on the span and marks it as an error.
    """
    active = _active
    if active is None:
        return _NULL
    return active.tracer.start_as_current_span(name, attributes=attributes)


def traced(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run each call of the decorated function (sync or async) in a span called ``name``.

    A coroutine function stays one (``inspect.iscoroutinefunction`` holds); when telemetry is off the wrapper
    only calls through.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def call_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                if _active is None:
                    return await function(*args, **kwargs)
                with span(name):
                    return await function(*args, **kwargs)

            return cast("Callable[P, R]", call_async)

        @functools.wraps(function)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if _active is None:
                return function(*args, **kwargs)
            with span(name):
                return function(*args, **kwargs)

        return call

    return decorate


@contextlib.contextmanager
def job_context(job_id: UUID | str | None, stage: str | None = None) -> Iterator[None]:
    """Put ``job_id`` and ``stage`` on every span started and every line logged inside the block.

    For code outside a stage (a gateway route, admission); :func:`stage_span` does it for a stage. The same
    context as :func:`shared.logging.job_context`, so either one tags both the logs and the spans.
    """
    with _log_context(job_id=job_id, stage=stage):
        yield


def inject_trace_context() -> dict[str, str] | None:
    """Return the W3C trace context (``traceparent``, ``tracestate``) of the current span, or None.

    The submitter of a stage stores it with the stage (``stage_runs.trace_context``); the worker that runs the
    stage passes it to :func:`stage_span`, which continues the same trace. None when telemetry is off or no
    span is current.
    """
    active = _active
    if active is None:
        return None
    carrier: dict[str, str] = {}
    active.propagator.inject(carrier)
    return carrier or None


class _StageSpan:
    """The span of one stage attempt, a child of the submitter's stored context; the job context for its block.

    Usable as ``with`` or ``async with``. Records the stage's duration and, on an exception, a failure by reason.
    """

    __slots__ = (
        "_attempt",
        "_context_token",
        "_item",
        "_job_id",
        "_log",
        "_recorded",
        "_stage",
        "_started",
        "_tally",
        "_tally_token",
        "_telemetry",
        "_trace_context",
    )

    def __init__(
        self, job_id: UUID, stage: str, item: str, attempt: int, trace_context: Mapping[str, str] | None
    ) -> None:
        self._job_id = job_id
        self._stage = stage
        self._item = item
        self._attempt = attempt
        self._trace_context = trace_context
        self._log: contextlib.AbstractContextManager[None] | None = None
        self._context_token: Any = None
        self._telemetry: Telemetry | None = None
        self._started = 0.0
        self._tally = _Tally()
        self._recorded: Any = None
        self._tally_token: Token[_Tally | None] | None = None

    def __enter__(self) -> None:
        self._log = _log_context(job_id=self._job_id, stage=self._stage)
        self._log.__enter__()
        active = self._telemetry = _active
        if active is None:
            return
        try:
            parent = active.propagator.extract(self._trace_context) if self._trace_context else None
            # A lean span (_LeanSpan): the SDK's own span object costs most of the stage span's overhead.
            self._recorded = active.lean.start(
                f"stage {self._stage}",
                parent,
                active.consumer_kind,
                {
                    JOB_ID: str(self._job_id),
                    STAGE: self._stage,
                    "stage.item": self._item,
                    "stage.attempt": self._attempt,
                },
            )
            self._context_token = active.attach(active.set_span_in_context(self._recorded.span))
            self._tally_token = _tally.set(self._tally)
            self._started = time.perf_counter()
        except BaseException:
            self._log.__exit__(None, None, None)
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            running, recorded = self._telemetry, self._recorded
            if running is not None and recorded is not None:
                try:
                    running.instruments.record_stage(self._stage, time.perf_counter() - self._started, error)
                    if self._tally_token is not None:
                        _tally.reset(self._tally_token)
                    if self._tally.statements:
                        recorded.attributes["db.client.statements"] = self._tally.statements
                        recorded.attributes["db.client.seconds"] = self._tally.seconds
                    if error is not None and not isinstance(error, asyncio.CancelledError):
                        recorded.fail(error, running.error_status)
                finally:
                    if self._context_token is not None:
                        running.detach(self._context_token)
                    running.lean.end(recorded)
        finally:
            if self._log is not None:
                self._log.__exit__(kind, error, traceback)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.__exit__(kind, error, traceback)


def stage_span(
    *, job_id: UUID, stage: str, item: str = "", attempt: int = 1, trace_context: Mapping[str, str] | None = None
) -> _StageSpan:
    """Return the context manager (``with`` or ``async with``) that runs one stage attempt in its span.

    The span continues the trace of ``trace_context`` (what :func:`inject_trace_context` gave the submitter),
    so one trace follows the job across processes and machines; inside it every span and log line carries
    ``job_id`` and ``stage``. When telemetry is off it sets the job context only.
    """
    return _StageSpan(job_id, stage, item, attempt, trace_context)


class _LeanSpan:
    """A span in the making: its context (current while its block runs), attributes, start and failure.

    Ended, it goes to the tracer provider's span processors as the SDK's ReadableSpan, the same record an SDK
    span gives them; only the SDK's mutable span object (a lock, attribute cleaning on every set, bounded lists
    for events and links) is skipped.
    """

    __slots__ = ("attributes", "context", "events", "kind", "name", "parent", "recording", "span", "start", "status")

    def __init__(
        self,
        name: str,
        kind: Any,
        attributes: dict[str, Any],
        *,
        context: Any,
        parent: Any,
        span: Any,
        recording: bool,
    ) -> None:
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self.context = context
        self.parent = parent
        self.span = span
        self.recording = recording
        self.start = time.time_ns()
        self.events: list[Any] = []
        self.status: Any = None

    def fail(self, error: BaseException, status: Any) -> None:
        """Record ``error`` as the SDK's ``record_exception`` does (an ``exception`` event), and mark the span."""
        from opentelemetry.sdk.trace import Event  # noqa: PLC0415 - the extra is installed when a span runs

        module = type(error).__module__
        qualname = type(error).__qualname__
        self.events.append(
            Event(
                "exception",
                {
                    "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
                    "exception.message": str(error),
                    "exception.stacktrace": "".join(traceback.format_exception(error)),
                    "exception.escaped": "False",
                },
            )
        )
        self.status = status


class _LeanSpans:
    """Start and end :class:`_LeanSpan` s with a tracer's sampler, ids, resource, scope and span processors."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry.sdk.trace import ReadableSpan  # noqa: PLC0415 - the extra is installed now
        from opentelemetry.trace import (  # noqa: PLC0415
            NonRecordingSpan,
            SpanContext,
            Status,
            StatusCode,
            TraceFlags,
            get_current_span,
        )

        self._sampler = tracer.sampler
        self._ids = tracer.id_generator
        self._resource = tracer.resource
        self._processor = tracer.span_processor
        self._scope = tracer._instrumentation_scope  # the SDK tracer's scope, for its spans
        self._info = tracer.instrumentation_info
        self._readable = ReadableSpan
        self._non_recording = NonRecordingSpan
        self._span_context = SpanContext
        self._flags = TraceFlags
        self._unset = Status(StatusCode.UNSET)
        self._current = get_current_span

    def start(self, name: str, parent: Any, kind: Any, attributes: dict[str, Any]) -> _LeanSpan:
        """Start a span under ``parent`` (a Context; None: the current one), sampled as the SDK would."""
        parent_span = self._current(parent).get_span_context()
        parent_context: Any = None
        if parent_span is None or not parent_span.is_valid:
            trace_id = self._ids.generate_trace_id()
            random_id = self._ids.is_trace_id_random()
        else:
            parent_context = parent_span
            trace_id = parent_span.trace_id
            random_id = parent_span.trace_flags.random_trace_id
        result = self._sampler.should_sample(parent, trace_id, name, kind, attributes, ())
        flags = self._flags.SAMPLED if result.decision.is_sampled() else self._flags.DEFAULT
        if random_id:
            flags |= self._flags.RANDOM_TRACE_ID
        context = self._span_context(
            trace_id,
            self._ids.generate_span_id(),
            is_remote=False,
            trace_flags=self._flags(flags),
            trace_state=result.trace_state,
        )
        return _LeanSpan(
            name,
            kind,
            dict(result.attributes),
            context=context,
            parent=parent_context,
            span=self._non_recording(context),
            recording=result.decision.is_recording(),
        )

    def end(self, span: _LeanSpan) -> None:
        """End ``span``: hand it to the span processors when it was sampled for recording."""
        if not span.recording:
            return
        self._processor.on_end(
            self._readable(
                name=span.name,
                context=span.context,
                parent=span.parent,
                resource=self._resource,
                attributes=span.attributes,
                events=tuple(span.events),
                kind=span.kind,
                instrumentation_info=self._info,
                status=span.status or self._unset,
                start_time=span.start,
                end_time=time.time_ns(),
                instrumentation_scope=self._scope,
            )
        )


class _StatementSpan:
    """A lean client span for one SQL statement: started and ended, never made current (nothing nests in it)."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if error is not None:
            self._span.set_attribute("error.type", type(error).__qualname__)
            active = _active
            if active is not None:
                self._span.set_status(active.error_status)
        self._span.end()


class _Tally:
    """The statements of one stage span, summed in Python and put on the span once, when it ends."""

    __slots__ = ("seconds", "statements")

    def __init__(self) -> None:
        self.statements = 0
        self.seconds = 0.0


_tally: ContextVar[_Tally | None] = ContextVar("videogen_db_tally", default=None)


class _Counted:
    """Count one statement and its time in the enclosing stage's tally."""

    __slots__ = ("_started", "_tally")

    def __init__(self, tally: _Tally) -> None:
        self._tally = tally
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._tally.statements += 1
        self._tally.seconds += time.perf_counter() - self._started


def statement_span(method: str, query: str) -> contextlib.AbstractContextManager[None]:
    """Return what traces one statement the database client sends (an empty context manager when off).

    ``OTEL_DB_SPANS`` chooses: ``summary`` (the default) adds no span, it counts the statement and its time for
    the enclosing stage span (``db.client.statements``, ``db.client.seconds``, set once when the stage ends);
    ``statement`` starts a lean span (named by the statement's first word, two attributes, never made current:
    lighter than asyncpg's instrumentor, which parses the query and reads the connection's parameters on every
    call); ``asyncpg`` leaves it to that instrumentor.
    """
    active = _active
    if active is None:
        return _NULL
    mode = active.db_spans
    if mode == "summary":
        tally = _tally.get()
        return _NULL if tally is None else _Counted(tally)
    if mode != "statement":
        return _NULL
    operation = query.lstrip()[:16].split(None, 1)[0].upper() if query else method
    return _StatementSpan(
        active.tracer.start_span(
            operation,
            kind=active.client_kind,
            attributes={"db.system.name": "postgresql", "db.operation.name": operation},
        )
    )


class PaidCallSpan:
    """The span of one paid call, named and tagged as the GenAI semantic conventions say."""

    __slots__ = ("_cm", "_span")

    def __init__(self, cm: contextlib.AbstractContextManager[Any] | None) -> None:
        self._cm = cm
        self._span: Any = None

    def __enter__(self) -> PaidCallSpan:
        if self._cm is not None:
            self._span = self._cm.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._cm is not None:
            self._cm.__exit__(kind, error, traceback)

    def usage(self, units: Mapping[str, Decimal], cost: Decimal) -> None:
        """Put the provider's reported usage (and, with ``OTEL_GENAI_COST``, the cost) on the span."""
        active = _active
        if self._span is None or active is None:
            return
        for unit, attribute in _GENAI_USAGE.items():
            value = units.get(unit)
            if value is not None:
                self._span.set_attribute(attribute, int(value))
        if active.genai_cost:
            self._span.set_attribute("gen_ai.usage.cost", float(cost))


# genai-prices' usage keys and the GenAI semantic-convention attributes they fill.
_GENAI_USAGE = {
    "input_tokens": "gen_ai.usage.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "cache_read_tokens": "gen_ai.usage.cache_read.input_tokens",
    "cache_write_tokens": "gen_ai.usage.cache_creation.input_tokens",
}


def paid_call_span(*, provider: str, model: str, operation: str = "chat") -> PaidCallSpan:
    """Return the span of a paid call: ``{operation} {model}``, with ``gen_ai.provider.name``, ``gen_ai.system``
    and ``gen_ai.request.model``; :meth:`PaidCallSpan.usage` adds the token counts once the provider reports."""
    active = _active
    if active is None:
        return PaidCallSpan(None)
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": model,
    }
    return PaidCallSpan(
        active.tracer.start_as_current_span(f"{operation} {model}", kind=active.client_kind, attributes=attributes)
    )


# --- metrics -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruments:
    """The metric instruments the library records on while telemetry runs."""

    cost: Counter
    budget_refusals: Counter
    rate_limit_wait: Histogram
    concurrency_in_use: UpDownCounter
    retries: Counter
    cache_requests: Counter
    pool_acquire_wait: Histogram
    stage_duration: Histogram
    stage_failures: Counter

    @classmethod
    def create(cls, meter: Meter) -> Instruments:
        """Create every instrument on ``meter``."""
        return cls(
            cost=meter.create_counter("videogen.cost", unit="USD", description="Money spent, by stage, API and model"),
            budget_refusals=meter.create_counter(
                "videogen.budget.refusals", unit="{refusal}", description="Reservations refused by a job's budget"
            ),
            rate_limit_wait=meter.create_histogram(
                "videogen.paid.rate_limit.wait", unit="s", description="Time a paid call waited for its rate slot"
            ),
            concurrency_in_use=meter.create_up_down_counter(
                "videogen.paid.concurrency.in_use", unit="{call}", description="Paid calls holding a concurrency slot"
            ),
            retries=meter.create_counter("videogen.retries", unit="{retry}", description="Retries, by function"),
            cache_requests=meter.create_counter(
                "videogen.cache.requests", unit="{request}", description="Cache reads, by result (hit or miss)"
            ),
            pool_acquire_wait=meter.create_histogram(
                "videogen.db.pool.acquire.wait", unit="s", description="Time a statement waited for a pooled connection"
            ),
            stage_duration=meter.create_histogram(
                "videogen.stage.duration", unit="s", description="Stage attempts' duration, by stage and outcome"
            ),
            stage_failures=meter.create_counter(
                "videogen.stage.failures", unit="{failure}", description="Failed stage attempts, by stage and reason"
            ),
        )

    def record_cost(self, stage: str, api_name: str, amount: Decimal) -> None:
        """Count money spent; ``api_name`` ``provider/model`` (a paid call's) is split into ``api`` and ``model``."""
        api, _, model = api_name.partition("/")
        self.cost.add(float(amount), {"stage": stage, "api": api, "model": model})

    def record_stage(self, stage: str, seconds: float, error: BaseException | None) -> None:
        """Record one stage attempt's duration and, when it raised, its failure with a reason."""
        if error is None:
            outcome = "completed"
        elif isinstance(error, asyncio.CancelledError):
            outcome = "cancelled"
        else:
            outcome = "failed"
            reason = getattr(error, "code", None) if isinstance(error, PipelineError) else None
            self.stage_failures.add(1, {"stage": stage, "reason": str(reason or type(error).__name__)})
        self.stage_duration.record(seconds, {"stage": stage, "outcome": outcome})


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What the database said at one collection: the rows of each gauge, as (value, attributes)."""

    queue_depth: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    queue_oldest_age: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    stages_running: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    stale_heartbeats: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    pgqueuer_jobs: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    holds_active: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    holds_amount: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    spend_today: list[tuple[float, dict[str, str]]] = field(default_factory=list)


# Each query reads an index (stage_runs_live_idx, pgqueuer's queued indexes, job_cost_reservations_active_idx,
# job_costs_created_at_idx) and returns one row per stage, status or API, whatever the tables hold.
_STAGE_QUERY = """
select stage, status, count(*) as runs,
       extract(epoch from clock_timestamp() - min(queued_at)) as oldest,
       count(*) filter (where status = 'running' and heartbeat_at < clock_timestamp() - $1::interval) as stale
  from public.stage_runs
 where status in ('queued', 'running')
 group by stage, status
"""
_PGQUEUER_QUERY = "select entrypoint, status::text as status, count(*) as jobs from pgqueuer.pgqueuer group by 1, 2"
_HOLDS_QUERY = """
select count(*) as holds, coalesce(sum(estimated_cost), 0) as amount
  from public.job_cost_reservations
 where status = 'active' and expires_at > clock_timestamp()
"""
_SPEND_QUERY = """
select api_name, sum(cost) as spent
  from public.job_costs
 where created_at >= date_trunc('day', clock_timestamp() at time zone 'utc') at time zone 'utc'
 group by api_name
"""


class _DatabaseGauges:
    """Read the gauges from PostgreSQL once per collection, on the loop that owns the pool, with a time limit.

    Collection runs in the exporter's thread (the Prometheus server, the OTLP reader); the queries run on the
    pool's loop (``run_coroutine_threadsafe``) and the snapshot is kept for ``max_age`` seconds, so the eight
    gauges of one scrape cost one round of four queries.
    """

    def __init__(
        self, db: Database, loop: asyncio.AbstractEventLoop, *, timeout: float, stale_after: float, max_age: float = 1.0
    ) -> None:
        self._db = db
        self._loop = loop
        self._timeout = timeout
        self._stale_after = stale_after
        self._max_age = max_age
        self._lock = threading.Lock()
        self._snapshot = _Snapshot()
        self._read_at = -float("inf")
        self._warned: set[str] = set()

    def snapshot(self) -> _Snapshot:
        """Return a snapshot no older than ``max_age`` (the last one if the database cannot answer in time)."""
        with self._lock:
            if time.monotonic() - self._read_at < self._max_age:
                return self._snapshot
            running = None
            with contextlib.suppress(RuntimeError):
                running = asyncio.get_running_loop()
            if running is self._loop or self._loop.is_closed():
                return self._snapshot  # collected on the pool's own loop: waiting here would block it
            future = asyncio.run_coroutine_threadsafe(self.read(), self._loop)
            try:
                self._snapshot = future.result(self._timeout)
            except Exception:  # noqa: BLE001 - a documented boundary: a scrape never fails for the database
                future.cancel()
                _log.warning("the metrics could not read the database; serving the last values", exc_info=True)
            self._read_at = time.monotonic()
            return self._snapshot

    async def read(self) -> _Snapshot:
        """Run the four bounded queries; a table that is missing (not migrated yet) leaves its gauges empty."""
        snapshot = _Snapshot()
        from datetime import timedelta  # noqa: PLC0415 - only on collection

        rows = await self._rows("stage_runs", _STAGE_QUERY, timedelta(seconds=self._stale_after))
        for row in rows:
            labels = {"stage": row["stage"]}
            if row["status"] == "queued":
                snapshot.queue_depth.append((float(row["runs"]), labels))
                snapshot.queue_oldest_age.append((float(row["oldest"]), labels))
            else:
                snapshot.stages_running.append((float(row["runs"]), labels))
                snapshot.stale_heartbeats.append((float(row["stale"]), labels))
        for row in await self._rows("pgqueuer", _PGQUEUER_QUERY):
            snapshot.pgqueuer_jobs.append(
                (float(row["jobs"]), {"entrypoint": row["entrypoint"], "status": row["status"]})
            )
        for row in await self._rows("job_cost_reservations", _HOLDS_QUERY):
            snapshot.holds_active.append((float(row["holds"]), {}))
            snapshot.holds_amount.append((float(row["amount"]), {}))
        for row in await self._rows("job_costs", _SPEND_QUERY):
            snapshot.spend_today.append((float(row["spent"]), {"api": row["api_name"]}))
        return snapshot

    async def _rows(self, table: str, query: str, *args: object) -> list[Any]:
        try:
            return list(await self._db.fetch(query, *args, timeout=self._timeout))
        except PipelineError as error:
            if getattr(error, "sqlstate", None) not in {"42P01", "3F000"}:  # undefined table / schema
                raise
            if table not in self._warned:
                self._warned.add(table)
                _log.warning("metrics: %s does not exist yet (run `python -m shared db migrate`)", table)
            return []

    def register(self, meter: Meter) -> None:
        """Create the observable gauges on ``meter``, each reading its rows of the current snapshot."""
        gauges = (
            ("videogen.queue.depth", "{stage}", "Stages queued, by stage", "queue_depth"),
            ("videogen.queue.oldest_age", "s", "Age of the oldest queued stage, by stage", "queue_oldest_age"),
            ("videogen.stages.running", "{stage}", "Stages running, by stage", "stages_running"),
            (
                "videogen.stages.stale_heartbeats",
                "{stage}",
                "Running stages whose heartbeat is late",
                "stale_heartbeats",
            ),
            ("videogen.pgqueuer.jobs", "{job}", "pgqueuer's queue, by entrypoint and status", "pgqueuer_jobs"),
            ("videogen.holds.active", "{reservation}", "Budget reservations holding money", "holds_active"),
            ("videogen.holds.amount", "USD", "Money held by active budget reservations", "holds_amount"),
            ("videogen.spend.today", "USD", "Money spent since midnight UTC, by API", "spend_today"),
        )
        for name, unit, description, attribute in gauges:
            meter.create_observable_gauge(name, [self._callback(attribute)], unit=unit, description=description)

    def _callback(self, attribute: str) -> Callable[[Any], list[Observation]]:
        from opentelemetry.metrics import Observation  # noqa: PLC0415 - the extra is installed when this runs

        def observe(_options: Any) -> list[Observation]:
            rows: list[tuple[float, dict[str, str]]] = getattr(self.snapshot(), attribute)
            return [Observation(value, labels) for value, labels in rows]

        return observe


# --- the running configuration ---------------------------------------------------------------------------------


def _job_attributes() -> SpanProcessor:
    """Return the processor that copies ``job_id`` and ``stage`` from the job context onto every span at its start.

    Every span (the instrumentors' too) gets them, whoever started it, from the context variables that
    :func:`job_context` and :func:`stage_span` set.
    """
    from opentelemetry.sdk.trace import SpanProcessor  # noqa: PLC0415 - the extra loads only when on

    class JobAttributes(SpanProcessor):
        def on_start(self, span: Span, parent_context: Any = None) -> None:
            if span.attributes and JOB_ID in span.attributes:
                return  # set at creation (stage_span)
            job_id = current_job_id()
            if job_id is not None:
                span.set_attribute(JOB_ID, job_id)
            stage = current_stage()
            if stage is not None:
                span.set_attribute(STAGE, stage)

    return JobAttributes()


class Telemetry:
    """The OpenTelemetry providers, instruments and exporters of one process, from start to shutdown.

    Build it with :func:`configure` (the container does, through :func:`init_telemetry`); :meth:`shutdown`
    exports what is buffered, stops the instrumentors and the Prometheus endpoint, and turns telemetry off.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        genai_cost: bool,
        db_spans: str,
        prometheus: tuple[Any, threading.Thread] | None,
        instrumentors: Sequence[Any],
    ) -> None:
        from opentelemetry.trace import SpanKind, get_current_span  # noqa: PLC0415 - the extra is installed now
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
            TraceContextTextMapPropagator,
        )

        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer: Tracer = tracer_provider.get_tracer(_SCOPE)
        self.meter: Meter = meter_provider.get_meter(_SCOPE)
        self.instruments = Instruments.create(self.meter)
        self.lean = _LeanSpans(self.tracer)
        self.propagator = TraceContextTextMapPropagator()
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

        self.error_status = Status(StatusCode.ERROR)
        self.consumer_kind = SpanKind.CONSUMER
        self.client_kind = SpanKind.CLIENT
        self.genai_cost = genai_cost
        self.db_spans = db_spans
        self.current_span = get_current_span
        from opentelemetry.context import attach, detach  # noqa: PLC0415
        from opentelemetry.trace import set_span_in_context  # noqa: PLC0415

        self.attach = attach
        self.detach = detach
        self.set_span_in_context = set_span_in_context
        self._prometheus = prometheus
        self._instrumentors = list(instrumentors)
        self._gauges: _DatabaseGauges | None = None

    @property
    def prometheus_port(self) -> int | None:
        """Return the port the Prometheus endpoint listens on, or None when there is none."""
        return None if self._prometheus is None else int(self._prometheus[0].server_port)

    def watch_database(self, db: Database, settings: Settings) -> None:
        """Serve the database gauges (queues, stale heartbeats, holds, spend) from ``db``, read on its loop."""
        if self._gauges is not None:
            return
        self._gauges = _DatabaseGauges(
            db,
            asyncio.get_running_loop(),
            timeout=settings.otel_metrics_query_timeout_seconds,
            stale_after=settings.stage_heartbeat_interval_seconds * 3,
        )
        self._gauges.register(self.meter)

    def shutdown(self) -> None:
        """Export what is buffered, stop the instrumentors and the endpoint, and turn telemetry off (idempotent)."""
        global _active  # noqa: PLW0603 - the process's one configuration
        with _lock:
            if _active is self:
                _active = None
                _set_trace_hook(None)
        for instrumentor in self._instrumentors:
            with contextlib.suppress(Exception):
                instrumentor.uninstrument()
        self._instrumentors.clear()
        if self._prometheus is not None:
            server, thread = self._prometheus
            server.shutdown()
            server.server_close()
            thread.join(5)
            self._prometheus = None
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _enabled(settings: Settings) -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return settings.otel_enabled


def configure(
    settings: Settings,
    *,
    span_exporters: Sequence[SpanExporter] = (),
    metric_readers: Sequence[MetricReader] = (),
    simple: bool = False,
) -> Telemetry | None:
    """Start telemetry for this process as ``settings`` say, or return None when it is off.

    ``span_exporters`` and ``metric_readers`` are added to the OTLP ones (tests pass the SDK's in-memory
    exporter and reader); ``simple`` exports each span when it ends instead of in batches.

    Raises:
        ConfigError: OTEL_ENABLED is on but the ``[otel]`` extra is not installed.
        PipelineError: telemetry already runs in this process.
    """
    global _active  # noqa: PLW0603 - the process's one configuration
    if not _enabled(settings):
        return None
    if not otel_installed():
        raise ConfigError(
            problems=("OTEL_ENABLED: the [otel] extra is not installed; pip install 'videogen-shared[otel]'",)
        )
    with _lock:
        if _active is not None:
            raise PipelineError(
                "Telemetry already runs in this process; shut it down before configuring it again",
                code="telemetry_running",
            )
        telemetry = _build(settings, span_exporters, metric_readers, simple=simple)
        _active = telemetry
        _set_trace_hook(_trace_ids_hook())
    return telemetry


def _build(
    settings: Settings, span_exporters: Sequence[SpanExporter], metric_readers: Sequence[MetricReader], *, simple: bool
) -> Telemetry:
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415 - the extra loads only when on
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: PLC0415

    attributes = {SERVICE_NAME: settings.otel_service_name} if settings.otel_service_name else {}
    resource = Resource.create(attributes)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(_job_attributes())
    exporters = list(span_exporters)
    endpoint = settings.otel_exporter_otlp_endpoint
    if endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        exporters.append(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces" if endpoint else None))
    for exporter in exporters:
        processor = SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter)
        tracer_provider.add_span_processor(processor)

    readers = list(metric_readers)
    if endpoint or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415

        metric_exporter = OTLPMetricExporter(endpoint=f"{endpoint.rstrip('/')}/v1/metrics" if endpoint else None)
        readers.append(PeriodicExportingMetricReader(metric_exporter))
    prometheus = None
    if settings.otel_exporter_prometheus_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
        from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

        registry = CollectorRegistry(auto_describe=True)
        host, port = settings.otel_exporter_prometheus_host, settings.otel_exporter_prometheus_port
        try:
            prometheus = start_http_server(port, host, registry=registry)
        except OSError as error:
            # Several processes on one host with one port: the first serves; the others must still start.
            _log.error(
                "metrics: cannot serve Prometheus on %s:%s (%s); this process serves none: give each process its own "
                "OTEL_EXPORTER_PROMETHEUS_PORT, or read its metrics over OTLP",
                host,
                port,
                error.strerror or error,
            )
        else:
            readers.append(PrometheusMetricReader(registry=registry))
    # Exemplars (a sampled trace id kept beside a measurement) cost a trace-context lookup on every measurement,
    # a third of a histogram record, and the Prometheus endpoint never serves them: off unless asked for with
    # OTEL_METRICS_EXEMPLAR_FILTER.
    exemplar_filter = None
    if not os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER"):
        from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter  # noqa: PLC0415

        exemplar_filter = AlwaysOffExemplarFilter()
    meter_provider = MeterProvider(metric_readers=readers, resource=resource, exemplar_filter=exemplar_filter)
    instrumentors = _instrument(settings, tracer_provider, meter_provider)
    return Telemetry(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        genai_cost=settings.otel_genai_cost,
        db_spans=settings.otel_db_spans,
        prometheus=prometheus,
        instrumentors=instrumentors,
    )


def _instrument(settings: Settings, tracer_provider: TracerProvider, meter_provider: MeterProvider) -> list[Any]:
    """Turn on the kept instrumentors (redis, httpx, and asyncpg when OTEL_DB_SPANS=asyncpg)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415
    from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415

    chosen: list[Any] = [RedisInstrumentor(), HTTPXClientInstrumentor()]
    if settings.otel_db_spans == "asyncpg":
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor  # noqa: PLC0415

        chosen.append(AsyncPGInstrumentor())  # type: ignore[no-untyped-call]  # its __init__ is untyped
    started = []
    for instrumentor in chosen:
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
            started.append(instrumentor)
    return started


def instrument_fastapi(app: FastAPI) -> None:
    """Trace the app's requests (FastAPI's instrumentor); call it where the app is built, before it serves.

    Its spans belong to whichever telemetry runs when a request arrives; when none runs they are not recorded.
    A no-op when the extra is not installed.
    """
    if not otel_installed():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: PLC0415

    proxy: Any = _ProxyTracerProvider()  # duck-typed: get_tracer is all the instrumentor calls
    FastAPIInstrumentor.instrument_app(app, tracer_provider=proxy)


class _ProxyTracerProvider:
    """A tracer provider that hands out the running telemetry's tracer, or a no-op one when off.

    The FastAPI instrumentor takes its provider when the app is built, which is before the container (and so
    the telemetry) starts in the app's lifespan.
    """

    def get_tracer(self, name: str, *args: Any, **kwargs: Any) -> Tracer:
        return _ProxyTracer(name, args, kwargs)  # type: ignore[return-value]  # duck-typed Tracer


class _ProxyTracer:
    __slots__ = ("_args", "_kwargs", "_name")

    def __init__(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._name = name
        self._args = args
        self._kwargs = kwargs

    def _tracer(self) -> Tracer:
        from opentelemetry.trace import NoOpTracer  # noqa: PLC0415

        active = _active
        if active is None:
            return NoOpTracer()
        return active.tracer_provider.get_tracer(self._name, *self._args, **self._kwargs)

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracer().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracer().start_as_current_span(*args, **kwargs)


def _trace_ids_hook() -> Callable[[logging.LogRecord], None]:
    """Return shared.logging's hook: the current span's ``trace_id`` and ``span_id`` (hex) on each record."""
    from opentelemetry.trace import get_current_span  # noqa: PLC0415 - the extra loads only when on

    def add_trace_ids(record: logging.LogRecord) -> None:
        context = get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")

    return add_trace_ids


async def init_telemetry(settings: Settings, db: Database | None = None) -> AsyncIterator[Telemetry | None]:
    """Start telemetry for the life of a container (its ``telemetry`` Resource) when OTEL_ENABLED; stop it after.

    With ``db``, the database gauges read from it (``OTEL_METRICS_DATABASE``).
    """
    telemetry = configure(settings)
    try:
        if telemetry is not None and db is not None and settings.otel_metrics_database:
            telemetry.watch_database(db, settings)
        yield telemetry
    finally:
        if telemetry is not None:
            telemetry.shutdown()
