"""Define the one exception tree every pipeline module shares.

Every error that leaves this package is a :class:`PipelineError`. Branch on what you will do next::

    PipelineError                        code                  what the caller does next
    ├── ConfigError                      config_error          fix the settings (lists every problem)
    │   ├── NoDatabaseError              no_database           the fakes have no database: use the real
    │   │                                                      container or override `db`
    │   └── WiringError                  wiring_error          fix the named providers of the container
    ├── LifecycleError                   lifecycle_error       the container could not start or stop in time
    ├── ContainerOnlyError               container_only        (also an ImportError) a module-level object
    │                                                          that does not exist: take it from the container
    ├── NotWiredError                    not_wired             wire the module before calling the function
    ├── AuthenticationError              authentication_failed sign in again (HTTP 401); `reason` says why
    ├── PermissionDeniedError            permission_denied     signed in, but not allowed here (HTTP 403):
    │                                                          sign up (anonymous) or pass MFA; `reason` says
    ├── RequestTimeoutError              request_timeout       the client sent too slowly (HTTP 408)
    ├── ValidationError                  validation_error      refuse the input; the user must change it
    │   ├── PayloadTooLargeError         payload_too_large     send a smaller body (HTTP 413)
    │   └── UnknownPriceError            unknown_price         price the model (never priced at 0)
    ├── BudgetExceededError              budget_exceeded       stop spending on this job
    ├── NotFoundError                    not_found             the named thing does not exist
    │   ├── JobNotFoundError             job_not_found
    │   ├── UserNotFoundError            user_not_found        create the user first (auth.users)
    │   └── StorageNotFoundError         storage_not_found     (also a StorageError)
    ├── InvalidStateError                invalid_state         the job cannot move that way (e.g. backwards)
    │   └── StageConflictError           stage_conflict        another worker holds or finished the stage
    ├── AudioAnalysisError               audio_analysis_failed a stage failed for good
    ├── GenerationError                  generation_failed
    ├── CompositionError                 composition_failed
    ├── DatabaseError                    database_error        a query failed; `sqlstate` says why
    │   ├── MigrationHistoryError        migration_history     the folder and the database disagree
    │   │   ├── MigrationsMissingLocallyError                  update the checkout (`versions` it lacks)
    │   │   └── MigrationsOutOfOrderError                      rename, or `db migrate --include-all`
    │   ├── TransactionTaskError         transaction_shared_across_tasks
    │   │                                                      a bug: await the calls in the transaction's task
    │   └── DatabaseUnavailableError     database_unavailable  (also a RetryableError)
    │       └── DatabaseTimeoutError     database_timeout      retry later; never re-sent by the client itself
    ├── StorageError                     storage_error
    │   ├── StoragePermissionError       storage_permission_denied
    │   ├── StorageConflictError         storage_conflict
    │   ├── StorageNotFoundError         storage_not_found     (also a NotFoundError)
    │   └── StorageUnavailableError      storage_unavailable   (also a RetryableError)
    └── RetryableError                   retryable             try again later, after `retry_after` seconds
        ├── DatabaseUnavailableError     database_unavailable  (also a DatabaseError)
        ├── AuthUnavailableError         auth_unavailable      the signing keys cannot be fetched (HTTP 503)
        ├── CacheError                   cache_error           Redis failed and the caller asked to know
        ├── ProviderRateLimitedError     rate_limited          the provider said 429: wait `retry_after`
        ├── ProviderOverloadedError      provider_overloaded   503/529/overloaded: wait and try again
        ├── RateLimitWaitError           rate_limit_wait       no shared rate/concurrency slot in time
        ├── RateLimiterUnavailableError  rate_limiter_unavailable  the limiter's Redis is down (fail closed)
        └── StorageUnavailableError      storage_unavailable   (also a StorageError)

Every class has the same shape: ``Error(message, *, job_id=None, code="", **context)``, where the context
is the keyword-only, typed attributes the class declares (``limit``, ``spent``, ``retry_after``,
``sqlstate``...), whose types mypy checks (``typing.dataclass_transform``); at run time only their names are
checked (an unknown or missing keyword is a TypeError), not their types. A class that can say
what went wrong from its context alone builds its message from it when none is given (``JobNotFoundError(
job_id=...)``), so nobody has to parse a string. Every error survives a pickle round trip, because workers
hand them between processes. A message never contains a secret.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar, dataclass_transform
from uuid import UUID

__all__ = [
    "AudioAnalysisError",
    "AuthUnavailableError",
    "AuthenticationError",
    "BudgetExceededError",
    "CacheError",
    "CompositionError",
    "ConfigError",
    "ContainerOnlyError",
    "DatabaseError",
    "DatabaseTimeoutError",
    "DatabaseUnavailableError",
    "GenerationError",
    "InvalidStateError",
    "JobNotFoundError",
    "LifecycleError",
    "MigrationHistoryError",
    "MigrationsMissingLocallyError",
    "MigrationsOutOfOrderError",
    "NoDatabaseError",
    "NotFoundError",
    "NotWiredError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PipelineError",
    "ProviderOverloadedError",
    "ProviderRateLimitedError",
    "RateLimitWaitError",
    "RateLimiterUnavailableError",
    "RequestTimeoutError",
    "RetryableError",
    "StageConflictError",
    "StorageConflictError",
    "StorageError",
    "StorageNotFoundError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "TransactionTaskError",
    "UnknownPriceError",
    "UserNotFoundError",
    "ValidationError",
    "WiringError",
]

JobId = UUID | str
_REQUIRED: Any = object()


def _positional(*, default: str, kw_only: bool) -> Any:
    """Mark the message as the one positional field (read by type checkers through dataclass_transform)."""
    del kw_only
    return default


@dataclass_transform(kw_only_default=True, eq_default=False, field_specifiers=(_positional,))
class _ErrorShape(type):
    """Collect each error class's context fields (its annotations, with their defaults) for the one ``__init__``."""

    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> None:
        super().__init__(name, bases, namespace)
        fields: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for field, annotation in vars(klass).get("__annotations__", {}).items():
                if field != "message" and not str(annotation).startswith("ClassVar"):
                    fields[field] = vars(klass).get(field, _REQUIRED)
        cls._fields = fields

    _fields: dict[str, Any]


def _restore(cls: type[PipelineError], args: tuple[Any, ...], state: dict[str, Any]) -> PipelineError:
    """Rebuild an error from its pickled state without calling ``__init__`` (keyword-only arguments)."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class PipelineError(Exception, metaclass=_ErrorShape):
    """Root of every error the pipeline raises; carries a stable ``code`` and the ``job_id`` if known."""

    _fields: ClassVar[dict[str, Any]]
    default_code: ClassVar[str] = "pipeline_error"

    message: str = _positional(default="", kw_only=False)
    job_id: JobId | None = None
    code: str = ""  # every instance has one: the class's default_code unless one is given

    def __init__(self, message: str = "", /, **context: Any) -> None:
        if not isinstance(message, str):
            msg = f"{type(self).__name__}()'s first argument is the message (a str); pass context by keyword"
            raise TypeError(msg)
        for field, default in self._fields.items():
            value = context.pop(field, default)
            if value is _REQUIRED:
                msg = f"{type(self).__name__}() needs the keyword argument {field!r}"
                raise TypeError(msg)
            setattr(self, field, value)
        if context:
            msg = f"{type(self).__name__}() got unexpected keyword arguments: {', '.join(sorted(context))}"
            raise TypeError(msg)
        self.code = self.code or self.default_code
        self.message = message or self._describe()
        super().__init__(self.message)

    def _describe(self) -> str:
        """Return the message built from the context, for classes that can say it without one."""
        msg = f"{type(self).__name__}() needs a message that says what went wrong and what to do"
        raise TypeError(msg)

    def __str__(self) -> str:
        if self.job_id is None:
            return self.message
        return f"{self.message} (job_id={self.job_id})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, job_id={self.job_id!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self), self.args, dict(self.__dict__)))


class ConfigError(PipelineError):
    """The settings are missing or invalid; ``problems`` holds one line per problem, never a value.

    ``ConfigError("a message")`` keeps the message; ``ConfigError(problems=[...])`` lists the problems.
    """

    default_code = "config_error"
    problems: tuple[str, ...] = ()

    def _describe(self) -> str:
        count = len(self.problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        return (
            f"Invalid configuration ({count} problem{'s' if count != 1 else ''}); "
            f"fix these environment variables (or .env) and start again:\n{lines}"
        )


class NoDatabaseError(ConfigError):
    """A test on the fakes touched the database, which the fakes do not have; ``attribute`` is what it asked for."""

    default_code = "no_database"
    attribute: str

    def _describe(self) -> str:
        return (
            f"the fake container has no database (db.{self.attribute} was asked for): use `real_container` for "
            "a test that reads or writes the database, or override `db` on the fake container with your own "
            "fake, e.g. `fake_container.db.override(providers.Object(my_fake_db))`"
        )


class WiringError(ConfigError):
    """The container's wiring is wrong, found when it starts; ``providers`` names each provider at fault.

    ``problems`` says, one line per problem, what is wrong with each (it cannot be built, it is given an argument
    of another type, or a subclass replaced it with another type).
    """

    default_code = "wiring_error"
    providers: tuple[str, ...] = ()

    def _describe(self) -> str:
        count = len(self.problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        return (
            f"The container cannot start: {count} provider problem{'s' if count != 1 else ''} "
            f"({', '.join(self.providers)}); fix these providers in the container class:\n{lines}"
        )


class ContainerOnlyError(PipelineError, ImportError):
    """``from shared.config import settings`` (or ``db``, ``redis``...): nothing is built at import.

    It is also an ImportError, so that ``from ... import`` fails as Python's own would, with a message that names
    the container provider to use instead.
    """

    default_code = "container_only"
    module: str
    name: str
    provider: str

    def _describe(self) -> str:
        return (
            f"'from {self.module} import {self.name}' does not exist: videogen-shared builds nothing at import. "
            f"Take it from the container: container.{self.provider}() after `async with lifespan(container)`, "
            f"or `{self.name}: ... = Provide[Container.{self.provider}]` in an @inject function "
            "(shared.container.Container; the README's table maps each name)"
        )


class LifecycleError(PipelineError):
    """The container's resources could not be started or stopped in time."""

    default_code = "lifecycle_error"


class NotWiredError(PipelineError):
    """An ``@inject`` function was called before its module was wired to a container."""

    default_code = "not_wired"
    function: str
    parameter: str

    def _describe(self) -> str:
        return (
            f"{self.function}() was called before its module was wired, so '{self.parameter}' would be a "
            "Provide marker, not the collaborator; call container.wire(modules=[...]) (or list the module "
            "in the container's wiring_config) before calling it"
        )


class ValidationError(PipelineError):
    """The input is unacceptable; the message says what was wrong and what is accepted."""

    default_code = "validation_error"
    field: str | None = None


class BudgetExceededError(PipelineError):
    """Spending more on this job would pass its budget; stop spending."""

    default_code = "budget_exceeded"
    spent: Decimal
    limit: Decimal
    reserved: Decimal = Decimal(0)
    requested: Decimal = Decimal(0)

    def _describe(self) -> str:
        return (
            f"Budget exceeded: spent {self.spent} + reserved {self.reserved} + requested {self.requested} "
            f"is more than the limit {self.limit}; raise the job's budget or stop spending on it"
        )


class NotFoundError(PipelineError):
    """The named thing does not exist."""

    default_code = "not_found"


class JobNotFoundError(NotFoundError):
    """No job has this id."""

    default_code = "job_not_found"

    def _describe(self) -> str:
        return "Job not found; check the job id (was the job created in this database?)"


class UserNotFoundError(NotFoundError):
    """The user a job was created for does not exist (no row in ``auth.users``)."""

    default_code = "user_not_found"
    user_id: UUID | str | None = None

    def _describe(self) -> str:
        return f"user {self.user_id} does not exist; create the user (auth.users) before creating jobs for it"


class InvalidStateError(PipelineError):
    """The job cannot move from its current state to the one asked for."""

    default_code = "invalid_state"
    current: str | None = None
    requested: str | None = None


class StageConflictError(InvalidStateError):
    """Another worker holds or already finished this stage; ``winner`` names it. Do not redo the work."""

    default_code = "stage_conflict"
    stage: str = ""
    item: str | None = None
    winner: str | None = None

    def _describe(self) -> str:
        what = f"stage {self.stage}" + (f" item {self.item!r}" if self.item else "")
        who = f" by {self.winner}" if self.winner else ""
        return f"{what} is {self.current or 'taken'}{who}; this call lost the race: drop this run, do not redo it"


class AudioAnalysisError(PipelineError):
    """Audio analysis failed for good."""

    default_code = "audio_analysis_failed"


class GenerationError(PipelineError):
    """Image, prompt or clip generation failed for good."""

    default_code = "generation_failed"


class CompositionError(PipelineError):
    """Composing the final video failed for good."""

    default_code = "composition_failed"


class RetryableError(PipelineError):
    """A passing failure; the same call may succeed later, after ``retry_after`` seconds if given."""

    default_code = "retryable"
    retry_after: float | None = None


class ProviderRateLimitedError(RetryableError):
    """The provider answered 429 (too many requests or tokens); wait ``retry_after`` seconds."""

    default_code = "rate_limited"
    provider: str | None = None
    status: int | None = 429

    def _describe(self) -> str:
        wait = "" if self.retry_after is None else f" for {self.retry_after:g} s"
        return f"{self.provider or 'the provider'} refused the call as over its rate limit; wait{wait} and retry"


class ProviderOverloadedError(RetryableError):
    """The provider is overloaded or unavailable (502/503/504/529, a timeout); try again later."""

    default_code = "provider_overloaded"
    provider: str | None = None
    status: int | None = None

    def _describe(self) -> str:
        wait = "" if self.retry_after is None else f" after {self.retry_after:g} s"
        return f"{self.provider or 'the provider'} is overloaded or unavailable (HTTP {self.status}); retry{wait}"


class RateLimitWaitError(RetryableError):
    """No rate or concurrency slot came free within the admission's wait; retry the stage later."""

    default_code = "rate_limit_wait"
    scope: str = ""

    def _describe(self) -> str:
        return f"no rate or concurrency slot came free for {self.scope}; retry after {self.retry_after or 0:g} s"


class RateLimiterUnavailableError(RetryableError):
    """The limiter's store (Redis) cannot be reached: no paid call is admitted (fail closed); retry later."""

    default_code = "rate_limiter_unavailable"

    def _describe(self) -> str:
        return (
            "the rate limiter's Redis is unreachable, so no paid call is admitted (fail closed); retry shortly, "
            "or run `python -m shared doctor`"
        )


class UnknownPriceError(ValidationError):
    """The price catalogue has no price for this model or unit; a call is never priced at 0."""

    default_code = "unknown_price"
    provider: str = ""
    model: str = ""
    unit: str | None = None

    def _describe(self) -> str:
        what = f"unit {self.unit!r} of " if self.unit else ""
        return (
            f"no price for {what}{self.provider} model {self.model!r}; add it to the price table "
            "(PAID_REPLICATE_PRICES_FILE for Replicate hardware) or use a priced model"
        )


class DatabaseError(PipelineError):
    """A database call failed; ``sqlstate`` is PostgreSQL's error code when there is one."""

    default_code = "database_error"
    sqlstate: str | None = None


class TransactionTaskError(DatabaseError):
    """A task other than the one that opened ``db.transaction()`` used its connection: a bug in the caller."""

    default_code = "transaction_shared_across_tasks"

    def _describe(self) -> str:
        return (
            "a task started inside `async with db.transaction()` used the database: a transaction's "
            "connection serves one task; await the calls in the transaction's own task"
        )


class DatabaseUnavailableError(DatabaseError, RetryableError):
    """The database could not be reached, the connection dropped, or a transaction must be retried."""

    default_code = "database_unavailable"


class DatabaseTimeoutError(DatabaseUnavailableError):
    """A call did not finish within its timeout; the client does not re-send it (it may still be running)."""

    default_code = "database_timeout"


class CacheError(RetryableError):
    """Redis failed; raised only in strict mode (otherwise the cache degrades to misses)."""

    default_code = "cache_error"


class StorageError(PipelineError):
    """A storage operation failed; ``bucket`` and ``path`` name the object."""

    default_code = "storage_error"
    bucket: str | None = None
    path: str | None = None
    status: int | None = None


class StorageNotFoundError(StorageError, NotFoundError):
    """The object or the bucket does not exist."""

    default_code = "storage_not_found"


class StoragePermissionError(StorageError):
    """The credentials may not do this; check the service key and the bucket's policies."""

    default_code = "storage_permission_denied"


class StorageConflictError(StorageError):
    """An object already exists at that path; pass ``upsert=True`` to replace it."""

    default_code = "storage_conflict"


class StorageUnavailableError(StorageError, RetryableError):
    """Storage could not be reached or answered 5xx/429; try again later."""

    default_code = "storage_unavailable"


class AuthenticationError(PipelineError):
    """The request carries no acceptable access token; sign in (again) and send ``Authorization: Bearer``.

    ``reason`` names the check that failed (``missing``, ``malformed``, ``algorithm``, ``signature``, ``expired``,
    ``not_yet_valid``, ``issuer``, ``audience``, ``claims``, ``role``, ``unknown_key``).
    """

    default_code = "authentication_failed"
    reason: str = "missing"


class PermissionDeniedError(PipelineError):
    """The token is good, but its user may not do this (HTTP 403); ``reason`` says why and the message what to do.

    ``reason``: ``anonymous`` (an anonymous sign-in on a route that spends paid-API budget: sign up or link an
    identity first) or ``mfa_required`` (the route needs a second factor: verify one, then retry).
    """

    default_code = "permission_denied"
    reason: str = "anonymous"


class AuthUnavailableError(RetryableError):
    """The signing keys could not be fetched and no unexpired copy is cached; retry (the token may be good)."""

    default_code = "auth_unavailable"


class PayloadTooLargeError(ValidationError):
    """The request body is larger than this route accepts; send a smaller file."""

    default_code = "payload_too_large"
    field: str | None = "body"
    limit: int

    def _describe(self) -> str:
        return f"The request body is larger than the limit of {self.limit} bytes; send a smaller file"


class RequestTimeoutError(PipelineError):
    """The client sent its request too slowly; send it again on a faster connection."""

    default_code = "request_timeout"


class MigrationHistoryError(DatabaseError):
    """The migrations folder and the database's history disagree; ``versions`` are the ones in question."""

    default_code = "migration_history"
    versions: tuple[str, ...] = ()


class MigrationsMissingLocallyError(MigrationHistoryError):
    """The database has applied versions the folder lacks (the Supabase CLI's ErrMissingLocal)."""

    default_code = "migrations_missing_locally"


class MigrationsOutOfOrderError(MigrationHistoryError):
    """Files older than the newest applied version are not applied yet (the Supabase CLI's ErrMissingRemote)."""

    default_code = "migrations_out_of_order"
