"""DatabaseClient: typed queries over an asyncpg pool, real transactions, and errors a caller can act on.

The pool belongs to a container Resource (:func:`init_database`): opened by ``init_resources()`` with three
attempts and exponential backoff, closed by ``shutdown_resources()``. Every driver error leaves as a
:class:`~shared.errors.DatabaseError`, the asyncpg exception kept as ``__cause__``; a lost connection, a
server that is starting or shutting down, a serialization failure or a deadlock is a
:class:`~shared.errors.DatabaseUnavailableError` (a ``RetryableError``).

Outside a transaction a statement whose connection was lost is sent again (three attempts in all), so the
statements this package runs are idempotent by construction: each write carries an identity the client made
before the first send (a job id, a reservation id, an idempotency key) or only moves state forward. A statement
that cannot be made so runs inside ``async with db.no_resend():``: after a lost connection it is not sent
again, and the caller gets a retryable error saying that its outcome is unknown. Inside
``async with db.transaction():`` nothing is re-sent: the error reaches the caller, who re-runs the whole
transaction. Behind a transaction pooler (Supavisor on port 6543, pgbouncer) set the statement cache to 0.

One round trip per statement, directly and through a pooler (issue 24):

- A connection this client gave back after its own statements or transaction is not reset (asyncpg's default
  reset, ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``, is a round trip of its own per
  statement). Nothing here leaves session state behind: use ``SET LOCAL`` / ``set_config(..., true)`` and
  transaction advisory locks inside ``db.transaction()``. A connection taken with ``db.pool.acquire()`` (for
  LISTEN, COPY, session settings) still gets the full reset when it goes back.
- With the statement cache off (a transaction pooler), asyncpg prepares each statement unnamed and describes it
  (one round trip), then parses it again with its Bind and Execute (a second). The description is kept per
  connection here, so from the second run on a statement is one Parse/Bind/Execute/Sync: one round trip, and
  still nothing named on the server, so any pooled server connection can run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from shared._container_only import container_only
from shared.config import Settings
from shared.errors import (
    DatabaseError,
    DatabaseTimeoutError,
    DatabaseUnavailableError,
    PipelineError,
    TransactionTaskError,
)
from shared.health import HealthStatus
from shared.retry import retry_with_backoff
from shared.telemetry import instruments, statement_span

__all__ = ["Database", "DatabaseClient", "Record", "init_database", "translate_error"]

Record = asyncpg.Record
_log = logging.getLogger("shared.database")

# SQLSTATE classes and codes after which the same statement may succeed: connection exceptions (08),
# the server going away or not ready (57P01-57P03), too many connections, serialization failure, deadlock.
_RETRYABLE_STATES = frozenset({"40001", "40P01", "53300", "57P01", "57P02", "57P03", "55P03"})
_RETRYABLE_CLASSES = frozenset({"08"})
_TIMEOUT_STATE = "57014"  # query_canceled: statement_timeout or our own timeout
_UNSET: Any = object()  # no result yet (None is a result: fetchrow found no row)


class Database(Protocol):
    """What the repositories need from a database client (DatabaseClient is the one implementation)."""

    async def fetch(self, query: str, *args: object, timeout: float | None = None) -> list[Record]: ...
    async def fetchrow(self, query: str, *args: object, timeout: float | None = None) -> Record | None: ...
    async def fetchval(self, query: str, *args: object, timeout: float | None = None) -> Any: ...
    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str: ...
    def transaction(self) -> contextlib.AbstractAsyncContextManager[None]: ...


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(
        exc,
        asyncpg.ConnectionDoesNotExistError
        | asyncpg.CannotConnectNowError
        | asyncpg.PostgresConnectionError
        | asyncpg.InternalClientError
        | OSError,
    ) or (
        # "released back to the pool": a transaction's connection that the server closed (asyncpg detaches the
        # proxy of a connection it saw close; this client never uses a proxy it released itself).
        isinstance(exc, asyncpg.InterfaceError) and ("closed" in str(exc) or "released back to the pool" in str(exc))
    )


def translate_error(exc: BaseException, *, action: str = "the query") -> PipelineError:
    """Return the domain error for a driver exception (the caller raises it ``from exc``)."""
    if isinstance(exc, PipelineError):
        return exc
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, TimeoutError) or sqlstate == _TIMEOUT_STATE:
        return DatabaseTimeoutError(
            f"{action} timed out; the database is slow or a lock is held: retry later or raise the timeout",
            sqlstate=sqlstate,
        )
    if sqlstate in _RETRYABLE_STATES or (sqlstate or "")[:2] in _RETRYABLE_CLASSES or _connection_lost(exc):
        return DatabaseUnavailableError(
            f"{action} failed: {type(exc).__name__}: {_first_line(exc)}; the database is unreachable or asked "
            "for a retry: retry, and check `python -m shared doctor` if it persists",
            sqlstate=sqlstate,
        )
    if isinstance(exc, asyncpg.PostgresError):
        constraint = getattr(exc, "constraint_name", None)
        where = f" (constraint {constraint})" if constraint else ""
        return DatabaseError(
            f"{action} was refused by PostgreSQL{where}: {_first_line(exc)}; fix the statement or its values",
            sqlstate=sqlstate,
        )
    return DatabaseError(
        f"{action} failed: {type(exc).__name__}: {_first_line(exc)}; this is a bug in the caller or the driver",
        sqlstate=sqlstate,
    )


def _action(method: str, limit: float) -> str:
    return f"the database {method} (bounded at {limit:g} s, the wait for a pooled connection included)"


def _timed_out(method: str, limit: float) -> PipelineError:
    """Return the retryable error for a call that reached its bound (the database is frozen, slow or locked)."""
    return translate_error(TimeoutError(), action=_action(method, limit))


def _first_line(exc: BaseException) -> str:
    # PostgreSQL's message, never its DETAIL (which repeats the row's values).
    return (str(exc).splitlines() or [""])[0][:300]


# InternalClientError: asyncpg's protocol met a message it did not expect, as when the server ended an idle
# connection a moment before a query; the connection is unusable.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)


@dataclass(slots=True)
class _Transaction:
    connection: PoolConnectionProxy
    task: asyncio.Task[Any] | None


@dataclass(slots=True)
class _Held:
    """The connection a ``hold_connection()`` block runs its statements on, while it is usable."""

    connection: PoolConnectionProxy | None
    busy: bool = False


class DatabaseClient:
    """Run queries on an asyncpg pool; ``async with db.transaction():`` makes the calls inside one transaction."""

    def __init__(self, pool: asyncpg.Pool, *, command_timeout: float = 30.0, attempts: int = 3) -> None:
        self._pool = pool
        self._timeout = command_timeout
        self._attempts = attempts
        self._current: ContextVar[_Transaction | None] = ContextVar(f"db_transaction_{id(self)}", default=None)
        self._held: ContextVar[_Held | None] = ContextVar(f"db_held_{id(self)}", default=None)
        self._resend_allowed: ContextVar[bool] = ContextVar(f"db_resend_{id(self)}", default=True)
        self._retry = retry_with_backoff(
            max_attempts=max(attempts - 1, 1),
            base_delay=0.1,
            max_delay=2.0,
            jitter=True,
            retry_on=(DatabaseUnavailableError,),
            logger=_log,
        )(self._run_once)
        self._releasing: set[asyncio.Future[None]] = set()  # releases left to finish after a failed statement

    @property
    def pool(self) -> asyncpg.Pool:
        """Return the underlying pool, for what this client does not wrap (COPY, LISTEN)."""
        return self._pool

    # The four query methods run one statement on a pooled connection outside a transaction: this is the hot
    # path, kept to one coroutine layer between the caller and asyncpg (each layer costs a few percent of
    # throughput, benchmarks/). One deadline bounds the wait for a connection, the statement and any re-send.

    async def fetch(self, query: str, *args: object, timeout: float | None = None) -> list[Record]:
        """Return every row of ``query``."""
        if self._current.get() is None:
            limit = self._limit(timeout)
            deadline = asyncio.get_running_loop().time() + limit
            try:
                rows: list[Record] = await self._run_once("fetch", query, args, limit, deadline)
            except DatabaseUnavailableError as error:
                return cast(
                    "list[Record]", await self._resend("fetch", query, args, error, limit=limit, deadline=deadline)
                )
            return rows
        return cast("list[Record]", await self._in_transaction("fetch", query, args, timeout))

    async def fetchrow(self, query: str, *args: object, timeout: float | None = None) -> Record | None:
        """Return the first row of ``query``, or None."""
        if self._current.get() is None:
            limit = self._limit(timeout)
            deadline = asyncio.get_running_loop().time() + limit
            try:
                row: Record | None = await self._run_once("fetchrow", query, args, limit, deadline)
            except DatabaseUnavailableError as error:
                return cast(
                    "Record | None", await self._resend("fetchrow", query, args, error, limit=limit, deadline=deadline)
                )
            return row
        return cast("Record | None", await self._in_transaction("fetchrow", query, args, timeout))

    async def fetchval(self, query: str, *args: object, timeout: float | None = None) -> Any:
        """Return the first column of the first row of ``query``, or None."""
        if self._current.get() is None:
            limit = self._limit(timeout)
            deadline = asyncio.get_running_loop().time() + limit
            try:
                return await self._run_once("fetchval", query, args, limit, deadline)
            except DatabaseUnavailableError as error:
                return await self._resend("fetchval", query, args, error, limit=limit, deadline=deadline)
        return await self._in_transaction("fetchval", query, args, timeout)

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:
        """Run ``query`` and return its status (``UPDATE 1``)."""
        if self._current.get() is None:
            limit = self._limit(timeout)
            deadline = asyncio.get_running_loop().time() + limit
            try:
                status: str = await self._run_once("execute", query, args, limit, deadline)
            except DatabaseUnavailableError as error:
                return cast("str", await self._resend("execute", query, args, error, limit=limit, deadline=deadline))
            return status
        return cast("str", await self._in_transaction("execute", query, args, timeout))

    async def executemany(self, query: str, rows: Iterable[Sequence[object]], *, timeout: float | None = None) -> None:
        """Run ``query`` once per row of arguments, atomically (asyncpg runs them in one transaction)."""
        args = (list(rows),)
        if self._current.get() is None:
            limit = self._limit(timeout)
            deadline = asyncio.get_running_loop().time() + limit
            try:
                await self._run_once("executemany", query, args, limit, deadline)
            except DatabaseUnavailableError as error:
                await self._resend("executemany", query, args, error, limit=limit, deadline=deadline)
            return
        await self._in_transaction("executemany", query, args, timeout)

    def _limit(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else timeout

    async def _resend(
        self,
        method: str,
        query: str,
        args: tuple[object, ...],
        error: DatabaseUnavailableError,
        *,
        limit: float,
        deadline: float,
    ) -> Any:
        """Send a failed statement again when the failure allows it, within what is left of the call's bound."""
        try:
            async with asyncio.timeout_at(deadline):
                return await self._recover(method, query, args, limit, error)
        except TimeoutError as exc:
            raise _timed_out(method, limit) from exc

    async def _in_transaction(self, method: str, query: str, args: tuple[object, ...], timeout: float | None) -> Any:
        """Run on the open transaction's connection; never re-sent (the caller re-runs the whole transaction)."""
        state = self._current.get()
        assert state is not None  # noqa: S101 - only called when a transaction is open
        if state.task is not asyncio.current_task():
            raise TransactionTaskError
        limit = self._limit(timeout)
        try:
            async with asyncio.timeout(limit):
                with statement_span(method, query):
                    return await getattr(state.connection, method)(query, *args, timeout=limit)
        except _DRIVER_ERRORS as exc:
            raise translate_error(exc, action=_action(method, limit)) from exc

    async def _recover(
        self, method: str, query: str, args: tuple[object, ...], timeout: float | None, exc: BaseException
    ) -> Any:
        """Translate a failed first attempt; send the statement again when the failure allows it."""
        error = translate_error(exc)
        retryable = isinstance(error, DatabaseUnavailableError) and not isinstance(error, DatabaseTimeoutError)
        if not retryable or self._attempts < 2:
            if error is exc:
                raise error
            raise error from exc
        assert isinstance(error, DatabaseUnavailableError)  # noqa: S101 - narrowed by `retryable`
        lost = error.sqlstate is None or error.sqlstate.startswith("08")
        if lost and not self._resend_allowed.get():
            # A refused or rolled-back statement (serialization failure, deadlock) is safe to send again; one
            # whose connection went away may have committed, and this one has no identity to tell.
            msg = (
                f"the connection was lost while {method} was in flight, so PostgreSQL may have applied it; it is "
                "marked not idempotent (db.no_resend()), so it was not sent again: check whether it took effect "
                "before you retry it"
            )
            raise DatabaseUnavailableError(msg, sqlstate=error.sqlstate, code="outcome_unknown") from exc
        reason = "connection lost" if lost else f"SQLSTATE {error.sqlstate}"
        _log.warning("database %s; retrying the statement", reason, extra={"error": str(error)})
        return await self._retry(method, query, args, self._limit(timeout))

    async def _run_once(
        self, method: str, query: str, args: tuple[object, ...], timeout: float, deadline: float | None = None
    ) -> Any:
        """Acquire, run and give back by ``deadline`` (default ``timeout`` seconds from now).

        asyncpg's own ``pool.fetch`` is not used: on a timeout its release first waits for the cancel request
        and then resets the connection, each up to the command timeout, so a frozen server held the caller for
        twice the limit. Here a connection whose statement failed is given back in the background, and a
        release still running at the deadline goes on in the background (asyncpg shields it) while the caller
        gets its result.
        """
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + timeout
        held = self._held.get()
        if held is not None and held.connection is not None and not held.busy:
            return await self._run_held(held, method, query, args, timeout=timeout, deadline=deadline)
        if _idle_ready(self._pool):
            return await self._run_idle(method, query, args, timeout=timeout, deadline=deadline)
        result: Any = _UNSET
        try:
            async with asyncio.timeout_at(deadline):
                metrics = instruments()
                waiting = time.perf_counter() if metrics is not None else 0.0
                connection: PoolConnectionProxy = await self._pool.acquire()
                if metrics is not None:
                    metrics.pool_acquire_wait.record(time.perf_counter() - waiting)
                try:
                    with statement_span(method, query):
                        result = await getattr(connection, method)(query, *args, timeout=timeout)
                except BaseException:
                    self._release_later(connection)
                    raise
                await _release_kept(self._pool, connection)
        except _DRIVER_ERRORS as exc:
            if result is _UNSET:
                raise translate_error(exc, action=_action(method, timeout)) from exc
            # The statement ran; asyncpg closes a connection whose reset failed, and the pool opens another.
            _log.debug("a connection was not given back cleanly after its statement", exc_info=True)
        return result

    async def _run_idle(
        self, method: str, query: str, args: tuple[object, ...], *, timeout: float, deadline: float
    ) -> Any:
        """Run on a pooled connection that is idle and open: the acquire cannot wait, so no timer of ours runs.

        The statement is bounded by asyncpg's own timer, set to what is left until ``deadline`` (on expiry asyncpg
        raises TimeoutError at once and cancels the statement on the server); the release never waits.
        """
        metrics = instruments()
        waiting = time.perf_counter() if metrics is not None else 0.0
        # Pool.acquire() without its layers: the idle holder it would take, taken as its _acquire_impl does.
        holder = self._pool._queue.get_nowait()  # type: ignore[attr-defined] # asyncpg private (0.32, pinned)
        connection: PoolConnectionProxy = await holder.acquire()  # open and current: returns without waiting
        holder._timeout = None
        if metrics is not None:
            metrics.pool_acquire_wait.record(time.perf_counter() - waiting)
        raw = connection._con  # type: ignore[attr-defined] # asyncpg's proxied connection, not in the stubs
        try:
            with statement_span(method, query):
                result = await getattr(raw, method)(query, *args, timeout=_left(deadline, method, timeout))
        except BaseException as exc:
            self._release_later(connection)
            if isinstance(exc, _DRIVER_ERRORS):
                raise translate_error(exc, action=_action(method, timeout)) from exc
            raise
        if _release_now(self._pool, connection):
            return result
        try:
            await _release_kept(self._pool, connection)
        except _DRIVER_ERRORS:
            # The statement ran; asyncpg closes a connection whose reset failed, and the pool opens another.
            _log.debug("a connection was not given back cleanly after its statement", exc_info=True)
        return result

    async def _run_held(
        self, held: _Held, method: str, query: str, args: tuple[object, ...], *, timeout: float, deadline: float
    ) -> Any:
        """Run on the held connection; after any failure but PostgreSQL's own answer, stop using it.

        Bounded by asyncpg's own timer alone (what is left until ``deadline``): no acquire can wait here.
        """
        connection = held.connection
        assert connection is not None  # noqa: S101 - checked by the caller
        left = _left(deadline, method, timeout)
        held.busy = True
        try:
            raw = connection._con  # type: ignore[attr-defined] # asyncpg's proxied connection
            return await getattr(raw, method)(query, *args, timeout=left)
        except asyncpg.PostgresError as exc:
            if translate_error(exc).__class__ is DatabaseError:  # refused by PostgreSQL: the connection is fine
                raise translate_error(exc, action=_action(method, timeout)) from exc
            held.connection = None
            self._release_later(connection)
            raise translate_error(exc, action=_action(method, timeout)) from exc
        except BaseException as exc:
            # Lost, timed out or cancelled midway: the rest of the block goes through the pool.
            held.connection = None
            self._release_later(connection)
            if isinstance(exc, _DRIVER_ERRORS):
                raise translate_error(exc, action=_action(method, timeout)) from exc
            raise
        finally:
            held.busy = False

    @contextlib.asynccontextmanager
    async def hold_connection(self) -> AsyncIterator[None]:
        """Run the block's statements on one pooled connection: a stage step without an acquire and release each.

        Outside a transaction, as the block's statements would run anyway: each commits on its own, and one
        whose connection was lost is sent again (on a connection from the pool, which the rest of the block
        then uses too). A statement another task sends while the held one is busy (a lease renewal) takes its
        own pooled connection. Nested blocks share the outer one's connection.
        """
        if self._held.get() is not None:
            yield
            return
        try:
            async with asyncio.timeout(self._timeout):
                connection: PoolConnectionProxy = await self._pool.acquire()
        except _DRIVER_ERRORS as exc:
            raise translate_error(exc, action=_action("hold_connection", self._timeout)) from exc
        held = _Held(connection)
        token = self._held.set(held)
        try:
            yield
        finally:
            self._held.reset(token)
            kept, held.connection = held.connection, None
            if kept is not None:
                if held.busy:  # a statement of another task still runs on it
                    self._release_later(kept)
                elif _release_now(self._pool, kept):
                    pass
                elif _releases_at_once(kept):  # nothing to wait for: no cancellation can land in it
                    await _release_kept(self._pool, kept)
                else:
                    await _to_completion(_release_kept(self._pool, kept))

    async def _give_back(self, connection: PoolConnectionProxy, budget: float) -> None:
        """Release within ``budget`` seconds; a release that cannot (a frozen server) finishes in the background."""
        if budget <= 0:
            self._release_later(connection)
            return
        with contextlib.suppress(*_DRIVER_ERRORS):  # asyncpg closed the connection: the pool opens another
            await self._pool.release(connection, timeout=budget)

    def _release_later(self, connection: PoolConnectionProxy) -> None:
        task = asyncio.ensure_future(self._release_quietly(connection))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_quietly(self, connection: PoolConnectionProxy) -> None:
        with contextlib.suppress(*_DRIVER_ERRORS, asyncio.CancelledError):
            await self._pool.release(connection)

    @contextlib.contextmanager
    def no_resend(self) -> Iterator[None]:
        """Never send the block's statements again after a lost connection (for writes without an identity).

        Such a statement raises a retryable DatabaseUnavailableError with code ``outcome_unknown`` instead: it
        may or may not have been applied, and only the caller can find out which.
        """
        token = self._resend_allowed.set(False)
        try:
            yield
        finally:
            self._resend_allowed.reset(token)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Run the block's calls in one transaction; roll back on an exception; nest as savepoints."""
        state = self._current.get()
        if state is not None and state.task is asyncio.current_task():
            try:
                async with state.connection.transaction():
                    yield
            except _DRIVER_ERRORS as exc:
                raise translate_error(exc, action="the transaction") from exc
            return
        # Each step is bounded on its own (acquiring, BEGIN, COMMIT or ROLLBACK, the release), never the block.
        limit = self._timeout
        action = _action("transaction", limit)
        try:
            async with asyncio.timeout(limit):
                connection: PoolConnectionProxy = await self._pool.acquire()
        except _DRIVER_ERRORS as exc:
            raise translate_error(exc, action=action) from exc
        clean = False
        try:
            transaction = connection.transaction()
            try:
                async with asyncio.timeout(limit):
                    await transaction.start()
            except _DRIVER_ERRORS as exc:
                raise translate_error(exc, action=action) from exc
            token = self._current.set(_Transaction(connection, asyncio.current_task()))
            try:
                yield
            except BaseException:
                self._current.reset(token)
                # The block's own exception goes on; a connection whose ROLLBACK failed is closed on release.
                with contextlib.suppress(*_DRIVER_ERRORS):
                    async with asyncio.timeout(limit):
                        await transaction.rollback()
                        clean = True
                raise
            self._current.reset(token)
            try:
                async with asyncio.timeout(limit):
                    await transaction.commit()
            except _DRIVER_ERRORS as exc:
                raise translate_error(exc, action=action) from exc
            clean = True
        finally:
            if clean:
                _keep_session(connection)
                await self._give_back(connection, limit)
            else:
                self._release_later(connection)

    async def health_check(self) -> HealthStatus:
        """Run ``select 1`` and report the status and latency; never raises."""
        started = time.perf_counter()
        try:
            await self._run_once("fetchval", "select 1", (), min(self._timeout, 5.0))
        except PipelineError as error:
            return HealthStatus.since("postgres", started, str(error))
        return HealthStatus.since("postgres", started)

    async def aclose(self) -> None:
        """Close the pool, waiting for connections in use (safe to call twice)."""
        if not self._pool.is_closing():
            await self._pool.close()


# Descriptions of unnamed statements kept per connection (as many as asyncpg's own cache holds by default).
_DESCRIBED_MAX = 100


class _Connection(asyncpg.Connection):
    """asyncpg's connection without the round trips this package never needs (see the module docstring).

    It relies on two private asyncpg methods (``_get_statement``, ``_do_execute``, asyncpg 0.32), pinned in the
    lock; tests/integration/test_round_trips.py counts the messages on the wire, so a change there fails it.
    """

    __slots__ = ("_described", "_session_kept", "idle_since")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._described: OrderedDict[tuple[str, object, bool], Any] = OrderedDict()
        self._session_kept = False
        self.idle_since = time.monotonic()  # when it last went back to the pool (_IdleReaper)

    def keep_session(self) -> None:
        """Mark that only this client's statements ran since the connection was taken: release without a reset."""
        self._session_kept = True

    def take_session_kept(self) -> bool:
        """Return whether the next release may skip the reset (once)."""
        kept, self._session_kept = self._session_kept, False
        return kept

    async def _get_statement(
        self,
        query: str,
        timeout: float | None,
        *,
        named: str | bool | None = False,
        use_cache: bool = True,
        ignore_custom_codec: bool = False,
        record_class: Any = None,
    ) -> Any:
        """Return asyncpg's statement; with the cache off, keep an unnamed one's description for the next run."""
        if self._stmt_cache_enabled or named or not use_cache:  # type: ignore[attr-defined] # asyncpg's own
            return await super()._get_statement(  # type: ignore[misc] # asyncpg's private method
                query,
                timeout,
                named=named,
                use_cache=use_cache,
                ignore_custom_codec=ignore_custom_codec,
                record_class=record_class,
            )
        key = (query, record_class, ignore_custom_codec)
        statement = self._described.get(key)
        if statement is not None and not statement.closed:
            self._described.move_to_end(key)
            return statement
        statement = await super()._get_statement(  # type: ignore[misc] # asyncpg's private method
            query, timeout, ignore_custom_codec=ignore_custom_codec, record_class=record_class
        )
        if not statement.name:  # unnamed and marked unprepared: every run sends its Parse with the Bind
            self._described[key] = statement
            if len(self._described) > _DESCRIBED_MAX:
                self._described.popitem(last=False)
        return statement

    async def _do_execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run a statement; forget every kept description when a result no longer matches one (a migration)."""
        try:
            return await super()._do_execute(*args, **kwargs)  # type: ignore[misc] # asyncpg's private method
        except asyncpg.InternalClientError:
            self._described.clear()
            raise

    def _drop_local_statement_cache(self) -> None:
        self._described.clear()
        super()._drop_local_statement_cache()  # type: ignore[misc] # asyncpg's private method


def _idle_ready(pool: asyncpg.Pool) -> bool:
    """Return whether ``pool.acquire()`` would return at once: an idle, open connection of the current generation.

    asyncpg's holder queue hands out the newest open connection first (asyncpg private, 0.32, pinned).
    """
    holders = pool._queue._queue  # type: ignore[attr-defined] # asyncpg's LIFO queue of idle holders
    if not holders or pool.is_closing():
        return False
    holder = holders[-1]
    con = holder._con
    return con is not None and not con.is_closed() and holder._generation == pool._generation  # type: ignore[attr-defined]


def _left(deadline: float, method: str, limit: float) -> float:
    """Return the seconds left until ``deadline``, or raise the call's timeout error when none are."""
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise _timed_out(method, limit)
    return left


def _releases_at_once(connection: PoolConnectionProxy) -> bool:
    """Return whether :func:`_release_kept` will give ``connection`` back without waiting on anything."""
    raw = connection._con  # type: ignore[attr-defined] # asyncpg's proxied connection
    return raw is not None and isinstance(raw, _Connection) and not raw.is_in_transaction()


def _release_now(pool: asyncpg.Pool, connection: PoolConnectionProxy) -> bool:
    """Give back, at once, a connection that ran only this client's statements and has nothing to clean up.

    Return False, having done nothing, for any other (a pool opened elsewhere, a transaction or listener left, a
    cancellation in flight, a connection closed, expired or at its query limit): :func:`_release_kept` or the
    pool's own release handles those. What asyncpg's release would do here (its reset and our reset hook) is
    nothing, so this is its last step alone: the holder goes back to the queue. asyncpg private (0.32, pinned).
    """
    holder: Any = connection._holder  # asyncpg's holder of the proxied connection
    if not isinstance(holder._con, _Connection):
        return False
    raw: Any = holder._con
    if (
        holder._in_use is None
        or holder._max_inactive_time
        or holder._generation != pool._generation  # type: ignore[attr-defined]
        or raw.is_closed()
        or raw.is_in_transaction()
        or raw._top_xact is not None
        or raw._listeners
        or raw._log_listeners
        or raw._protocol._is_cancelling()
        or raw._protocol.queries_count >= holder._max_queries
    ):
        return False
    raw.idle_since = time.monotonic()
    raw._on_release()  # what Pool.release does first
    holder._timeout = None
    holder._release()
    return True


async def _release_kept(pool: asyncpg.Pool, connection: PoolConnectionProxy) -> None:
    """Give back a connection that ran only this client's statements, outside a transaction.

    With nothing to reset, the release completes without waiting on anything, so asyncpg's ``asyncio.shield``
    around it (a task per statement: a fifth of the client's CPU on the stage step) buys nothing; a cancellation
    cannot land in the middle. On a pool opened elsewhere (without _Connection) asyncpg's release runs as is.
    """
    raw = connection._con  # type: ignore[attr-defined] # asyncpg's proxied connection, not in the stubs
    keep = getattr(raw, "keep_session", None)  # only our _Connection has it (a pool opened elsewhere does not)
    if keep is None or raw.is_in_transaction():
        await pool.release(connection)
        return
    keep()
    raw.idle_since = time.monotonic()
    raw._on_release()  # what Pool.release does first (asyncpg private)
    holder = connection._holder  # Pool.release without its shield
    await holder.release(holder._timeout)  # type: ignore[attr-defined] # the acquire's timeout


async def _to_completion(release: Coroutine[Any, Any, None]) -> None:
    """Finish a release even when the caller is cancelled meanwhile (a kept release never waits, in practice)."""
    task = asyncio.ensure_future(release)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


def _keep_session(connection: PoolConnectionProxy) -> None:
    """Let the connection go back without a reset (a pool opened elsewhere, without _Connection, resets it)."""
    keep = getattr(connection, "keep_session", None)  # the proxy forwards to the connection
    if keep is not None:
        keep()


async def _reset(connection: asyncpg.Connection) -> None:
    """Reset a connection going back to the pool, unless only this client's statements ran on it."""
    if isinstance(connection, _Connection):
        connection.idle_since = time.monotonic()
        if connection.take_session_kept():
            return  # asyncpg has already rolled back a transaction left open, and dropped its listeners
    query = connection.get_reset_query()
    if query:
        await connection.execute(query)


# A pooled connection idle this long is closed, down to the pool's minimum size (asyncpg's default lifetime).
_IDLE_LIFETIME = 300.0


class _IdleReaper:
    """Close pooled connections idle for ``lifetime`` seconds, down to the pool's minimum size.

    asyncpg does this with a timer per connection, cancelled on every acquire and made again on every release:
    two timer operations per statement (a timer in the event loop's heap costs dozens of Python calls), about a
    tenth of a stage step's client CPU. Here one timer checks every connection each tenth of the lifetime, so a
    connection is closed between ``lifetime`` and 1.1 x ``lifetime`` after it went back.
    """

    def __init__(self, pool: asyncpg.Pool, lifetime: float = _IDLE_LIFETIME) -> None:
        self._pool = pool
        self._lifetime = lifetime
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(lifetime / 10, self._check)

    def _check(self) -> None:
        if self._pool.is_closing():
            return
        now = time.monotonic()
        for holder in list(self._pool._holders):  # type: ignore[attr-defined] # asyncpg private (0.32, pinned)
            con = holder._con
            if (
                holder._in_use is None
                and isinstance(con, _Connection)
                and not con.is_closed()
                and now - con.idle_since >= self._lifetime
            ):
                holder._deactivate_inactive_connection()  # keeps the pool's minimum, as asyncpg's own timer does
        self._handle = self._loop.call_later(self._lifetime / 10, self._check)

    def stop(self) -> None:
        """Check no more."""
        self._handle.cancel()


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(connection: asyncpg.Connection) -> None:
    """Read and write json/jsonb as Python values (asyncpg's default is text)."""
    for name in ("json", "jsonb"):
        await connection.set_type_codec(name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def _open_pool(settings: Settings) -> asyncpg.Pool:
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            settings.database_dsn,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            timeout=settings.db_connect_timeout_seconds,
            command_timeout=settings.db_command_timeout_seconds,
            statement_cache_size=settings.statement_cache_size,
            init=_init_connection,
            reset=_reset,
            connection_class=_Connection,
            max_inactive_connection_lifetime=0,  # _IdleReaper's one timer instead of two timer calls per statement
        )
    except _DRIVER_ERRORS as exc:
        parts = urlsplit(settings.database_dsn)
        where = f"PostgreSQL at {parts.hostname}:{parts.port or 5432}"  # never the password
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            msg = (
                f"{where} has no database {parts.path.lstrip('/')!r}; run `python -m shared db migrate` "
                "(it creates the database in development) or fix DATABASE_URL"
            )
            raise DatabaseError(msg, sqlstate=exc.sqlstate) from exc
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError):
            msg = f"{where} refused user {parts.username!r}; check the user and password in DATABASE_URL"
            raise DatabaseError(msg, sqlstate=exc.sqlstate) from exc
        raise translate_error(exc, action=f"connecting to {where}") from exc
    return pool


async def init_database(settings: Settings) -> AsyncGenerator[DatabaseClient, None]:
    """Open the pool (``db_connect_attempts`` tries, exponential backoff); close it on shutdown."""
    opener = retry_with_backoff(
        max_attempts=settings.db_connect_attempts,
        base_delay=0.5,
        max_delay=5.0,
        retry_on=(DatabaseUnavailableError,),
        logger=_log,
    )(_open_pool)
    pool = await opener(settings)
    client = DatabaseClient(
        pool, command_timeout=settings.db_command_timeout_seconds, attempts=settings.db_connect_attempts
    )
    reaper = _IdleReaper(pool)
    try:
        yield client
    finally:
        reaper.stop()
        await client.aclose()


# `from shared.database import db` (an older task list's name) names its provider.
if not TYPE_CHECKING:  # to mypy a module __getattr__ would make every misspelt name importable
    __getattr__ = container_only("shared.database", {"db": "db"})
