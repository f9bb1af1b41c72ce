"""Start-up benchmark: the project's own share of an import, and the first call of each provider.

Every figure comes from fresh interpreters (subprocesses run from the repository's root), the median of
``BENCH_STARTUP_ROUNDS`` rounds (default 5), the contenders interleaved within each round.

1. Imports. In one interpreter: ``import dependency_injector.containers, pydantic_settings`` (the baseline:
   what any dependency-injector and pydantic-settings project pays), then ``import shared.container`` or the
   repository's ``import containers`` after them, then ``Container()``. The second figure is the project's
   own share (target: at most 0.1 s). dependency-injector's wiring imports FastAPI and werkzeug whenever they
   are installed, so ``containers`` is also measured with them hidden, as on a worker without FastAPI.
2. Providers. A container on local development settings (the machine's PostgreSQL, in a database of this
   run's own created and dropped here; its Redis under a key prefix of this run's own; SUPABASE_URL
   ``http://127.0.0.1:9`` and a dummy service key: building the Supabase client sends no request), in a
   fresh interpreter per provider: the time ``async with lifespan(container)`` takes to start, then the first
   call of that one provider. For the providers built on a heavy library, a second interpreter imports the
   library first, so the first call after it is our own share. The first resolution on a container that was
   not started (each Resource opened on demand) is reported too: that is what the issue's figures measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import redis.asyncio as redis_asyncio

from benchmarks._postgres import scratch_database

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("BENCH_STARTUP_ROUNDS", "5"))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SHARE_TARGET_SECONDS = 0.1
BASELINE = "import dependency_injector.containers, pydantic_settings"
HIDE_WEB = "import sys; sys.modules.update(fastapi=None, starlette=None, werkzeug=None)"

IMPORTS: dict[str, tuple[str, str]] = {  # label: (what runs first, untimed; the project's module)
    "`shared.container`": ("", "shared.container"),
    "`containers` (repository root)": ("", "containers"),
    "`containers`, without FastAPI (a worker)": (HIDE_WEB, "containers"),
}

IMPORT_CHILD = """
import time
{hide}
started = time.perf_counter()
{baseline}
baseline = time.perf_counter() - started
started = time.perf_counter()
import {module}
ours = time.perf_counter() - started
started = time.perf_counter()
{module}.Container()
build = time.perf_counter() - started
print(baseline, ours, build)
"""

# Every provider of the Container, and the third-party modules that its first call imports (when any).
PROVIDERS: dict[str, tuple[str, ...]] = {
    "settings": (),
    "logger_factory": (),
    "db": (),
    "redis": (),
    "jobs": (),
    "cost_tracker": (),
    "http_client": (),
    "supabase": ("supabase",),
    "storage_supabase": ("supabase",),
    "storage_local": (),
    "storage": (),
    "token_verifier": ("jwt",),
}

PROVIDER_CHILD = """
import asyncio, importlib, json, sys, time
mode, name, libraries = sys.argv[1], sys.argv[2], [lib for lib in sys.argv[3].split(",") if lib]
import containers
from dependency_injector import providers
from shared.config import Settings
from shared.lifecycle import lifespan, resolve, stop_resources

async def main():
    container = containers.Container()
    container.settings.override(providers.Singleton(Settings, _env_file=None))  # the environment only
    provider = getattr(container, name)
    figures = {}
    if mode == "unstarted":
        started = time.perf_counter()
        await resolve(provider)
        figures["first"] = time.perf_counter() - started
        await stop_resources(container)
    else:
        started = time.perf_counter()
        async with lifespan(container):
            figures["start"] = time.perf_counter() - started
            started = time.perf_counter()
            for library in libraries:
                importlib.import_module(library)
            figures["libraries"] = time.perf_counter() - started
            started = time.perf_counter()
            await resolve(provider)
            figures["first"] = time.perf_counter() - started
    print(json.dumps(figures))

asyncio.run(main())
"""


def _child(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter from the repository's root and return its last line of output."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"the child interpreter failed: {result.stderr.strip()[-2000:]}")
    return result.stdout.strip().splitlines()[-1]


def _imports() -> dict[str, list[tuple[float, float, float]]]:
    """Return each variant's (baseline, own share, Container()) per round, the variants interleaved."""
    codes = {
        label: IMPORT_CHILD.format(hide=hide, baseline=BASELINE, module=module)
        for label, (hide, module) in IMPORTS.items()
    }
    for code in codes.values():  # untimed: bytecode caches written, files in the page cache
        _child(code)
    results: dict[str, list[tuple[float, float, float]]] = {label: [] for label in codes}
    order = list(codes)
    for _ in range(ROUNDS):
        for label in order:
            baseline, ours, build = (float(part) for part in _child(codes[label]).split())
            results[label].append((baseline, ours, build))
        order.reverse()
    return results


ALONE_CHILD = """
import time
{hide}
started = time.perf_counter()
import shared.container
print(time.perf_counter() - started)
"""


def _container_alone() -> dict[str, list[float]]:
    """Return ``import shared.container`` first in a fresh interpreter, web frameworks installed and hidden."""
    codes = {"installed": ALONE_CHILD.format(hide=""), "hidden": ALONE_CHILD.format(hide=HIDE_WEB)}
    for code in codes.values():
        _child(code)
    results: dict[str, list[float]] = {label: [] for label in codes}
    order = list(codes)
    for _ in range(ROUNDS):
        for label in order:
            results[label].append(float(_child(codes[label])))
        order.reverse()
    return results


def _providers(env: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    """Return, per provider, every round's figures of the three kinds of child."""
    runs = [("started", name, "") for name in PROVIDERS]
    runs += [("started", name, ",".join(libraries)) for name, libraries in PROVIDERS.items() if libraries]
    runs += [("unstarted", name, "") for name in PROVIDERS]
    _child(PROVIDER_CHILD, "started", "supabase", "", env=env)  # untimed warm-up
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in PROVIDERS}
    for index in range(ROUNDS):
        for mode, name, libraries in runs if index % 2 == 0 else reversed(runs):
            kind = "unstarted" if mode == "unstarted" else ("split" if libraries else "cold")
            for key, value in json.loads(_child(PROVIDER_CHILD, mode, name, libraries, env=env)).items():
                figures[name].setdefault(f"{kind}.{key}", []).append(value)
    return figures


def _ms(values: list[float] | None) -> str:
    return "-" if not values else f"{statistics.median(values) * 1000:.1f}"


async def _delete_keys(prefix: str) -> None:
    client = redis_asyncio.Redis.from_url(REDIS_URL)
    try:
        found = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if found:
            await client.delete(*found)
    finally:
        await client.aclose()


async def _measure_providers() -> dict[str, dict[str, list[float]]]:
    prefix = f"bench:{uuid.uuid4().hex[:12]}:"
    with tempfile.TemporaryDirectory(prefix="vg-bench-startup-") as folder:
        async with scratch_database() as dsn:
            env = {
                **os.environ,
                "ENVIRONMENT": "development",
                "DATABASE_URL": dsn,
                "REDIS_URL": REDIS_URL,
                "REDIS_KEY_PREFIX": prefix,
                "REDIS_CLUSTER": "false",
                "SUPABASE_URL": "http://127.0.0.1:9",
                "SUPABASE_SERVICE_KEY": "sb_secret_" + "x" * 32,  # a dummy: nothing is sent
                "JWT_SECRET_KEY": "j" * 32,
                "STORAGE_BACKEND": "local",
                "STORAGE_LOCAL_ROOT": str(Path(folder) / "storage"),
                "LOG_CONSOLE": "false",
                "LOG_FILE": "",
            }
            try:
                return await asyncio.to_thread(_providers, env)
            finally:
                await _delete_keys(prefix)


def main() -> str:
    """Run the start-up measurements and return a Markdown report."""
    imports = _imports()
    container_alone = _container_alone()
    providers = asyncio.run(_measure_providers())
    rows = [
        f"| Import in a fresh interpreter (median of {ROUNDS}) | baseline s | then the project's module s "
        "| share / baseline | total / baseline | then `Container()` ms | share <= 0.1 s |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, rounds in imports.items():
        baseline, ours, build = (statistics.median(column) for column in zip(*rounds, strict=True))
        rows.append(
            f"| {label} | {baseline:.3f} | {ours:.3f} | {ours / baseline:.2f} | {(baseline + ours) / baseline:.2f} "
            f"| {build * 1000:.1f} | {'yes' if ours <= SHARE_TARGET_SECONDS else 'NO'} |"
        )
    installed, hidden = statistics.median(container_alone["installed"]), statistics.median(container_alone["hidden"])
    rows += [
        "",
        f"| `import shared.container` first, fresh interpreter (median of {ROUNDS}, interleaved) | s | / hidden |",
        "|---|---:|---:|",
        f"| FastAPI, Starlette, werkzeug installed | {installed:.3f} | {installed / hidden:.2f} (target <= 1.1) |",
        f"| hidden (a worker's environment) | {hidden:.3f} | |",
    ]
    starts = [value for figures in providers.values() for value in figures["cold.start"]]
    rows += [
        "",
        f"Baseline: `{BASELINE}` in the same interpreter, first.",
        "",
        f"`async with lifespan(container)` starts in {_ms(starts)} ms (median over every started child: it "
        "opens logger_factory, db, redis and http_client).",
        "",
        f"| First call of a provider (median of {ROUNDS} fresh interpreters) | started container ms "
        "| libraries it imports | those alone ms | then the first call ms (ours) | ours / first call "
        "| not started: first resolution ms |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, libraries in PROVIDERS.items():
        figures = providers[name]
        first = statistics.median(figures["cold.first"])
        if libraries:
            ours = statistics.median(figures["split.first"])
            alone = _ms(figures["split.libraries"])
            split = f"{', '.join(libraries)} | {alone} | {ours * 1000:.1f} | {ours / first:.2f}"
        else:
            split = "- | - | - | -"
        rows.append(f"| `{name}` | {first * 1000:.1f} | {split} | {_ms(figures['unstarted.first'])} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
