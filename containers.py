"""The composition root: the only place that names concrete classes and wires them together.

Every collaborator is a provider of :class:`Container`; nothing is a module-level singleton. Start and stop
the resources with ``async with shared.lifecycle.lifespan(container):``. Importing this module stays
light: component modules (asyncpg, redis, httpx, supabase) load inside the resource functions, when first
resolved.
"""

from __future__ import annotations

from collections.abc import Iterator

from dependency_injector import containers, providers

from shared.config import Settings
from shared.logging import LoggerFactory

__all__ = ["Container"]


def init_logger_factory(settings: Settings) -> Iterator[LoggerFactory]:
    """Start the JSON log handlers for this process; stop them, flushing the queue, on shutdown."""
    factory = LoggerFactory(
        level=settings.log_level,
        secrets=settings.secret_values(),
        log_file=settings.log_file,
        max_bytes=settings.log_file_max_bytes,
        backup_count=settings.log_file_backup_count,
    )
    factory.start()
    try:
        yield factory
    finally:
        factory.stop()


class Container(containers.DeclarativeContainer):
    """Every collaborator of a pipeline module; override any of them with ``container.x.override(...)``."""

    settings = providers.Singleton(Settings)
    logger_factory = providers.Resource(init_logger_factory, settings=settings)

    # --- components: each area adds its resource function above and its providers below ---
