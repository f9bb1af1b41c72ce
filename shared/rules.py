"""The rules every implementation of a collaborator shares: the real classes and the fakes call these, never copies.

Amounts (:func:`to_money`, the one gate for every amount the API takes), names of stages and APIs, job input,
progress, page sizes and keyset cursors. A rule changed here changes for JobRepository and CostTracker and for
the fakes of ``shared.testing`` at once, so the contract suites cannot pass on one and fail on the other.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from decimal import ROUND_CEILING, Context, Decimal, InvalidOperation
from typing import TYPE_CHECKING
from uuid import UUID

from shared._container_only import container_only
from shared.errors import StageConflictError, ValidationError
from shared.models import JobStage, StageName, StageStatus

__all__ = [
    "MoneyLike",
    "call_token",
    "check_cursor",
    "check_job_input",
    "check_names",
    "check_page_limit",
    "check_progress",
    "check_stage_finish",
    "check_stage_start",
    "check_text",
    "to_money",
]

MoneyLike = Decimal | int | str | float
"""What an amount may be passed as; :func:`to_money` turns it into the ledger's Decimal or refuses it.

Not the money a model holds: that is :data:`shared.models.Money`-typed fields, always ``Decimal``."""

if TYPE_CHECKING:
    Money = MoneyLike  # deprecated in 0.2.0 (it shared a name with the models' Money): use MoneyLike
else:
    __getattr__ = container_only("shared.rules", {}, moved={"Money": ("shared.rules.MoneyLike", MoneyLike)})

_CENT_FRACTION = Decimal("0.0001")
_MAX_MONEY = Decimal("99999999.9999")  # numeric(12, 4)
# Wide enough to quantize anything up to _MAX_MONEY exactly, whatever context the calling thread has set.
_MONEY_CONTEXT = Context(prec=40, rounding=ROUND_CEILING, traps=[InvalidOperation])
_SHOWN = 40  # characters of a refused value quoted in the message
_MAX_MONEY_BITS = 64  # far above _MAX_MONEY as an int; checked before an int is written out
_MAX_TEXT = 1000  # an amount written as text is a few dozen characters at most


def to_money(value: object, *, field: str = "cost") -> Decimal:
    """Return ``value`` as Decimal money (4 places, rounded up so a budget is never under-counted).

    The one gate for every amount the API takes: a Decimal, an int, a numeric string or a float (read through
    its shortest repr, so 0.1 is 0.1 and not the binary noise of the float).

    Raises:
        ValidationError: not one of those types (bool included), not a number, NaN, infinite, negative, or more
            than numeric(12,4) holds.
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str | float):
        msg = f"{field} must be a Decimal, int, str or float amount of dollars, got {type(value).__name__}"
        raise ValidationError(msg, field=field)
    if isinstance(value, int) and value.bit_length() > _MAX_MONEY_BITS:
        # Before repr(): an int of more than 4300 digits cannot even be written out (a raw ValueError).
        raise ValidationError(
            f"{field} is an integer of about {int(value.bit_length() * 0.30103)} digits, more than the ledger holds "
            f"({_MAX_MONEY})",
            field=field,
        )
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        raise ValidationError(f"{field} is {len(value):,} characters long; write an amount such as '0.25'", field=field)
    shown = repr(value)[:_SHOWN]
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise ValidationError(f"{field} must be a number of dollars such as '0.25', got {shown}", field=field) from None
    if not amount.is_finite() or amount < 0:
        raise ValidationError(f"{field} must be a finite amount >= 0, got {shown}", field=field)
    # Compared before quantizing: quantize cannot hold a huge exponent (1e28 needs 33 digits at 4 places).
    if amount > _MAX_MONEY or (money := amount.quantize(_CENT_FRACTION, context=_MONEY_CONTEXT)) > _MAX_MONEY:
        raise ValidationError(f"{field} {shown} is more than the ledger holds ({_MAX_MONEY})", field=field)
    return money.copy_abs()  # -0 is 0


def check_names(stage_name: StageName | str, api_name: str, idempotency_key: str | None = None) -> StageName:
    """Return the stage as a StageName; refuse an unknown stage, an empty API name or a bad key."""
    try:
        stage = StageName(stage_name)
    except ValueError:
        known = ", ".join(StageName)
        raise ValidationError(f"unknown stage {stage_name!r}; expected one of {known}", field="stage_name") from None
    if not 1 <= len(api_name.strip()) <= 100:
        raise ValidationError("api_name must be 1-100 characters, such as 'openai' or 'replicate'", field="api_name")
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
        raise ValidationError("idempotency_key must be 1-200 characters", field="idempotency_key")
    return stage


def check_job_input(audio_url: str, user_prompt: str, budget_limit: Money | None) -> Decimal | None:
    """Refuse an empty audio URL or prompt; return the budget as money (see :func:`~shared.cost_tracking.to_money`)."""
    if not audio_url.strip():
        raise ValidationError("audio_url is empty; pass the storage URL of the uploaded audio", field="audio_url")
    if not user_prompt.strip():
        raise ValidationError("user_prompt is empty; pass the user's prompt", field="user_prompt")
    return None if budget_limit is None else to_money(budget_limit, field="budget_limit")


def check_progress(progress: int, estimated_remaining: int | None) -> None:
    """Refuse progress outside 0-100 and a negative time remaining."""
    if isinstance(progress, bool) or not 0 <= progress <= 100:
        raise ValidationError(f"progress must be 0-100, got {progress}", field="progress")
    if estimated_remaining is not None and (estimated_remaining < 0 or not math.isfinite(estimated_remaining)):
        raise ValidationError(f"estimated_remaining must be >= 0 seconds, got {estimated_remaining}", field="progress")


def check_page_limit(limit: int) -> None:
    """Refuse a page size outside 1-1000."""
    if not 1 <= limit <= 1000:
        raise ValidationError(f"limit must be 1-1000, got {limit}", field="limit")


def check_cursor(at: datetime | None, at_id: UUID | None, *, name: str) -> None:
    """Refuse a keyset cursor with an id but no time: the next page starts after the last row's (time, id)."""
    if at_id is not None and at is None:
        msg = f"{name}_id needs {name}: pass the last row's created_at as {name} and its id as {name}_id together"
        raise ValidationError(msg, field=f"{name}_id")


def check_text(value: str, field: str) -> None:
    """Refuse an empty message or URL."""
    if not value.strip():
        raise ValidationError(f"{field} is empty", field=field)


def _holder(current: JobStage) -> str:
    when = current.completed_at if current.completed_at is not None else current.started_at
    verb = "finished" if current.completed_at is not None else "started"
    return f"{current.worker or 'another caller'} ({verb} {when.isoformat()})"


def check_stage_start(current: JobStage | None, worker: str | None) -> bool:
    """Decide whether ``start_stage`` may (re)start a stage: True to write it, False when it is already ours.

    A stage starts when it has no row or its last run failed. A completed stage is never reopened (a
    redelivered message must not redo paid work), and a running one belongs to whoever started it: the same
    ``worker`` calling again is a retried call (False: return the row as it is), anyone else loses the race with
    a :class:`StageConflictError` that names the winner.
    """
    if current is None or current.status is StageStatus.FAILED:
        return True
    if current.status is StageStatus.RUNNING and worker is not None and current.worker == worker:
        return False
    raise StageConflictError(
        stage=current.stage_name.value,
        current=current.status.value,
        requested=StageStatus.RUNNING.value,
        winner=_holder(current),
        job_id=current.job_id,
    )


def check_stage_finish(
    current: JobStage, status: StageStatus, metadata: dict[str, object], worker: str | None
) -> JobStage:
    """Return ``current`` when finishing it again is a retried call; raise why the move is refused otherwise.

    Called when the one-statement move found no running stage of ``worker`` (or of anyone, without one). The
    same move with the same metadata is a retried call; a different result, another worker's stage or a stage
    the failed job stopped loses with a :class:`StageConflictError` that names the winner, so no result is
    silently dropped.
    """
    same = current.status is status and all(current.metadata.get(k) == v for k, v in metadata.items())
    if same and (worker is None or current.worker in (None, worker)):
        return current
    raise StageConflictError(
        stage=current.stage_name.value,
        current=current.status.value,
        requested=status.value,
        winner=_holder(current),
        job_id=current.job_id,
    )


def call_token() -> str:
    """Return the holder name of a start_stage call without a worker: a resent call carries it, another does not."""
    return f"call {uuid.uuid4()}"
