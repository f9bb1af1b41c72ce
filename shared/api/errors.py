"""Give every error a FastAPI app meets one JSON body and the status a client can act on.

``install_error_handlers(app)`` registers handlers for every :class:`~shared.errors.PipelineError` (mapped by
:func:`status_for`), for the framework's own errors (a request off the schema: 422; a malformed multipart body:
400; an unknown route or method: 404/405) and for anything unexpected (500, details only in the log). Each answer
is an :class:`ErrorBody`::

    {"error": {"code": "job_not_found", "message": "Job not found; check the job id ...", "job_id": "..."}}

The message of a 5xx that is not retryable is replaced by "internal error; see the logs": it may name internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.auth import AuthenticationError
from shared.errors import (
    BudgetExceededError,
    InvalidStateError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PipelineError,
    RequestTimeoutError,
    RetryableError,
    ValidationError,
)

__all__ = [
    "ErrorBody",
    "ErrorDetail",
    "PayloadTooLargeError",
    "RequestTimeoutError",
    "error_response",
    "error_responses",
    "install_error_handlers",
    "status_for",
]

_log = logging.getLogger("shared.api")
INTERNAL_MESSAGE = "internal error; see the logs"


class ErrorDetail(BaseModel):
    """What went wrong, for a client: a stable code, a message that says what to do, and the job when known."""

    code: str
    message: str
    job_id: str | None = None
    problems: list[str] | None = None


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def status_for(error: PipelineError) -> int:
    """Return the HTTP status for a PipelineError (most specific first)."""
    if isinstance(error, AuthenticationError):
        return 401
    if isinstance(error, PermissionDeniedError):
        return 403
    if isinstance(error, PayloadTooLargeError):
        return 413
    if isinstance(error, RequestTimeoutError):
        return 408
    if isinstance(error, ValidationError):
        return 400  # 422 stays for requests that do not match the schema at all
    if isinstance(error, BudgetExceededError):
        return 402
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, InvalidStateError):
        return 409
    if isinstance(error, RetryableError):
        return 503
    return 500  # ConfigError and every other PipelineError: the service is at fault, not the request


def error_response(error: PipelineError) -> JSONResponse:
    """Render ``error`` as the JSON error body with its status and headers (Retry-After, WWW-Authenticate)."""
    status = status_for(error)
    internal = status >= 500 and not isinstance(error, RetryableError)
    job_id = None if error.job_id is None else str(error.job_id)
    body = ErrorBody(
        error=ErrorDetail(code=error.code, message=INTERNAL_MESSAGE if internal else error.message, job_id=job_id)
    )
    headers: dict[str, str] = {}
    if isinstance(error, RetryableError):
        headers["Retry-After"] = str(max(1, round(error.retry_after or 1)))
    if isinstance(error, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer" if error.reason == "missing" else 'Bearer error="invalid_token"'
    if status in {408, 413}:
        headers["Connection"] = "close"  # the rest of the body is not read: drop the connection
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


async def _pipeline_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, PipelineError)  # noqa: S101 - registered for PipelineError only
    if status_for(error) >= 500 and not isinstance(error, RetryableError):
        _log.error("request failed: %s", type(error).__name__, exc_info=error)
    return error_response(error)


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    """Give the framework's own errors (a malformed multipart body, an unknown route) the same body shape."""
    assert isinstance(error, StarletteHTTPException)  # noqa: S101 - registered for HTTPException only
    body = ErrorBody(error=ErrorDetail(code=f"http_{error.status_code}", message=str(error.detail)))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=error.status_code, headers=error.headers)


async def _request_invalid(_: Request, error: Exception) -> JSONResponse:
    """Answer a request off the schema with 422 and one line per problem (never the value sent)."""
    assert isinstance(error, RequestValidationError)  # noqa: S101 - registered for RequestValidationError only
    problems = [
        f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', 'invalid')}"
        for problem in error.errors()[:20]
    ]
    detail = ErrorDetail(
        code="request_invalid",
        message="The request does not match the API's schema; fix the fields listed in problems",
        problems=problems,
    )
    return JSONResponse(ErrorBody(error=detail).model_dump(exclude_none=True), status_code=422)


async def _unexpected(_: Request, error: Exception) -> JSONResponse:
    _log.error("unhandled error in a request: %s", type(error).__name__, exc_info=error)
    body = ErrorBody(error=ErrorDetail(code="internal_error", message=INTERNAL_MESSAGE))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the JSON error body (see the module docstring)."""
    app.add_exception_handler(PipelineError, _pipeline_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(Exception, _unexpected)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return the OpenAPI ``responses`` entry that documents ``statuses`` with the error body (422 included)."""
    return {status: {"model": ErrorBody} for status in sorted({*statuses, 422})}
