"""The request middleware: a request id, one log line and the metrics of every request.

It wraps the whole application (`observe(app)`), outside Litestar's router, so requests
that match no route (404, 405) are logged and counted too. Per request it:

- takes the client's `X-Request-ID` if it is short and made of safe characters, else
  makes one (a per-process random prefix and a counter: unique without a syscall);
  echoes it in the response's `X-Request-ID` and sets it for every log record written
  while the request is served (exchange/ops/logs.py);
- writes one line on the logger `exchange.access` (INFO): request_id, method, path
  (never the query string; cut to PATH_LOG_MAX_CHARS), route (the template), status, duration_ms, user_id when
  authenticated, client_ip, and for an error the body's `error.code`. Never a body,
  a header value other than the request id, a password or a token;
- counts it in the metrics (exchange/ops/metrics.py), and, for a money movement (its
  handler said so with note_movement), the movement's outcome: ok, replayed
  (`Idempotency-Replayed: true`), or the error's code.

WebSocket connections get a line when they end (status 101 if accepted, duration the
session's length) and no metrics.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from typing import Any

import msgspec
from litestar import Litestar
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from exchange.ops import metrics
from exchange.ops.logs import REQUEST_ID

access_log = logging.getLogger("exchange.access")

REQUEST_ID_HEADER = b"x-request-id"
# A client's path and method are logged at most this long (a cut path ends with "...").
PATH_LOG_MAX_CHARS = 256
METHOD_LOG_MAX_CHARS = 16
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")


class _ErrorCode(msgspec.Struct):
    code: str


class _ErrorBody(msgspec.Struct):
    error: _ErrorCode


_decode_error = msgspec.json.Decoder(_ErrorBody).decode


def error_code(body: bytes) -> str | None:
    """`code` of an error body {"error": {"code": ...}}, without decoding the rest."""
    try:
        return _decode_error(body).error.code
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def loggable_path(path: str) -> str:
    """The path as logged: at most PATH_LOG_MAX_CHARS (escaped by the text format)."""
    return path if len(path) <= PATH_LOG_MAX_CHARS else path[:PATH_LOG_MAX_CHARS] + "..."


def observe(app: Litestar) -> Litestar:
    """Put the middleware around everything the app serves (its own middleware, the
    router and Litestar's exception handling included)."""
    app.asgi_handler = RequestObserver(app.asgi_handler)
    return app


class RequestObserver:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._prefix = secrets.token_hex(6)
        self._count = itertools.count(1)

    def request_id(self, headers: list[tuple[bytes, bytes]]) -> str:
        for name, value in headers:
            if name == REQUEST_ID_HEADER:
                if _SANE_REQUEST_ID.fullmatch(value):
                    return value.decode()
                break
        return f"{self._prefix}-{next(self._count):x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path = scope["path"]  # before routing rewrites it
        request_id = self.request_id(scope["headers"])
        id_header = (REQUEST_ID_HEADER, request_id.encode())
        context = REQUEST_ID.set(request_id)
        status = 0
        replayed = False
        error_body = b""

        async def send_with_id(message: Message) -> None:
            nonlocal status, replayed, error_body
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers") or []
                message["headers"] = [*headers, id_header]
                if status == 201:
                    replayed = any(name.lower() == b"idempotency-replayed" for name, _ in headers)
            elif status >= 400 and not error_body and message["type"] == "http.response.body":
                error_body = message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if status == 0:
                status = 500  # the app failed before answering; the server answers 500
            path_template = scope.get("path_template")
            method = scope["method"]
            metrics.observe_request(path_template, method, status, seconds)
            code = error_code(error_body) if status >= 400 else None
            kind = scope.get(metrics.MOVEMENT_SCOPE_KEY)
            if kind is not None:
                if status < 400:
                    metrics.count_movement(kind, "replayed" if replayed else "ok")
                else:
                    metrics.count_movement(kind, code or f"http_{status}")
            if access_log.isEnabledFor(logging.INFO):
                fields: dict[str, Any] = {
                    "request_id": request_id,
                    "method": method[:METHOD_LOG_MAX_CHARS],
                    "path": loggable_path(path),
                    "route": metrics.route_name(path_template),
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "user_id": getattr(scope.get("user"), "id", None),
                    "client_ip": (scope.get("client") or ("", 0))[0],
                }
                if code is not None:
                    fields["error"] = code
                access_log.info("request", extra={"fields": fields})
            REQUEST_ID.reset(context)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path = scope["path"]
        request_id = self.request_id(scope["headers"])
        context = REQUEST_ID.set(request_id)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "websocket.accept":
                status = 101
                headers = message.get("headers") or []
                message["headers"] = [*headers, (REQUEST_ID_HEADER, request_id.encode())]
            elif message["type"] == "websocket.close" and status == 0:
                status = 403  # closed before accepting: the server answers 403
            elif message["type"] == "websocket.http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                fields = {
                    "request_id": request_id,
                    "method": "GET",
                    "path": loggable_path(path),
                    "route": metrics.route_name(scope.get("path_template")),
                    "status": status or 500,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "client_ip": (scope.get("client") or ("", 0))[0],
                    "websocket": True,
                }
                access_log.info("websocket", extra={"fields": fields})
            REQUEST_ID.reset(context)
