"""Define the one exception tree every pipeline module shares.

Every error that leaves this package is a :class:`PipelineError`. Branch on what you will do next::

    PipelineError                        code                  what the caller does next
    ├── ConfigError                      config_error          fix the settings (lists every problem)
    ├── ValidationError                  validation_error      refuse the input; the user must change it
    ├── BudgetExceededError              budget_exceeded       stop spending on this job
    ├── NotFoundError                    not_found             the named thing does not exist
    │   ├── JobNotFoundError             job_not_found
    │   └── StorageNotFoundError         storage_not_found     (also a StorageError)
    ├── InvalidStateError                invalid_state         the job cannot move that way (e.g. backwards)
    ├── AudioAnalysisError               audio_analysis_failed a stage failed for good
    ├── GenerationError                  generation_failed
    ├── CompositionError                 composition_failed
    ├── DatabaseError                    database_error        a query failed; `sqlstate` says why
    ├── StorageError                     storage_error
    │   ├── StoragePermissionError       storage_permission_denied
    │   ├── StorageConflictError         storage_conflict
    │   └── StorageNotFoundError         storage_not_found
    └── RetryableError                   retryable             try again later, after `retry_after` seconds
        ├── DatabaseUnavailableError     database_unavailable  (also a DatabaseError)
        ├── CacheError                   cache_error           Redis failed and the caller asked to know
        └── StorageUnavailableError      storage_unavailable   (also a StorageError)

Context travels as keyword-only, typed attributes (``job_id``, ``limit``, ``spent``, ``retry_after``,
``sqlstate``...); messages are built from them, so nobody has to parse a string. Every error survives a
pickle round trip, because workers hand them between processes. A message never contains a secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

__all__ = [
    "AudioAnalysisError",
    "BudgetExceededError",
    "CacheError",
    "CompositionError",
    "ConfigError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "GenerationError",
    "InvalidStateError",
    "JobNotFoundError",
    "NotFoundError",
    "PipelineError",
    "RetryableError",
    "StorageConflictError",
    "StorageError",
    "StorageNotFoundError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "ValidationError",
]

JobId = UUID | str


def _restore(cls: type[PipelineError], args: tuple[Any, ...], state: dict[str, Any]) -> PipelineError:
    """Rebuild an error from its pickled state without calling ``__init__`` (keyword-only arguments)."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class PipelineError(Exception):
    """Root of every error the pipeline raises; carries a stable ``code`` and the ``job_id`` if known."""

    default_code: ClassVar[str] = "pipeline_error"

    def __init__(self, message: str, *, job_id: JobId | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.code = code or self.default_code

    def __str__(self) -> str:
        if self.job_id is None:
            return self.message
        return f"{self.message} (job_id={self.job_id})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, job_id={self.job_id!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self), self.args, dict(self.__dict__)))


class ConfigError(PipelineError):
    """The settings are missing or invalid; ``problems`` holds one line per problem, never a value."""

    default_code = "config_error"

    def __init__(self, problems: Sequence[str], *, code: str | None = None) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(
            f"Invalid configuration ({count} problem{'s' if count != 1 else ''}); "
            f"fix these environment variables (or .env) and start again:\n{lines}",
            code=code,
        )


class ValidationError(PipelineError):
    """The input is unacceptable; the message says what was wrong and what is accepted."""

    default_code = "validation_error"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        job_id: JobId | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id, code=code)
        self.field = field


class BudgetExceededError(PipelineError):
    """Spending more on this job would pass its budget; stop spending."""

    default_code = "budget_exceeded"

    def __init__(
        self,
        *,
        job_id: JobId,
        spent: Decimal,
        limit: Decimal,
        reserved: Decimal = Decimal(0),
        requested: Decimal = Decimal(0),
        code: str | None = None,
    ) -> None:
        self.spent = spent
        self.limit = limit
        self.reserved = reserved
        self.requested = requested
        super().__init__(
            f"Budget exceeded: spent {spent} + reserved {reserved} + requested {requested} "
            f"is more than the limit {limit}; raise the job's budget or stop spending on it",
            job_id=job_id,
            code=code,
        )


class NotFoundError(PipelineError):
    """The named thing does not exist."""

    default_code = "not_found"


class JobNotFoundError(NotFoundError):
    """No job has this id."""

    default_code = "job_not_found"

    def __init__(self, *, job_id: JobId, code: str | None = None) -> None:
        super().__init__(
            "Job not found; check the job id (was the job created in this database?)",
            job_id=job_id,
            code=code,
        )


class InvalidStateError(PipelineError):
    """The job cannot move from its current state to the one asked for."""

    default_code = "invalid_state"

    def __init__(
        self,
        message: str,
        *,
        current: str | None = None,
        requested: str | None = None,
        job_id: JobId | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id, code=code)
        self.current = current
        self.requested = requested


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

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        job_id: JobId | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id, code=code)
        self.retry_after = retry_after


class DatabaseError(PipelineError):
    """A database call failed; ``sqlstate`` is PostgreSQL's error code when there is one."""

    default_code = "database_error"

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        job_id: JobId | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id, code=code)
        self.sqlstate = sqlstate


class DatabaseUnavailableError(DatabaseError, RetryableError):
    """The database could not be reached, the connection dropped, or a transaction must be retried."""

    default_code = "database_unavailable"

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        retry_after: float | None = None,
        job_id: JobId | None = None,
        code: str | None = None,
    ) -> None:
        PipelineError.__init__(self, message, job_id=job_id, code=code)
        self.sqlstate = sqlstate
        self.retry_after = retry_after


class CacheError(RetryableError):
    """Redis failed; raised only in strict mode (otherwise the cache degrades to misses)."""

    default_code = "cache_error"


class StorageError(PipelineError):
    """A storage operation failed; ``bucket`` and ``path`` name the object."""

    default_code = "storage_error"

    def __init__(
        self,
        message: str,
        *,
        bucket: str | None = None,
        path: str | None = None,
        status: int | None = None,
        job_id: JobId | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, job_id=job_id, code=code)
        self.bucket = bucket
        self.path = path
        self.status = status


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

    def __init__(
        self,
        message: str,
        *,
        bucket: str | None = None,
        path: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        job_id: JobId | None = None,
        code: str | None = None,
    ) -> None:
        StorageError.__init__(self, message, bucket=bucket, path=path, status=status, job_id=job_id, code=code)
        self.retry_after = retry_after
