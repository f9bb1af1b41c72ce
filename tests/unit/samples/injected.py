"""A module wired to the real Container: the annotations that match and the ones that do not."""

from __future__ import annotations

from decimal import Decimal

from containers import Container
from shared.config import Settings
from shared.cost_tracking import CostLedger, CostTracker
from shared.database import DatabaseClient
from shared.jobs import JobStore
from shared.logging import LoggerFactory
from shared.wiring import Provide, inject


@inject
async def good(
    settings: Settings = Provide[Container.settings],
    db: DatabaseClient = Provide[Container.db],
    jobs: JobStore = Provide[Container.jobs],
    ledger: CostLedger = Provide[Container.cost_tracker],
    logs: LoggerFactory | None = Provide[Container.logger_factory],
) -> str:
    return type(settings).__name__ + type(db).__name__ + type(jobs).__name__ + type(ledger).__name__ + str(logs)


@inject
async def wrong_db(pool: int = Provide[Container.db]) -> int:
    return pool


class Stage:
    @inject
    def run(
        self, budget: Decimal = Provide[Container.cost_tracker], tracker: CostTracker = Provide[Container.cost_tracker]
    ) -> str:
        return f"{budget}{tracker}"
