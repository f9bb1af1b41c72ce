"""The error tree: codes, messages built from typed context, pickling, and the retry branch."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from decimal import Decimal
from typing import assert_type
from uuid import uuid4

import pytest

import shared
from shared import errors
from shared.errors import (
    BudgetExceededError,
    CacheError,
    ConfigError,
    DatabaseError,
    DatabaseTimeoutError,
    DatabaseUnavailableError,
    JobNotFoundError,
    LifecycleError,
    NotFoundError,
    NotWiredError,
    PipelineError,
    RetryableError,
    StorageError,
    StorageNotFoundError,
    StorageUnavailableError,
    TransactionTaskError,
    UserNotFoundError,
    ValidationError,
)

ERROR_CLASSES = [
    obj for name in errors.__all__ if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, PipelineError)
]


def _sample(cls: type[PipelineError]) -> PipelineError:
    """Build one instance of each class with the context it takes."""
    job_id = uuid4()
    if cls is ConfigError:
        return ConfigError(problems=("DATABASE_URL: expected a postgres:// URL", "LOG_LEVEL: bad"))
    if cls is BudgetExceededError:
        return BudgetExceededError(
            job_id=job_id, spent=Decimal("9.5"), reserved=Decimal("0.25"), requested=Decimal(1), limit=Decimal(10)
        )
    if cls is JobNotFoundError:
        return JobNotFoundError(job_id=job_id)
    if cls is UserNotFoundError:
        return UserNotFoundError(user_id=uuid4(), job_id=job_id)
    if cls is NotWiredError:
        return NotWiredError(function="stage.run", parameter="cache")
    if cls is errors.ContainerOnlyError:
        return errors.ContainerOnlyError(module="shared.config", name="settings", provider="settings", job_id=job_id)
    if cls is errors.NoDatabaseError:
        return errors.NoDatabaseError(attribute="fetch", job_id=job_id)
    if cls is TransactionTaskError:
        return TransactionTaskError()
    if cls is errors.PayloadTooLargeError:
        return errors.PayloadTooLargeError(limit=1024, job_id=job_id)
    if cls is errors.AuthenticationError:
        return errors.AuthenticationError("the token expired; sign in again", reason="expired")
    if issubclass(cls, StorageUnavailableError):
        return cls("storage is down", bucket="clips", path="a/b.mp4", status=503, retry_after=3.0, job_id=job_id)
    if issubclass(cls, StorageError):
        return cls("storage failed", bucket="clips", path="a/b.mp4", status=404, job_id=job_id)
    if issubclass(cls, DatabaseUnavailableError):
        return cls("connection lost", sqlstate="08006", retry_after=1.5, job_id=job_id)
    if cls is DatabaseError:
        return cls("bad query", sqlstate="23505", job_id=job_id)
    if issubclass(cls, RetryableError):
        return cls("try later", retry_after=2.0, job_id=job_id)
    return cls("it failed", job_id=job_id)


def test_every_exported_error_is_a_pipeline_error() -> None:
    assert len(ERROR_CLASSES) == len(errors.__all__)


def test_codes_are_unique_and_stable() -> None:
    codes = [cls.default_code for cls in ERROR_CLASSES]
    assert len(codes) == len(set(codes))
    assert "budget_exceeded" == BudgetExceededError.default_code


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_survives_a_pickle_round_trip(cls: type[PipelineError]) -> None:
    original = _sample(cls)
    copy = pickle.loads(pickle.dumps(original))  # noqa: S301 - our own bytes, the point of the test
    assert type(original) is type(copy)
    assert vars(original) == vars(copy)
    assert str(original) == str(copy)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_str_names_the_job_when_there_is_one(cls: type[PipelineError]) -> None:
    error = _sample(cls)
    if error.job_id is None:
        assert error.message == str(error)
    else:
        assert f"{error.message} (job_id={error.job_id})" == str(error)


def test_budget_error_message_is_built_from_its_fields() -> None:
    error = BudgetExceededError(job_id="j-1", spent=Decimal("9.50"), limit=Decimal(10), requested=Decimal(1))
    assert Decimal("9.50") == error.spent
    assert "spent 9.50" in error.message
    assert "limit 10" in error.message
    assert "stop spending" in error.message


def test_config_error_lists_one_line_per_problem() -> None:
    error = ConfigError(problems=("A: one", "B: two"))
    assert ("A: one", "B: two") == error.problems
    assert ["  - A: one", "  - B: two"] == error.message.splitlines()[1:]
    assert error.message.startswith("Invalid configuration (2 problems)")


def test_code_is_typed_str_and_always_set() -> None:
    error = ValidationError("too long")
    assert_type(error.code, str)
    assert "validation_error" == error.code


def test_code_can_be_overridden_per_instance() -> None:
    assert "audio_too_long" == ValidationError("too long", code="audio_too_long").code
    assert "validation_error" == ValidationError("too long").code


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (DatabaseUnavailableError, (DatabaseError, RetryableError)),
        (StorageUnavailableError, (StorageError, RetryableError)),
        (StorageNotFoundError, (StorageError, NotFoundError)),
        (CacheError, (RetryableError,)),
        (JobNotFoundError, (NotFoundError,)),
        (UserNotFoundError, (NotFoundError,)),
        (DatabaseTimeoutError, (DatabaseUnavailableError, RetryableError)),
        (TransactionTaskError, (DatabaseError,)),
    ],
)
def test_errors_branch_on_what_the_caller_does_next(
    cls: type[PipelineError], bases: tuple[type[PipelineError], ...]
) -> None:
    assert all(issubclass(cls, base) for base in bases)


def test_retryable_subclasses_keep_retry_after() -> None:
    assert 3.0 == StorageUnavailableError("down", retry_after=3.0).retry_after
    assert 1.5 == DatabaseUnavailableError("down", retry_after=1.5).retry_after
    assert CacheError("down").retry_after is None


def test_repr_shows_class_code_and_job() -> None:
    assert "ValidationError('bad', code='validation_error', job_id='j')" == repr(ValidationError("bad", job_id="j"))


def test_config_error_keeps_a_plain_message() -> None:
    """Before: a str was taken as a sequence of problems, one per character."""
    error = ConfigError("REDIS_URL is not reachable; start Redis")
    assert "REDIS_URL is not reachable; start Redis" == error.message
    assert () == error.problems


def test_a_sequence_as_the_message_is_refused() -> None:
    with pytest.raises(TypeError, match="first argument is the message"):
        ConfigError(["A: one"])  # type: ignore[arg-type]  # the old form, refused by mypy and at run time


def test_unknown_context_is_refused() -> None:
    with pytest.raises(TypeError, match="unexpected keyword arguments: colour"):
        ValidationError("bad", colour="red")  # type: ignore[call-arg]  # the point of the test


def test_missing_required_context_is_refused() -> None:
    with pytest.raises(TypeError, match="'limit'"):
        BudgetExceededError(job_id="j", spent=Decimal(1))  # type: ignore[call-arg]  # the point of the test


def test_a_class_without_a_built_message_needs_one() -> None:
    with pytest.raises(TypeError, match="needs a message"):
        ValidationError()


def test_context_is_set_as_typed_attributes() -> None:
    error = StorageUnavailableError("down", bucket="clips", status=503, retry_after=2.5)
    assert ("clips", None, 503, 2.5) == (error.bucket, error.path, error.status, error.retry_after)
    assert "storage_unavailable" == error.code


def test_every_class_in_the_package_is_drawn_in_the_tree() -> None:
    """errors.py's docstring draws every class, LifecycleError and NotWiredError included."""
    import shared.lifecycle  # noqa: PLC0415 - the classes other modules re-export
    import shared.wiring  # noqa: PLC0415

    assert shared.lifecycle.LifecycleError is LifecycleError
    assert shared.wiring.NotWiredError is NotWiredError
    doc = errors.__doc__ or ""
    missing = [cls.__name__ for cls in ERROR_CLASSES if f" {cls.__name__} " not in doc]
    assert [] == missing


def test_every_error_class_of_the_package_lives_in_the_one_tree() -> None:
    """No module defines an error of its own: each is in shared.errors (other modules may re-export it)."""
    for info in pkgutil.walk_packages(shared.__path__, "shared."):
        if not info.name.endswith("__main__"):  # it runs the command line
            importlib.import_module(info.name)
    stack: list[type[PipelineError]] = [PipelineError]
    found: set[type[PipelineError]] = set()
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub.__module__.startswith("shared") and sub not in found:
                found.add(sub)
                stack.append(sub)
    elsewhere = sorted(f"{cls.__module__}.{cls.__name__}" for cls in found if cls.__module__ != "shared.errors")
    assert [] == elsewhere
    assert found <= set(ERROR_CLASSES)


def test_subclasses_share_one_constructor() -> None:
    """One shape: no class in the tree writes its own __init__."""
    own = [cls.__name__ for cls in ERROR_CLASSES if cls is not PipelineError and "__init__" in vars(cls)]
    assert [] == own
