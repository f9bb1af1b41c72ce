"""Translate what Supabase Storage, storage3, httpx and the filesystem raise into the StorageError family.

Supabase Storage answers HTTP 400 for almost every failure; the real status is the JSON body's
``statusCode``, a string ("404", "409", ...), beside a legacy ``error`` and, in newer versions, a ``code``.
Only a 500 keeps its own HTTP status. The mapping reads the body's status first, then the HTTP one.
"""

from __future__ import annotations

import errno
from typing import Any

from shared.errors import (
    PipelineError,
    StorageConflictError,
    StorageError,
    StorageNotFoundError,
    StoragePermissionError,
    StorageUnavailableError,
    ValidationError,
)
from shared.paid.errors import parse_retry_after  # the one public home of the Retry-After parser

__all__ = ["error_from_response", "expect_status", "from_api_error", "from_os_error", "parse_retry_after", "translate"]

# Error codes (``code`` or legacy ``error``) whose meaning does not depend on the status they came with.
_PERMISSION_CODES = frozenset(
    {"AccessDenied", "InvalidJWT", "InvalidSignature", "Unauthorized", "SignatureDoesNotMatch", "ExpiredToken"}
)
# What a signed URL's refusal answers (revision 4fa61fba): a tampered path InvalidSignature, no token
# InvalidRequest, an expired or forged token InvalidJWT. InvalidRequest alone is a generic 400, so it means a
# refusal only for a signed URL.
_SIGNED_URL_REFUSALS = frozenset({"InvalidRequest", "InvalidJWT", "InvalidSignature"})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "not_found"})


def _status_of(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def from_api_error(
    *,
    status: object,
    error: str | None,
    message: str | None,
    bucket: str | None,
    path: str | None,
    http_status: int | None = None,
    retry_after: float | None = None,
    signed_url: bool = False,
) -> PipelineError:
    """Map one Storage API error (status from the body, error code, message) to our error class.

    ``signed_url`` says the request was a signed URL's: its refusals are StoragePermissionError.
    """
    code = error or ""
    number = _status_of(status) or http_status or 0
    text = message or code or "no message"
    where = f"{bucket}/{path}" if path else (bucket or "storage")
    context: dict[str, Any] = {"bucket": bucket, "path": path, "status": number}
    if signed_url and code in _SIGNED_URL_REFUSALS:
        return StoragePermissionError(
            f"Storage refused the signed URL for {where} ({code}: {text}); it expired or was altered: ask for a "
            "new one with get_signed_url",
            **context,
        )
    if number == 429 or number >= 500:
        return StorageUnavailableError(
            f"Storage is unavailable for {where} (HTTP {number}: {text}); try again later",
            retry_after=retry_after,
            **context,
        )
    if code in _PERMISSION_CODES or number in {401, 403}:
        return StoragePermissionError(
            f"Storage refused access to {where} ({code or number}: {text}); check the service key, the bucket's "
            "policies, or whether the signed URL expired",
            **context,
        )
    if code in _NOT_FOUND_CODES or number == 404:
        return StorageNotFoundError(f"Not found in storage: {where} ({text})", **context)
    if number == 409:
        return StorageConflictError(f"An object already exists at {where}; pass upsert=True to replace it", **context)
    if number == 413:
        return ValidationError(f"Storage refused {where}: too large ({text})", field="data")
    if number == 415:
        return ValidationError(
            f"Storage refused {where}: the bucket does not accept this content type ({text})", field="content_type"
        )
    return StorageError(f"Storage failed for {where} (HTTP {number}, {code or 'no code'}: {text})", **context)


def error_from_response(
    status_code: int,
    body: bytes,
    headers: Any,
    *,
    bucket: str | None,
    path: str | None,
    signed_url: bool = False,
) -> PipelineError:
    """Map an httpx response that failed (read in full) to our error class (``signed_url``: see from_api_error)."""
    import json  # noqa: PLC0415 - only failing responses need it

    status: object = status_code
    error: str | None = None
    message: str | None = None
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        status = payload.get("statusCode", status_code)
        error = payload.get("code") or payload.get("error")
        message = payload.get("message")
    else:
        message = body[:200].decode(errors="replace").strip() or None
    return from_api_error(
        status=status,
        error=error,
        message=message,
        bucket=bucket,
        path=path,
        http_status=status_code,
        retry_after=parse_retry_after(headers.get("retry-after")),
        signed_url=signed_url,
    )


def expect_status(response: Any, status: int, *, bucket: str, path: str) -> None:
    """Raise our error for a response other than ``status``, chained to httpx's own (its ``__cause__``)."""
    if response.status_code == status:
        return
    try:
        response.raise_for_status()
    except Exception as exc:  # httpx.HTTPStatusError; httpx is imported lazily, so not named here
        raise error_from_response(
            response.status_code, response.content, response.headers, bucket=bucket, path=path
        ) from exc
    raise StorageError(
        f"Storage answered HTTP {response.status_code} for {bucket}/{path} where {status} was expected",
        bucket=bucket,
        path=path,
        status=response.status_code,
    )


def from_os_error(exc: OSError, *, bucket: str, path: str | None) -> PipelineError:
    """Map a filesystem error of the local backend to our error class."""
    where = f"{bucket}/{path}" if path else bucket
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return StorageNotFoundError(f"Not found in storage: {where}", bucket=bucket, path=path)
    if isinstance(exc, PermissionError):
        return StoragePermissionError(
            f"The storage folder refused access to {where}; check its permissions", bucket=bucket, path=path
        )
    if exc.errno in {errno.ENOSPC, errno.EDQUOT}:
        return StorageError(f"The storage disk is full writing {where}; free space", bucket=bucket, path=path)
    return StorageError(f"Storage failed for {where} ({exc.strerror or type(exc).__name__})", bucket=bucket, path=path)


def _response_in_chain(exc: BaseException) -> Any:
    """Return the httpx response behind a storage3 error (raised ``from`` an HTTPStatusError), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if response is not None and hasattr(response, "headers"):
            return response
        current = current.__cause__ or current.__context__
    return None


def translate(exc: BaseException, *, bucket: str | None, path: str | None) -> PipelineError:
    """Map an exception raised by storage3, httpx or h2 to our error class (the caller chains ``from exc``)."""
    import httpx  # noqa: PLC0415 - loaded with the Supabase backend, never at import
    from storage3.exceptions import StorageApiError  # noqa: PLC0415 - same
    from storage3.utils import StorageException  # noqa: PLC0415 - same

    where = f"{bucket}/{path}" if path else (bucket or "storage")
    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, StorageApiError):
        response = _response_in_chain(exc)
        return from_api_error(
            status=exc.status,
            error=exc.code,
            message=exc.message,
            bucket=bucket,
            path=path,
            http_status=response.status_code if response is not None else None,
            retry_after=parse_retry_after(response.headers.get("retry-after")) if response is not None else None,
        )
    if isinstance(exc, httpx.TimeoutException):
        return StorageUnavailableError(
            f"Storage did not answer in time for {where} ({type(exc).__name__}); try again later",
            bucket=bucket,
            path=path,
        )
    if isinstance(exc, httpx.TransportError) or _is_h2_error(exc):
        return StorageUnavailableError(
            f"The connection to storage failed for {where} ({type(exc).__name__}); try again later",
            bucket=bucket,
            path=path,
        )
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        return error_from_response(response.status_code, response.content, response.headers, bucket=bucket, path=path)
    if isinstance(exc, StorageException | httpx.HTTPError | ValueError):
        return StorageError(f"Storage failed for {where} ({type(exc).__name__}: {exc})", bucket=bucket, path=path)
    return StorageError(f"Unexpected failure in storage for {where} ({type(exc).__name__})", bucket=bucket, path=path)


def _is_h2_error(exc: BaseException) -> bool:
    """Whether ``exc`` is h2's own error (a dropped HTTP/2 connection can surface it unwrapped)."""
    try:
        from h2.exceptions import H2Error  # noqa: PLC0415 - optional: h2 is only present with http2
    except ImportError:  # pragma: no cover - h2 is in the lock
        return False
    return isinstance(exc, H2Error)
