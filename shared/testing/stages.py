"""Run a module's stage handlers on the fakes, as a worker would, without PostgreSQL or a worker process.

::

    run = await run_stage(stages, "scene_planning", container=fake_container, job_id=job.id, payload={...})
    assert 2 == run.attempts                     # a RetryableError ran it again, as the engine's policy does
    assert {"plan_url": ...} == run.result

:func:`run_stage` gives the handler a :class:`~shared.stages.StageContext` whose checkpoints, results and queued
``then`` stages live in memory, whose progress goes to the container's job store, and whose ``ctx.container`` and
``ctx.paid`` are the container's (on ``fake_container``: the fake ledger and :class:`FakeRateLimiter`). The
failure policy is the worker's: a :class:`~shared.errors.RetryableError` or an unexpected exception runs the item
again (at once: no delay in tests) until ``max_attempts``, keeping its checkpoints; any other
:class:`~shared.errors.PipelineError` stops it. The last error is raised, and the job is failed with the message
the worker would write. :class:`FakeStageQueue` records what a route or a handler submits.

What only the engine does (claims fenced on the attempt, heartbeats, a dead worker's re-run, fan-in across
workers) is tested on the real database: ``python -m shared worker`` or :class:`~shared.stages.StageWorker`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from shared.errors import ConfigError, PipelineError, RetryableError
from shared.models import StageName
from shared.stages import StageContext, Stages, _Services, submitted_items
from shared.testing.no_database import NoDatabase

if TYPE_CHECKING:
    from shared.container import Container

__all__ = ["FakeStageQueue", "StageRun", "Submitted", "run_stage"]

T = TypeVar("T")
_log = logging.getLogger("shared.testing.stages")


@dataclass
class StageRun:
    """What one item did across its attempts: its result, checkpoints and the stages it queued with ``ctx.then``."""

    stage: str
    item: str
    run_id: UUID = field(default_factory=uuid.uuid4)
    attempts: int = 0
    result: Mapping[str, Any] | None = None
    checkpoints: dict[str, Any] = field(default_factory=dict)
    queued: list[Submitted] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Submitted:
    """One submit: the job, the stage, its items by key (``""`` for a single item) and its ``then`` stage."""

    job_id: UUID
    stage: str
    items: dict[str, Mapping[str, Any]]
    then: str | None = None
    then_payload: Mapping[str, Any] | None = None


class FakeStageQueue:
    """Records submits and cancellations in memory (:class:`~shared.stages.StageQueue` on the fakes)."""

    def __init__(self) -> None:
        self.submitted: list[Submitted] = []
        self.cancelled: dict[UUID, str] = {}

    async def submit(
        self,
        job_id: UUID,
        stage: str,
        *,
        payload: Mapping[str, Any] | None = None,
        items: Mapping[str, Mapping[str, Any]] | None = None,
        then: str | None = None,
        then_payload: Mapping[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> list[UUID]:
        """Record the items (a resent submit of the same items adds nothing, as in the database)."""
        chosen = submitted_items(job_id, stage, payload=payload, items=items, max_attempts=max_attempts)
        known = {(s.job_id, s.stage, key) for s in self.submitted for key in s.items}
        new = {key: value for key, value in chosen.items() if (job_id, stage, key) not in known}
        if new:
            self.submitted.append(Submitted(job_id, stage, new, then, then_payload))
        return [uuid.uuid4() for _ in new]

    async def cancel_job(self, job_id: UUID, reason: str) -> None:
        """Record that the job was cancelled with ``reason``."""
        self.cancelled[job_id] = reason


class _MemoryContext(StageContext):
    """A StageContext whose effects live in memory (its ``db`` is a NoDatabase: a query raises)."""

    def __init__(
        self, run: StageRun, job_id: UUID, payload: Mapping[str, Any], results: Mapping[str, Any], services: _Services
    ) -> None:
        row = {
            "id": run.run_id,
            "job_id": job_id,
            "stage": run.stage,
            "item": run.item,
            "attempt": run.attempts,
            "attempt_id": uuid.uuid4(),
            "payload": dict(payload),
        }
        super().__init__(NoDatabase(), row, services)  # type: ignore[arg-type]  # the fakes' stand-in for the pool
        self._run = run
        self._results = results

    # The checkpoints (and the paid calls' marks) live in the run: the worker's logic runs on top of these.
    async def _kept(self, name: str) -> Any:
        return self._run.checkpoints.get(name)

    async def _keep(self, name: str, value: Any) -> bool:
        self._run.checkpoints.setdefault(name, value)
        return True

    async def _mark(self, name: str, value: Mapping[str, Any], *, drop: str | None = None) -> None:
        self._run.checkpoints[name] = dict(value)
        if drop is not None:
            self._run.checkpoints.pop(drop, None)

    async def progress(self, percent: int) -> None:
        await self.container.jobs().update_progress(self.job_id, _stage_name(self.stage), percent)

    async def results(self, stage: str) -> dict[str, Any]:
        return dict(self._results.get(stage, {}))


def _stage_name(stage: str) -> StageName:
    try:
        return StageName(stage)
    except ValueError:
        msg = f"stage {stage!r} is not one of the pipeline's stages ({', '.join(StageName)}); name it after one"
        raise ConfigError(msg) from None


async def run_stage(
    stages: Stages,
    stage: str,
    *,
    container: Container,
    job_id: UUID,
    payload: Mapping[str, Any] | None = None,
    item: str = "",
    results: Mapping[str, Mapping[str, Any]] | None = None,
    max_attempts: int | None = None,
) -> StageRun:
    """Run ``stage``'s handler for one item under the worker's failure policy; return what it did.

    ``results`` stands for the earlier stages' completed items (``ctx.results(stage)``), by stage and item.
    ``max_attempts`` defaults to the handler's own.

    Raises:
        ConfigError: ``stages`` has no handler for ``stage``.
        PipelineError: the handler's error once no attempt is left (the job is failed with it first).
    """
    spec = stages.handlers.get(stage)
    if spec is None:
        msg = f"no handler for stage {stage!r}; the module declares {sorted(stages.handlers)}"
        raise ConfigError(msg)
    limit = max_attempts if max_attempts is not None else spec.max_attempts
    run = StageRun(stage, item)
    services = _Services(container)
    while True:
        run.attempts += 1
        ctx = _MemoryContext(run, job_id, payload or {}, results or {}, services)
        try:
            run.result = dict(await spec.run(ctx) or {})
        except RetryableError as exc:
            error: Exception = exc
        except PipelineError as exc:
            await _fail(container, job_id, stage, item, str(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - the worker's boundary: an unexpected error is retried
            _log.warning("stage %s item %r raised", stage, item, exc_info=True)
            error = exc
        else:
            run.queued = [Submitted(job_id, n.stage, n.items, n.then, n.then_payload) for n in ctx._next]
            return run
        if run.attempts >= limit:
            await _fail(container, job_id, stage, item, f"failed after {run.attempts} attempts: {error}")
            raise error


async def _fail(container: Container, job_id: UUID, stage: str, item: str, reason: str) -> None:
    message = f"stage {stage}" + (f" item {item}" if item else "") + f": {reason}"
    jobs = container.jobs()
    if not (await jobs.get_job(job_id)).status.is_final:  # as the worker's cancel_job: only a job still running
        await jobs.fail_job(job_id, message[:1000])
