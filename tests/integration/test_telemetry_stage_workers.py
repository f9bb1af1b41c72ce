"""One trace across real ``python -m shared worker`` processes, their spans received over OTLP/HTTP.

The test process submits a fan-out of clip items inside a span (its spans to the SDK's in-memory exporter); two
real stage workers, each started as an operator starts one (``OTEL_ENABLED``, ``OTEL_EXPORTER_OTLP_ENDPOINT``),
run the items and the composition and export their spans over OTLP/HTTP to a receiver on a loopback port in
this test. The trace the test started holds the stage spans of both workers; every span of the stage run carries
the job's ``job_id`` and its ``stage``; every line the handlers logged carries the trace's ids.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import telemetry
from shared.database import DatabaseClient
from shared.jobs import JobRepository
from shared.stages import StageQueue
from tests.fixtures.core import MakeSettings
from tests.fixtures.postgres import MakeUser

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.integration.traced_stage_module"
ITEMS = 8


@dataclass(frozen=True)
class Received:
    """One span as a worker exported it."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _values(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        kind = pair.value.WhichOneof("value")
        found[pair.key] = getattr(pair.value, kind) if kind else None
    return found


class Receiver:
    """An OTLP/HTTP receiver on a loopback port: keeps every span posted to /v1/traces, accepts anything else."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                answer = b""
                if self.path == "/v1/traces":
                    receiver._keep(body)
                    answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _keep(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = _values(resource_spans.resource.attributes)
            for scope in resource_spans.scope_spans:
                with self._lock:
                    self.spans += [
                        Received(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes=_values(span.attributes),
                            resource=resource,
                        )
                        for span in scope.spans
                    ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def _start_workers(dsn: str, endpoint: str, folder: Path, count: int) -> list[subprocess.Popen[bytes]]:
    started: list[subprocess.Popen[bytes]] = []
    for index in range(count):
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "ENVIRONMENT": "development",
            "DATABASE_URL": dsn,
            "STAGE_HEARTBEAT_INTERVAL_SECONDS": "1",
            "LOG_FILE": str(folder / f"worker-{index}.jsonl"),
            "LOG_CONSOLE": "false",
            "OTEL_ENABLED": "true",
            "OTEL_SERVICE_NAME": "stage-worker",
            "OTEL_RESOURCE_ATTRIBUTES": f"worker.index={index}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_DB_SPANS": "statement",
            "OTEL_METRICS_DATABASE": "false",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        with (folder / f"worker-{index}.stderr").open("wb") as errors:
            started.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "shared",
                        "worker",
                        MODULE,
                        "--concurrency",
                        "1",
                        "--ready-file",
                        str(folder / f"ready-{index}"),
                    ],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                )
            )
    deadline = time.monotonic() + 90
    for index, process in enumerate(started):
        while not (folder / f"ready-{index}").exists():
            assert process.poll() is None, (folder / f"worker-{index}.stderr").read_text()[-3000:]
            assert time.monotonic() < deadline, "the stage workers did not become ready in 90 s"
            time.sleep(0.05)
    return started


def _stop(started: list[subprocess.Popen[bytes]]) -> list[int | None]:
    """SIGTERM each worker by its pid (it drains, then flushes its spans) and return the exit codes."""
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for process in started:
        try:
            codes.append(process.wait(timeout=60))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            codes.append(None)
    return codes


async def test_one_trace_spans_two_real_stage_workers_and_every_span_and_line_carries_its_ids(
    db: DatabaseClient,
    jobs: JobRepository,
    make_user: MakeUser,
    make_settings: MakeSettings,
    pg_dsn: str,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    job = (await jobs.create_job(user_id=await make_user(), audio_url="a.mp3", user_prompt="neon city")).id
    workers = _start_workers(pg_dsn, f"http://127.0.0.1:{receiver.port}", tmp_path, 2)
    try:
        exporter = InMemorySpanExporter()
        running = telemetry.configure(make_settings(otel_enabled=True), span_exporters=[exporter], simple=True)
        assert running is not None
        try:
            with telemetry.span("POST /jobs"):
                items: dict[str, dict[str, Any]] = {str(n): {} for n in range(ITEMS)}
                assert ITEMS == len(
                    await StageQueue(db).submit(job, "clip_generation", items=items, then="composition")
                )
        finally:
            running.shutdown()
        deadline = time.monotonic() + 120
        while not await db.fetchval(
            "select status = 'completed' from stage_runs where job_id = $1 and stage = 'composition'", job
        ):
            assert all(process.poll() is None for process in workers), "a stage worker died"
            assert time.monotonic() < deadline, "the composition did not complete in 120 s"
            await asyncio.sleep(0.1)
    finally:
        codes = _stop(workers)
    assert [0, 0] == codes

    (submit,) = exporter.get_finished_spans()
    trace_id, submit_id = format(submit.context.trace_id, "032x"), format(submit.context.span_id, "016x")
    in_trace = [span for span in receiver.spans if span.trace_id == trace_id]
    stage_spans = [span for span in in_trace if span.name.startswith("stage ")]
    clips = [span for span in stage_spans if span.name == "stage clip_generation"]
    (composition,) = [span for span in stage_spans if span.name == "stage composition"]

    # One trace: the submitter's span is the parent of every clip; the composition follows the last clip.
    assert ITEMS == len(clips)
    assert {submit_id} == {span.parent_id for span in clips}
    assert composition.parent_id in {span.span_id for span in clips}
    # ...across both worker processes (and the submitter: three processes in all).
    assert {0, 1} == {int(span.resource["worker.index"]) for span in clips}
    assert {"stage-worker"} == {span.resource["service.name"] for span in in_trace}

    # Every span of the stage run carries the job and its stage: the stage spans and those inside them.
    assert len(in_trace) > len(stage_spans)  # the statements' spans (OTEL_DB_SPANS=statement) are in it too
    by_id = {span.span_id: span for span in in_trace}

    def stage_of(span: Received) -> str:
        while not span.name.startswith("stage "):
            span = by_id[span.parent_id]
        return span.name.removeprefix("stage ")

    wrong = [
        (span.name, span.attributes.get("job_id"), span.attributes.get("stage"))
        for span in in_trace
        if span.attributes.get("job_id") != str(job) or span.attributes.get("stage") != stage_of(span)
    ]
    assert [] == wrong

    # Every line the handlers logged carries the trace's ids, and the span it was logged in.
    lines = [
        json.loads(line) for index in range(2) for line in (tmp_path / f"worker-{index}.jsonl").read_text().splitlines()
    ]
    handler_lines = [line for line in lines if line["logger"] == "tests.integration.traced_stage_module"]
    assert ITEMS + 1 == len(handler_lines)
    assert [] == [line for line in handler_lines if line.get("trace_id") != trace_id or line.get("job_id") != str(job)]
    stage_span_ids = {span.span_id for span in stage_spans}
    assert all(line["span_id"] in stage_span_ids for line in handler_lines)
    assert {line["stage"] for line in handler_lines} == {"clip_generation", "composition"}
    # No id is invented: every span id on a line of this job was exported by a worker.
    job_lines = [line for line in lines if line.get("job_id") == str(job) and "span_id" in line]
    assert {line["span_id"] for line in job_lines} <= {span.span_id for span in receiver.spans}
