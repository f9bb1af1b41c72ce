"""The fake provider and the worker processes of the saturation test (importable, run with ``python -m``).

``fake``: an OpenAI-like chat endpoint on loopback: 40-120 ms latency, usage fields like the real answers, its
own limits (requests per second and minute, tokens per minute, concurrency) answered with 429 + Retry-After when
passed, and a 503 + Retry-After for 1 % of calls. Its windows are 5 % shorter than the limiter's, the jitter
between the limiter's grant and the call's arrival. It appends one JSON line per call to its log.

``worker``: a container on the test's Redis and database, ``tasks`` coroutines calling the fake through
``PaidCalls.admit`` for ``seconds``; one JSON line per admitted call (the limiter's clock) and per refusal.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import sys
import time
import uuid
from typing import Any

import httpx

RPS, RPM, TPM, CONCURRENCY = 8, 240, 48_000, 4
ESTIMATE = {"input_tokens": 150, "output_tokens": 50}


async def fake(port: int, log_path: str) -> None:
    calls: collections.deque[tuple[float, int]] = collections.deque()
    inflight = 0
    rng = random.Random(7)
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - one line per call, kept open for the run

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal inflight
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /health"):  # the workers' warm-up: not a call
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = json.loads(await reader.readexactly(length)) if length else {}
                now = time.time()
                while calls and calls[0][0] <= now - 57:
                    calls.popleft()
                prompt, completion = 100 + rng.randrange(50), 10 + rng.randrange(40)
                last_second = sum(1 for at, _ in calls if at > now - 0.95)
                tokens = sum(weight for _, weight in calls)
                status = 200
                if (
                    last_second >= RPS
                    or len(calls) >= RPM
                    or tokens + prompt + completion > TPM
                    or inflight >= CONCURRENCY
                ):
                    status = 429
                elif rng.random() < 0.01:
                    status = 503
                inflight += 1
                log.write(
                    json.dumps(
                        {
                            "at": now,
                            "status": status,
                            "inflight": inflight,
                            "id": body.get("id"),
                            "second": last_second,
                            "minute": len(calls),
                            "tokens": tokens,
                        }
                    )
                    + "\n"
                )
                try:
                    if status == 200:
                        calls.append((now, prompt + completion))
                        await asyncio.sleep(rng.uniform(0.04, 0.12))
                        payload = {
                            "id": "chatcmpl-" + uuid.uuid4().hex,
                            "object": "chat.completion",
                            "model": "gpt-4o-mini-2024-07-18",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                            "usage": {
                                "prompt_tokens": prompt,
                                "completion_tokens": completion,
                                "total_tokens": prompt + completion,
                                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
                            },
                        }
                        text = json.dumps(payload).encode()
                        extra = b""
                    else:
                        text = b'{"error": {"message": "slow down"}}'
                        extra = b"retry-after: 1\r\n"
                finally:
                    inflight -= 1
                reason = {200: b"OK", 429: b"Too Many Requests", 503: b"Service Unavailable"}[status]
                writer.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
                    % (status, reason, len(text), extra, text)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def worker(config: dict[str, Any]) -> None:
    import containers  # noqa: PLC0415 - a spawned process builds its own container
    from shared.config import RateLimits, Settings  # noqa: PLC0415
    from shared.errors import RetryableError  # noqa: PLC0415
    from shared.lifecycle import lifespan  # noqa: PLC0415
    from shared.models import StageName  # noqa: PLC0415
    from shared.paid import RateLimiterUnavailableError  # noqa: PLC0415

    settings = Settings(
        _env_file=None,
        environment="development",
        log_level="WARNING",
        log_console=False,
        database_url=config["dsn"],
        redis_url=config["redis"],
        redis_operation_timeout_seconds=1.0,
        # This machine's grant-to-arrival jitter under load (2 cores, many processes) reaches 200 ms.
        paid_rate_margin_seconds=0.3,
        paid_limits={"openai/gpt-4o-mini": RateLimits(rpm=RPM, tpm=TPM, rps=RPS, concurrency=CONCURRENCY)},
        paid_admission_max_wait_seconds=5.0,
    )
    instance = containers.Container()
    instance.settings.override(settings)
    job = uuid.UUID(config["job"])
    out = open(config["out"], "a", buffering=1)  # noqa: SIM115 - one line per event
    deadline = time.monotonic() + config["seconds"]
    async with lifespan(instance), httpx.AsyncClient(base_url=config["fake"], timeout=10) as http:
        paid = instance.paid_calls()
        paid.catalogue.price("openai", "gpt-4o-mini", ESTIMATE)  # the price table loaded before the clock runs
        await asyncio.gather(*(http.get("/health") for _ in range(config["tasks"])))  # connections open

        async def loop() -> None:
            while time.monotonic() < deadline:
                try:
                    async with paid.admit(
                        job,
                        StageName.PROMPT_GENERATION,
                        provider="openai",
                        model="gpt-4o-mini",
                        estimate=ESTIMATE,
                        api_key="sk-saturation",
                    ) as call:
                        out.write(
                            json.dumps({"granted": call.granted_at_ms, "tokens": 200, "id": call.grant.request_id})
                            + "\n"
                        )
                        response = await http.post("/v1/chat/completions", json={"id": call.grant.request_id})
                        response.raise_for_status()
                        cost = await call.settle_openai(response.json())
                        released = time.time()
                        out.write(json.dumps({"cost": str(cost.cost), "released": released}) + "\n")
                except RateLimiterUnavailableError as error:
                    out.write(json.dumps({"down": time.time(), "cause": repr(error.__cause__)}) + "\n")
                    await asyncio.sleep(0.2)
                except RetryableError as error:
                    out.write(json.dumps({"refused": error.code, "at": time.time()}) + "\n")
                    await asyncio.sleep(min(error.retry_after or 0.1, 1.0))
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(loop() for _ in range(config["tasks"])))


async def hold_and_die(config: dict[str, Any]) -> None:
    """Admit one call and hang in it until killed (the test sends SIGKILL): nothing is given back by this process."""
    import containers  # noqa: PLC0415 - a spawned process builds its own container
    from shared.config import RateLimits, Settings  # noqa: PLC0415
    from shared.lifecycle import lifespan  # noqa: PLC0415
    from shared.models import StageName  # noqa: PLC0415

    settings = Settings(
        _env_file=None,
        environment="development",
        log_console=False,
        database_url=config["dsn"],
        redis_url=config["redis"],
        paid_key_prefix=config["prefix"],
        paid_concurrency_lease_seconds=1.0,
        reservation_ttl_seconds=2,
        paid_limits={"openai/gpt-4o-mini": RateLimits(concurrency=1)},
    )
    instance = containers.Container()
    instance.settings.override(settings)
    async with lifespan(instance):
        paid = instance.paid_calls()
        async with paid.admit(
            uuid.UUID(config["job"]),
            StageName.PROMPT_GENERATION,
            provider="openai",
            model="gpt-4o-mini",
            estimate=ESTIMATE,
            api_key="sk-dies",
        ):
            sys.stdout.write("admitted\n")
            sys.stdout.flush()
            await asyncio.sleep(3600)


if __name__ == "__main__":
    if sys.argv[1] == "fake":
        asyncio.run(fake(int(sys.argv[2]), sys.argv[3]))
    elif sys.argv[1] == "die":
        asyncio.run(hold_and_die(json.loads(sys.argv[2])))
    else:
        asyncio.run(worker(json.loads(sys.argv[2])))
