"""The connection under one WebSocket, where the ASGI server lends it to the app.

ASGI gives the app a `send` callable and nothing else: not the bytes the transport still
holds, not whether the client answered a ping, and every message goes through the ASGI
event, Litestar's and uvicorn's layers and websockets' framing once per client. So
`exchange serve` runs uvicorn's websockets-sansio protocol through WireProtocol below
(exchange/ops/serving.py), which puts a Wire into each WebSocket's scope under the ASGI
extension `exchange.ops.wire`. Through it the price stream
- writes one frame, built once per message per worker, straight to every client's
  transport (no compression: the frames are the same bytes for every client);
- sees the client's unsent bytes (`transport.get_write_buffer_size()`) and whether the
  keepalive ping uvicorn sent last has been answered: a client that does not read
  cannot answer, however much its kernel's receive window still takes;
- caps the kernel's send buffer of the connection (SO_SNDBUF).
Under any other server the scope has no Wire and the stream sends through ASGI.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request

EXTENSION = "exchange.ops.wire"
# Asked of the kernel for each price socket (Linux doubles it for its bookkeeping: 32 KiB
# counted). The stream sends at most WS_MAX_SYMBOLS (20) messages of ~250 B per
# PRICE_POLL_MS (1 s): 5 KB/s, so 16 KiB keeps over 3 s of it in flight, more than any
# link's round trip needs at that rate. Left to autotuning, a client that stopped
# reading parked up to 4 MiB (tcp_wmem's maximum) in the kernel: 390 KB each measured.
SEND_BUFFER_BYTES = 16_384


def text_frame(payload: bytes) -> bytes:
    """A whole unmasked text frame, as a server sends it."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


class Wire:
    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._loop = protocol.loop

    @property
    def is_open(self) -> bool:
        return not (self._protocol.close_sent or self._protocol.disconnected or self._transport.is_closing())

    def write(self, frame: bytes) -> None:
        if self.is_open:
            self._transport.write(frame)

    def unsent_bytes(self) -> int:
        """What the transport holds for the client (the kernel's share is bounded apart)."""
        return self._transport.get_write_buffer_size()

    def unanswered_ping_seconds(self) -> float:  # float-ok
        """How long the last keepalive ping has waited for its pong (0: answered)."""
        if self._protocol.pending_ping_payload is None:
            return 0.0
        return self._loop.time() - self._protocol.ping_sent_at

    def limit_send_buffer(self, size_bytes: int = SEND_BUFFER_BYTES) -> None:
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size_bytes)

    def abort_later(self, seconds: float) -> None:  # float-ok
        """Drop the connection then, if it is still open: a client that never reads would
        otherwise keep its unsent bytes (and the closing transport) forever."""
        self._loop.call_later(seconds, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self._protocol.disconnected:
            self._transport.abort()


def wire_of(scope: Any) -> Wire | None:
    return scope.get("extensions", {}).get(EXTENSION)


class WireProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, lending each WebSocket's Wire to the app."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # set only when the handshake goes on
        if scope is not None:
            scope["extensions"][EXTENSION] = Wire(self)
