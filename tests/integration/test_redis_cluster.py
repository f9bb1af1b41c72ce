"""REDIS_URL pointing at a Redis Cluster: every cache operation across slots, and outages still read as misses.

The cluster is three masters of this test's own (private redis-servers on loopback ports, stopped by PID).
Before: ``get_many`` sent one MGET, which a cluster refuses with CROSSSLOT once its keys fall in different slots.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError

from shared.redis_client import RedisClient, init_redis
from tests.fixtures.core import MakeSettings
from tests.fixtures.redis import RedisServer
from tests.fixtures.servers import free_port

KEYS = [f"clip:{i}" for i in range(60)]  # CRC16 spreads these over all three masters


@dataclass
class Cluster:
    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return self.nodes[0].url


def _cluster_port() -> int:
    """Return a free port whose cluster-bus port (the port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port + 10000)) != 0:
                return port


def _wait_until_ok(nodes: list[RedisServer]) -> None:
    """Wait until every node reports cluster_state:ok (the masters have agreed on the slots)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = [
            subprocess.run(
                ["redis-cli", "-p", str(node.port), "cluster", "info"], capture_output=True, text=True, check=False
            ).stdout
            for node in nodes
        ]
        if all("cluster_state:ok" in state for state in states):
            return
        time.sleep(0.1)
    raise AssertionError("the private cluster did not reach cluster_state:ok in 60 s")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """Start three cluster-enabled redis-servers, join them as three masters; kill them all afterwards."""
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is needed to build the test cluster (make system-deps)")
    nodes: list[RedisServer] = []
    try:
        for _ in range(3):
            folder = Path(tempfile.mkdtemp(prefix="vg-redis-cluster-"))
            node = RedisServer(
                _cluster_port(),
                folder,
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "500",
                ),
            )
            node.start()
            nodes.append(node)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        _wait_until_ok(nodes)
        yield Cluster(nodes)
    finally:
        for node in nodes:
            node.kill()
            shutil.rmtree(node.folder, ignore_errors=True)


@pytest.fixture
async def cluster_cache(cluster: Cluster, make_settings: MakeSettings) -> AsyncIterator[RedisClient]:
    settings = make_settings(redis_url=cluster.url, redis_cluster=True, redis_operation_timeout_seconds=1.0)
    async for client in init_redis(settings):
        yield client


async def _owner(cluster: Cluster, cache: RedisClient, key: str) -> RedisServer:
    raw = cache.raw
    assert isinstance(raw, RedisCluster)
    node = raw.get_node_from_key(f"videogen:cache:{key}")
    assert node is not None
    return next(server for server in cluster.nodes if server.port == int(node.port))


async def test_the_keys_of_the_test_fall_on_every_master(cluster: Cluster, cluster_cache: RedisClient) -> None:
    assert await cluster_cache.set(KEYS[0], b"v")  # the first call learns the slots
    owners = {(await _owner(cluster, cluster_cache, key)).port for key in KEYS}
    assert {node.port for node in cluster.nodes} == owners


async def test_every_operation_works_across_slots(cluster_cache: RedisClient) -> None:
    assert await cluster_cache.set_many({key: key.encode() for key in KEYS})
    assert {key: key.encode() for key in KEYS} == await cluster_cache.get_many(KEYS)
    assert await cluster_cache.set("one", b"1", ttl=60)
    assert b"1" == await cluster_cache.get("one")
    assert await cluster_cache.exists("one")
    assert await cluster_cache.set_json("doc", {"a": [1, 2]})
    assert {"a": [1, 2]} == await cluster_cache.get_json("doc")
    assert len(KEYS) + 2 == await cluster_cache.delete(*KEYS, "one", "doc", "never-set")
    assert dict.fromkeys(KEYS) == await cluster_cache.get_many(KEYS)
    assert ("redis", "ok") == ((health := await cluster_cache.health_check()).name, health.status)
    assert cluster_cache.available


async def test_a_killed_master_means_misses_not_exceptions(cluster: Cluster, cluster_cache: RedisClient) -> None:
    assert await cluster_cache.set_many(dict.fromkeys(KEYS, b"v"))
    victim = await _owner(cluster, cluster_cache, KEYS[0])
    victim.kill()
    assert await cluster_cache.get(KEYS[0]) is None
    values = await cluster_cache.get_many(KEYS)
    assert None is values[KEYS[0]]
    assert not await cluster_cache.set(KEYS[0], b"again")
    assert 0 == await cluster_cache.delete(KEYS[0])  # skipped, as every call during the outage
    assert not cluster_cache.available


async def test_a_frozen_master_means_misses_then_hits_once_it_thaws(
    cluster: Cluster, cluster_cache: RedisClient
) -> None:
    assert await cluster_cache.set(KEYS[0], b"v")
    victim = await _owner(cluster, cluster_cache, KEYS[0])
    victim.freeze()
    try:
        assert await cluster_cache.get(KEYS[0]) is None
        assert not cluster_cache.available
    finally:
        victim.thaw()
    for _ in range(100):  # recovers by itself once the node answers again
        if await cluster_cache.get(KEYS[0]) == b"v":
            break
        await asyncio.sleep(0.1)
    assert b"v" == await cluster_cache.get(KEYS[0])
    assert cluster_cache.available


async def test_a_fresh_client_takes_a_burst_of_tasks(cluster: Cluster, make_settings: MakeSettings) -> None:
    """Before: the first burst of 64 tasks on a new client raised redis-py's AttributeError to a caller.

    redis-py's cluster client, used by many tasks before it knows the slots, handed one a connection that
    another was resetting ('NoneType' object has no attribute 'writelines'); it happened to one fresh client
    in two or three here, so five are tried.
    """
    settings = make_settings(redis_url=cluster.url, redis_cluster=True, redis_max_connections=64)
    for _ in range(5):
        async for client in init_redis(settings):
            stored = await asyncio.gather(*(client.set(f"burst:{i}", b"x" * 10_000) for i in range(64)))
            assert [True] * 64 == stored
            assert client.available


async def test_a_plain_client_on_the_cluster_is_refused_across_slots(cluster: Cluster) -> None:
    """What the cluster client is for: a plain MGET across slots fails with CROSSSLOT."""
    raw = aioredis.Redis.from_url(cluster.url)
    try:
        with pytest.raises(ClusterCrossSlotError):
            await raw.mget(KEYS)
    finally:
        await raw.aclose()
