"""Listening sockets bound by the project itself, with TCP_NODELAY on every connection.

asyncio's own event loop sets TCP_NODELAY on an accepted connection only if the
listening socket was created with proto=IPPROTO_TCP; `socket.socket(AF_INET,
SOCK_STREAM)` leaves proto 0 (uvicorn issue #3149). Every keep-alive request after the
first then waits ~40 ms for a delayed ACK. Measured here with the stand-in on such a
socket: 44 ms per keep-alive request; on this one, 1 ms. (`exchange serve` runs on
uvloop, which sets TCP_NODELAY itself: 0.2 ms per keep-alive /health with curl.)
"""

from __future__ import annotations

import socket


def bound_socket(
    host: str, port: int, *, reuse_port: bool = False, reuse_address: bool = True
) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening; with reuse_port, one of a
    group that share the port (exchange/ops/serving.py)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if reuse_address:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


def listening_socket(host: str, port: int) -> socket.socket:
    sock = bound_socket(host, port)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for servers started by the benchmark and the tests)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
