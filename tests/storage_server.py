"""A local stand-in for the Supabase Storage API, so SupabaseStorage runs its real code paths over real HTTP.

It follows what the real service does (supabase/storage's routes, observed behaviour listed in issue 5):
routes under ``/storage/v1``; ``apikey`` and bearer headers checked; errors as HTTP 400 with a JSON body
whose ``statusCode`` is a string, beside a legacy ``error`` and a ``code`` (only a 500 keeps its status);
``x-upsert: true`` to replace; the multipart part's content type kept; signed URLs carrying a JWT-like
HS256 token with an expiry, answering 400 InvalidJWT when expired or tampered with; the TUS
create/PATCH/HEAD exchange of ``/upload/resumable``. Objects live on disk, so the server holds at most a
request's chunk in memory.

Faults are injected per request: an HTTP status (503 with Retry-After, 500, 429, any ERRORS code) or a
dropped connection (headers sent, then the connection closed mid-body).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ERRORS", "Bucket", "Fault", "StorageApiServer", "StorageState", "running_server"]

# Every error this server can send: code -> (HTTP status, body statusCode, legacy `error`, message).
ERRORS: dict[str, tuple[int, str, str, str]] = {
    "NoSuchKey": (400, "404", "not_found", "Object not found"),
    "NoSuchBucket": (400, "404", "Bucket not found", "Bucket not found"),
    "KeyAlreadyExists": (400, "409", "Duplicate", "The resource already exists"),
    "EntityTooLarge": (400, "413", "Payload too large", "The object exceeded the maximum allowed size"),
    "InvalidMimeType": (400, "415", "invalid_mime_type", "mime type is not supported"),
    "AccessDenied": (400, "403", "Unauthorized", "new row violates row-level security policy"),
    "InvalidJWT": (400, "400", "InvalidJWT", "jwt expired"),
    "InternalError": (500, "500", "internal", "Internal Server Error"),
    "SlowDown": (429, "429", "too_many_requests", "Rate limit exceeded"),
    "ServiceUnavailable": (503, "503", "service_unavailable", "The service is temporarily unavailable"),
}


def error_response(code: str, message: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """Answer as Supabase Storage does: HTTP 400 (or the 5xx/429 itself) and statusCode as a string."""
    status, status_code, legacy, default = ERRORS[code]
    body = {"statusCode": status_code, "error": legacy, "message": message or default, "code": code}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class Bucket:
    """A bucket's rules: size limit, allowed MIME types, and whether the service key is denied (RLS)."""

    file_size_limit: int | None = None
    allowed_mime_types: tuple[str, ...] | None = None
    denied: bool = False


@dataclass
class StoredObject:
    file: Path
    size: int
    content_type: str
    cache_control: str


@dataclass
class TusUpload:
    bucket: str
    key: str
    length: int
    content_type: str
    cache_control: str
    upsert: bool
    file: Path
    offset: int = 0


@dataclass
class Fault:
    """Make the next ``times`` requests matching ``method`` and ``path_contains`` fail this way."""

    kind: Literal["error", "drop", "text"]
    code: str = "InternalError"
    method: str | None = None
    path_contains: str = ""
    retry_after: str | None = None
    status: int = 502
    times: int = 1


@dataclass
class StorageState:
    """What the server holds; tests read it and add faults."""

    key: str
    directory: Path
    buckets: dict[str, Bucket] = field(default_factory=dict)
    objects: dict[tuple[str, str], StoredObject] = field(default_factory=dict)
    uploads: dict[str, TusUpload] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)
    jwt_secret: bytes = field(default_factory=lambda: uuid.uuid4().bytes * 2)
    clock: Callable[[], float] = time.time
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self, buckets: dict[str, Bucket]) -> None:
        """Forget every object, upload, fault and logged request; keep the given buckets."""
        with self.lock:
            for stored in self.objects.values():
                stored.file.unlink(missing_ok=True)
            for upload in self.uploads.values():
                upload.file.unlink(missing_ok=True)
            self.objects.clear()
            self.uploads.clear()
            self.faults.clear()
            self.requests.clear()
            self.buckets = dict(buckets)
            self.clock = time.time

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if (fault.method is None or fault.method == method) and fault.path_contains in path:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def read(self, bucket: str, key: str) -> bytes:
        """Return a stored object's bytes (for assertions)."""
        return self.objects[bucket, key].file.read_bytes()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_token(state: StorageState, url: str, expires_in: int) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(
        json.dumps({"url": url, "iat": int(state.clock()), "exp": int(state.clock()) + expires_in}).encode()
    )
    signature = _b64url(hmac.new(state.jwt_secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


def verify_token(state: StorageState, token: str) -> dict[str, Any] | str:
    """Return the token's claims, or the reason it is refused."""
    try:
        header, payload, signature = token.split(".")
        expected = _b64url(hmac.new(state.jwt_secret, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature):
            return "invalid signature"
        claims: dict[str, Any] = json.loads(_unb64url(payload))
    except ValueError:
        return "jwt malformed"
    if claims["exp"] <= state.clock():
        return "jwt expired"
    return claims


class StorageApp:
    """The Starlette application over a :class:`StorageState`."""

    def __init__(self, state: StorageState) -> None:
        self.state = state
        prefix = "/storage/v1"
        self.app = Starlette(
            routes=[
                Route(prefix + "/bucket", self.list_buckets, methods=["GET"]),
                Route(prefix + "/object/sign/{bucket}/{key:path}", self.sign, methods=["POST"]),
                Route(prefix + "/object/sign/{bucket}/{key:path}", self.get_signed, methods=["GET"]),
                Route(prefix + "/object/info/{bucket}/{key:path}", self.info, methods=["GET"]),
                Route(prefix + "/object/authenticated/{bucket}/{key:path}", self.download, methods=["GET"]),
                Route(prefix + "/object/{bucket}/{key:path}", self.upload, methods=["POST", "PUT"]),
                Route(prefix + "/object/{bucket}/{key:path}", self.download, methods=["GET"]),
                Route(prefix + "/object/{bucket}", self.remove, methods=["DELETE"]),
                Route(prefix + "/upload/resumable", self.tus_create, methods=["POST"]),
                Route(prefix + "/upload/resumable/{upload_id}", self.tus_head, methods=["HEAD"]),
                Route(prefix + "/upload/resumable/{upload_id}", self.tus_patch, methods=["PATCH"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # pragma: no cover - lifespan is off
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self.state.lock:
            self.state.requests.append(
                {
                    "method": scope["method"],
                    "path": scope["path"],
                    "content-length": headers.get("content-length", ""),
                    "upload-length": headers.get("upload-length", ""),
                    "x-upsert": headers.get("x-upsert", ""),
                }
            )
        fault = self.state.take_fault(scope["method"], scope["path"])
        if fault is not None:
            await self._inject(fault, scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _inject(self, fault: Fault, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        while True:  # consume the request body first, so a retry must send it again from its start
            message: Message = await receive()
            received += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        if fault.kind == "error":
            headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else None
            await error_response(fault.code, headers=headers)(scope, receive, send)
        elif fault.kind == "text":
            headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
            await Response("Bad Gateway", status_code=fault.status, headers=headers)(scope, receive, send)
        else:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
            await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
            raise ConnectionAbortedError("fault injected: connection dropped")

    def _authorised(self, request: Request) -> JSONResponse | None:
        key = self.state.key
        if request.headers.get("apikey") != key or request.headers.get("authorization") != f"Bearer {key}":
            return error_response("AccessDenied", "invalid signature")
        return None

    def _bucket(self, name: str) -> Bucket | JSONResponse:
        bucket = self.state.buckets.get(name)
        if bucket is None:
            return error_response("NoSuchBucket")
        if bucket.denied:
            return error_response("AccessDenied")
        return bucket

    def _refuse_content(self, bucket: Bucket, size: int, content_type: str) -> JSONResponse | None:
        if bucket.file_size_limit is not None and size > bucket.file_size_limit:
            return error_response("EntityTooLarge")
        mime = content_type.split(";", maxsplit=1)[0].strip()
        if bucket.allowed_mime_types is not None and mime not in bucket.allowed_mime_types:
            return error_response("InvalidMimeType", f"mime type {mime} is not supported")
        return None

    def _new_file(self) -> Path:
        return self.state.directory / uuid.uuid4().hex

    async def upload(self, request: Request) -> Response:
        refused = self._authorised(request)
        bucket_name, key = request.path_params["bucket"], request.path_params["key"]
        bucket = self._bucket(bucket_name)
        if refused or isinstance(bucket, JSONResponse):
            return refused or bucket  # type: ignore[return-value]
        upsert = request.headers.get("x-upsert") == "true" or request.method == "PUT"
        async with request.form() as form:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                return error_response("InternalError", "no file part")
            content_type = part.content_type or "text/plain;charset=UTF-8"
            target = self._new_file()
            with target.open("wb") as sink:
                shutil.copyfileobj(part.file, sink)
            size = target.stat().st_size
            cache_control = str(form.get("cacheControl") or "no-cache")
        refused = self._refuse_content(bucket, size, content_type)
        if refused is None and not upsert and (bucket_name, key) in self.state.objects:
            refused = error_response("KeyAlreadyExists")
        if refused is not None:
            target.unlink()
            return refused
        self._store(bucket_name, key, StoredObject(target, size, content_type, f"max-age={cache_control}"))
        return JSONResponse({"Key": f"{bucket_name}/{key}", "Id": str(uuid.uuid4())})

    def _store(self, bucket: str, key: str, stored: StoredObject) -> None:
        with self.state.lock:
            old = self.state.objects.get((bucket, key))
            self.state.objects[bucket, key] = stored
        if old is not None:
            old.file.unlink(missing_ok=True)

    def _object(self, request: Request) -> StoredObject | JSONResponse:
        bucket = self._bucket(request.path_params["bucket"])
        if isinstance(bucket, JSONResponse):
            return bucket
        stored = self.state.objects.get((request.path_params["bucket"], request.path_params["key"]))
        return stored if stored is not None else error_response("NoSuchKey")

    async def download(self, request: Request) -> Response:
        refused = self._authorised(request)
        if refused:
            return refused
        stored = self._object(request)
        if isinstance(stored, JSONResponse):
            return stored
        return FileResponse(
            stored.file, media_type=stored.content_type, headers={"cache-control": stored.cache_control}
        )

    async def info(self, request: Request) -> Response:
        refused = self._authorised(request)
        if refused:
            return refused
        stored = self._object(request)
        if isinstance(stored, JSONResponse):
            return stored
        return JSONResponse(
            {"name": request.path_params["key"], "size": stored.size, "content_type": stored.content_type}
        )

    async def list_buckets(self, request: Request) -> Response:
        refused = self._authorised(request)
        if refused:
            return refused
        return JSONResponse([{"id": name, "name": name, "public": False} for name in sorted(self.state.buckets)])

    async def remove(self, request: Request) -> Response:
        refused = self._authorised(request)
        bucket_name = request.path_params["bucket"]
        bucket = self._bucket(bucket_name)
        if refused or isinstance(bucket, JSONResponse):
            return refused or bucket  # type: ignore[return-value]
        prefixes = (await request.json())["prefixes"]
        removed = []
        for key in prefixes:
            with self.state.lock:
                stored = self.state.objects.pop((bucket_name, key), None)
            if stored is not None:
                stored.file.unlink(missing_ok=True)
                removed.append({"name": key, "bucket_id": bucket_name})
        return JSONResponse(removed)

    async def sign(self, request: Request) -> Response:
        refused = self._authorised(request)
        if refused:
            return refused
        stored = self._object(request)
        if isinstance(stored, JSONResponse):
            return stored
        expires_in = int((await request.json())["expiresIn"])
        bucket, key = request.path_params["bucket"], request.path_params["key"]
        token = sign_token(self.state, f"{bucket}/{key}", expires_in)
        return JSONResponse({"signedURL": f"/object/sign/{quote(bucket)}/{quote(key)}?token={token}"})

    async def get_signed(self, request: Request) -> Response:
        claims = verify_token(self.state, request.query_params.get("token", ""))
        if isinstance(claims, str):
            return error_response("InvalidJWT", claims)
        if claims["url"] != f"{request.path_params['bucket']}/{request.path_params['key']}":
            return error_response("InvalidJWT", "invalid signature")
        stored = self._object(request)
        if isinstance(stored, JSONResponse):
            return stored
        return FileResponse(stored.file, media_type=stored.content_type)

    async def tus_create(self, request: Request) -> Response:
        refused = self._authorised(request)
        if refused:
            return refused
        metadata = {}
        for pair in request.headers.get("upload-metadata", "").split(","):
            name, _, value = pair.strip().partition(" ")
            metadata[name] = base64.b64decode(value).decode()
        bucket_name, key = metadata.get("bucketName", ""), metadata.get("objectName", "")
        bucket = self._bucket(bucket_name)
        if isinstance(bucket, JSONResponse):
            return bucket
        length = int(request.headers["upload-length"])
        content_type = metadata.get("contentType", "application/octet-stream")
        upsert = request.headers.get("x-upsert") == "true"
        refused = self._refuse_content(bucket, length, content_type)
        if refused is None and not upsert and (bucket_name, key) in self.state.objects:
            refused = error_response("KeyAlreadyExists")
        if refused is not None:
            return refused
        upload_id = uuid.uuid4().hex
        file = self._new_file()
        file.touch()
        cache_control = f"max-age={metadata.get('cacheControl', '3600')}"
        self.state.uploads[upload_id] = TusUpload(bucket_name, key, length, content_type, cache_control, upsert, file)
        location = f"{request.base_url}storage/v1/upload/resumable/{upload_id}"
        return Response(status_code=201, headers={"location": location, "tus-resumable": "1.0.0"})

    async def tus_head(self, request: Request) -> Response:
        refused = self._authorised(request)
        if refused:
            return refused
        upload = self.state.uploads.get(request.path_params["upload_id"])
        if upload is None:
            return Response(status_code=404)
        return Response(
            headers={
                "upload-offset": str(upload.offset),
                "upload-length": str(upload.length),
                "cache-control": "no-store",
            }
        )

    async def tus_patch(self, request: Request) -> Response:
        refused = self._authorised(request)
        if refused:
            return refused
        upload = self.state.uploads.get(request.path_params["upload_id"])
        if upload is None:
            return Response(status_code=404)
        if int(request.headers.get("upload-offset", "-1")) != upload.offset:
            return Response("offset mismatch", status_code=409)
        with upload.file.open("ab") as sink:
            async for chunk in request.stream():
                sink.write(chunk)
                upload.offset += len(chunk)
        if upload.offset > upload.length:
            return error_response("EntityTooLarge")
        if upload.offset == upload.length:
            del self.state.uploads[request.path_params["upload_id"]]
            if not upload.upsert and (upload.bucket, upload.key) in self.state.objects:
                upload.file.unlink()
                return error_response("KeyAlreadyExists")
            stored = StoredObject(upload.file, upload.length, upload.content_type, upload.cache_control)
            self._store(upload.bucket, upload.key, stored)
        return Response(status_code=204, headers={"upload-offset": str(upload.offset), "tus-resumable": "1.0.0"})


@dataclass
class StorageApiServer:
    """A running server: its base URL (as SUPABASE_URL), service key and state."""

    url: str
    key: str
    state: StorageState


@contextlib.contextmanager
def running_server(key: str, buckets: dict[str, Bucket] | None = None) -> Iterator[StorageApiServer]:
    """Run the Storage API on a free loopback port in a thread; stop it and delete its files on exit."""
    with tempfile.TemporaryDirectory(prefix="storage-api-") as directory:
        state = StorageState(key=key, directory=Path(directory), buckets=dict(buckets or {}))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        app: ASGIApp = StorageApp(state)
        config = uvicorn.Config(app, lifespan="off", log_level="critical", ws="none", http="h11")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the local Storage API server did not start")
            time.sleep(0.01)
        try:
            yield StorageApiServer(url=f"http://127.0.0.1:{port}", key=key, state=state)
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()
