"""Every public module declares ``__all__``, every name in it exists, and the documented import paths hold."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import shared

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(shared.__path__, prefix="shared.")
    if not info.name.rsplit(".", 1)[-1].startswith("_") or info.name.endswith("__init__")
)

# The import paths the README promises module authors; removing one of these names breaks them.
PROMISED = {
    "shared.config": {"Settings"},
    "shared.errors": {"PipelineError", "RetryableError", "ValidationError", "BudgetExceededError", "ConfigError"},
    "shared.logging": {"LoggerFactory", "get_logger", "job_context"},
    "shared.retry": {"RetryPolicy", "retry_with_backoff"},
    "shared.database": {"DatabaseClient", "init_database"},
    "shared.jobs": {"JobRepository", "JobStore"},
    "shared.cost_tracking": {"CostTracker", "CostLedger"},
    "shared.models": {"Job", "JobStage", "JobCost", "AudioAnalysis", "ScenePlan", "Clips", "VideoOutput"},
    "shared.lifecycle": {"lifespan"},
    "shared.wiring": {"inject", "Provide"},
    "shared.paid": {"PaidCalls", "PriceCatalogue", "RateLimiter", "provider_error", "parse_retry_after"},
}


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_all_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    public = getattr(module, "__all__", None)
    assert public is not None, f"{name} has no __all__"
    missing = [item for item in public if not hasattr(module, item)]
    assert [] == missing
    assert len(set(public)) == len(public)


@pytest.mark.parametrize(("name", "names"), sorted(PROMISED.items()))
def test_promised_names_are_exported(name: str, names: set[str]) -> None:
    assert names <= set(importlib.import_module(name).__all__)
