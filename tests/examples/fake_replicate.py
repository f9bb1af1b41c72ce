"""A Replicate-like provider on loopback for the clip example's test.

``python -m tests.examples.fake_replicate PORT LOG``

It answers as Replicate's HTTP API does, with the parts the example reads:

- ``POST /v1/models/{owner}/{name}/predictions`` -> 201 and a prediction ``{"id", "status": "starting"}``; a 429
  with ``Retry-After: 1`` for 1 call in 8 (and when ``CONCURRENCY`` predictions already run), a 503 with
  ``Retry-After: 1`` for 1 in 16;
- ``GET /v1/predictions/{id}`` -> ``processing`` until its run time has passed, then ``succeeded`` with
  ``output`` (a file URL here) and ``metrics.predict_time`` (the seconds Replicate bills, 20-40 s reported for a
  0.3-0.8 s real wait); a 503 for 1 poll in 40;
- ``GET /files/{id}.mp4`` -> the clip's bytes.

Every created prediction is billed: one JSON line per event in LOG (``create``, ``refuse``, ``poll``), so the test
counts what the provider really charged against the ledger.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid

CONCURRENCY = 6
_REASONS = {200: b"OK", 201: b"Created", 404: b"Not Found", 429: b"Too Many Requests", 503: b"Service Unavailable"}


async def serve(port: int, log_path: str, seed: int = 7) -> None:
    rng = random.Random(seed)
    # id -> (the public prediction, when it finishes on the monotonic clock, the seconds it bills)
    predictions: dict[str, tuple[dict[str, object], float, float]] = {}
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - one line per event, kept open for the run

    def record(**event: object) -> None:
        log.write(json.dumps({"at": time.time(), **event}) + "\n")

    def running() -> int:
        now = time.monotonic()
        return sum(1 for _, done_at, _ in predictions.values() if done_at > now)

    def answer(path: str, method: str, body: dict[str, object], base: str) -> tuple[int, dict[str, object] | bytes]:
        if method == "POST" and path.startswith("/v1/models/") and path.endswith("/predictions"):
            model = path.removeprefix("/v1/models/").removesuffix("/predictions")
            draw = rng.random()
            if draw < 1 / 8 or running() >= CONCURRENCY:
                record(event="refuse", status=429, path=path, running=running())
                return 429, {"detail": "Request was throttled."}
            if draw < 1 / 8 + 1 / 16:
                record(event="refuse", status=503, path=path)
                return 503, {"detail": "Service Unavailable"}
            prediction_id = uuid.uuid4().hex[:26]
            predict_time = round(rng.uniform(20, 40), 3)
            public = {"id": prediction_id, "model": model, "input": body.get("input", {})}
            predictions[prediction_id] = (public, time.monotonic() + rng.uniform(0.3, 0.8), predict_time)
            record(event="create", id=prediction_id, input=public["input"], predict_time=predict_time)
            return 201, {**public, "status": "starting"}
        if method == "GET" and path.startswith("/v1/predictions/"):
            found = predictions.get(path.rsplit("/", 1)[1])
            if found is None:
                return 404, {"detail": "Not found."}
            if rng.random() < 1 / 40:
                record(event="refuse", status=503, path=path)
                return 503, {"detail": "Service Unavailable"}
            public, done_at, predict_time = found
            if time.monotonic() < done_at:
                return 200, {**public, "status": "processing", "metrics": {}}
            record(event="poll", id=public["id"], status="succeeded")
            return 200, {
                **public,
                "status": "succeeded",
                "output": f"{base}/files/{public['id']}.mp4",
                "metrics": {"predict_time": predict_time},
            }
        if method == "GET" and path.startswith("/files/"):
            return 200, f"clip {path.removeprefix('/files/')}".encode()
        return 404, {"detail": "Not found."}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = json.loads(await reader.readexactly(length)) if length else {}
                status, payload = answer(path, method, body, f"http://127.0.0.1:{port}")
                text = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                kind = b"video/mp4" if isinstance(payload, bytes) else b"application/json"
                extra = b"retry-after: 1\r\n" if status in (429, 503) else b""
                writer.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n%s"
                    % (status, _REASONS[status], kind, len(text), extra, text)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
