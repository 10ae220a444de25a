"""ASGI middleware: the body size cap (enforced while streaming) and request metrics.

Pure ASGI rather than ``BaseHTTPMiddleware``: no extra task per request, and the body cap sees every
chunk as it arrives, so a chunked upload without Content-Length is cut off at the cap instead of being
buffered whole.

How a 413 ends the connection. Closing a socket whose peer is still sending makes the kernel answer with a
reset, and a reset can reach the peer before it has read the 413 (it then sees "connection reset", not the
answer). A proxy in front (nginx, deploy/nginx.conf) has read the whole body and sends it at once; it counts
such a reset as a failure of the replica, and at ``max_fails`` takes a healthy replica out of rotation. So a
body of known length up to ``DRAIN_FACTOR`` times the cap is answered on a connection that stays open: the
server reads the rest of the body and throws it away (uvicorn discards what arrives after the response).
A larger body, or one of unknown length cut off mid-stream, gets ``Connection: close``: sending it whole
would cost the network more than a reset costs the client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from andon.service.errors import BodyTooLargeError
from andon.service.metrics import Metrics

#: a body of known length up to this many times the cap is read to its end and thrown away after the 413,
#: so that the connection ends cleanly (see the module's docstring); a larger one gets Connection: close
DRAIN_FACTOR = 2


class BodyLimit:
    """413 for bodies over ``limit_for(path)`` bytes: at once from Content-Length, or mid-stream."""

    def __init__(
        self, app: ASGIApp, limit_for: Callable[[str], int], on_reject: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.on_reject = on_reject or (lambda: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            self.on_reject()
            await _send_413(send, limit, declared, close=declared > DRAIN_FACTOR * limit)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError(_message(limit, None))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if started:
                raise
            self.on_reject()
            await _send_413(send, limit, None, close=True)  # of unknown length: a declared one is refused above


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _message(limit: int, declared: int | None) -> str:
    size = f"{declared:,} bytes" if declared is not None else "the body"
    return f"{size} exceeds the limit of {limit:,} bytes"


async def _send_413(send: Send, limit: int, declared: int | None, *, close: bool) -> None:
    body = json.dumps({"error": BodyTooLargeError.code, "message": _message(limit, declared)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Requests by route template, method and status, and their latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status[0])).inc()
            self.metrics.request_seconds.labels(route=route).observe(time.perf_counter() - t0)
