"""THE one place where errors become HTTP answers: ``{"error": code, "message": text}``, always.

``AndonError`` subclasses carry their own ``code`` and ``http_status``; request validation errors, unknown
routes and methods, over-size bodies and overload map to the same shape. Anything unexpected becomes a 500
with a request-independent message: no traceback, no internal path, no class name leaves the process (the
log has the details).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from andon.errors import AndonError

log = logging.getLogger("andon.service")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


class InvalidRequestError(AndonError):
    """A request with missing or malformed fields."""

    code = "invalid_request"
    http_status = 422


class BodyTooLargeError(AndonError):
    """A body over the configured cap (checked while streaming, so chunked bodies are caught too)."""

    code = "body_too_large"
    http_status = 413


class UnsupportedMediaTypeError(AndonError):
    code = "unsupported_media_type"
    http_status = 415


class AuthenticationError(AndonError):
    """No credential, or one that is unknown or revoked."""

    code = "unauthorized"
    http_status = 401


class PermissionDeniedError(AndonError):
    """A valid credential whose role (or camera binding) does not allow this."""

    code = "forbidden"
    http_status = 403


class UnknownCameraError(AndonError):
    code = "unknown_camera"
    http_status = 422


class IdempotencyConflictError(AndonError):
    """An Idempotency-Key reused with a different frame."""

    code = "idempotency_key_reused"
    http_status = 422


class OverloadedError(AndonError):
    """The inference queue is full: try again after ``retry_after`` seconds."""

    code = "overloaded"
    http_status = 503

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoModelError(AndonError):
    code = "no_model"
    http_status = 503


def error_body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


def error_response(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(AndonError, _andon_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def _count(request: Request, code: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.rejections.labels(reason=code).inc()


async def _andon_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AndonError)
    _count(request, exc.code)
    headers = None
    if isinstance(exc, OverloadedError) or exc.http_status == 503:
        headers = {"Retry-After": str(getattr(exc, "retry_after", 1))}
    if isinstance(exc, AuthenticationError):
        headers = {"WWW-Authenticate": 'Bearer realm="andon"'}
    return error_response(exc.code, str(exc), exc.http_status, headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    _count(request, "invalid_request")
    return error_response("invalid_request", describe_validation(exc.errors()), 422)


def describe_validation(errors: list) -> str:
    """'query.camera_id: Field required; ...' without echoing large inputs back."""
    parts = []
    for err in list(errors)[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    _count(request, code)
    if exc.status_code == 404:
        message = f"no route {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail) if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(code, message, exc.status_code, getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    _count(request, "internal_error")
    return error_response("internal_error", "internal server error; the service log has the details", 500)
