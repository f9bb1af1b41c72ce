"""Register the fixture modules; each area keeps its fixtures in tests/fixtures/<area>.py."""

pytest_plugins = [
    "tests.fixtures.core",
    "tests.fixtures.postgres",
    "tests.fixtures.redis",
    "tests.fixtures.storage",
    "tests.fixtures.audio",
    "tests.fixtures.jwks",
    "tests.fixtures.proxy",
    "tests.fixtures.latency",
    "tests.fixtures.hygiene",
]
# shared.testing.fixtures (the kit module authors use) comes from its pytest11 entry point, as in a consumer.
