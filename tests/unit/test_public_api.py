"""Every public module declares ``__all__``, every name in it exists, and the documented import paths hold."""

from __future__ import annotations

import importlib
import importlib.util
import json
import pkgutil
from pathlib import Path
from types import ModuleType

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


def _public_api_script() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / ".ci" / "public_api.py"
    spec = importlib.util.spec_from_file_location("public_api_check", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_name_of_the_last_release_is_still_public_or_noted_in_the_changelog() -> None:
    """The CI check of public-API stability (.ci/public_api.py) against 0.1.0's recorded names."""
    script = _public_api_script()
    snapshot = json.loads((script.ROOT / ".ci" / "public_api" / "0.1.0.json").read_text(encoding="utf-8"))
    changelog = (script.ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert [] == script.missing_without_note(snapshot, script.public_names(), changelog)


def test_a_name_gone_without_a_note_fails_the_check_and_a_note_passes_it() -> None:
    script = _public_api_script()
    snapshot = {"shared.config": ["Settings", "load_settings"], "shared.gone": ["Thing"]}
    current = {"shared.config": ["Settings"]}
    silent = "## [0.2.0] - Unreleased\n\n### Added\n- `load_settings` mentioned in passing.\n\n## [0.1.0]\n"
    assert ["shared.config.load_settings", "shared.gone.Thing"] == script.missing_without_note(
        snapshot, current, silent
    )
    noted = (
        "## [0.2.0] - Unreleased\n\n### Removed\n- `shared.config.load_settings`: use `Settings()`.\n"
        "- `shared.gone`: its `Thing` moved to `shared.here`.\n\n## [0.1.0]\n### Removed\n"
    )
    assert [] == script.missing_without_note(snapshot, current, noted)
