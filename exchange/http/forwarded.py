"""The client's address (and scheme) when the server sits behind reverse proxies.

`X-Forwarded-For` is believed only from a peer the operator named in
FORWARDED_ALLOW_IPS (addresses or networks; unset: never), because any client can send
the header: believed from anyone, it lets a client pick the address the per-IP rate
limits count. Each proxy appends the address it saw, so the list is read from the
right, past every trusted proxy, to the first address that is not one: the rightmost
untrusted entry, the only one a trusted proxy vouches for. Entries that are not IP
addresses stop the walk (the last trusted hop is kept), and at most MAX_HOPS entries
are read, so whatever a client puts in the header, the address is a short, valid IP.

uvicorn's own proxy-header handling is off (exchange/ops/serving.py): it trusts 127.0.0.1
by default, so any local hop that passes the client's header through let the client
choose its address.
"""

from __future__ import annotations

import ipaddress

from litestar.types import ASGIApp, Receive, Scope, Send

from exchange.config import Network

# Proxies in front of the server, at most; entries further left are never read.
MAX_HOPS = 8
# The longest IPv6 text form is 45 characters; anything longer is not an address.
ADDRESS_MAX_CHARS = 45


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if len(text) > ADDRESS_MAX_CHARS:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[Network, ...]) -> bool:
    return any(address in network for network in networks)


def client_address(peer: str, forwarded_for: list[bytes], networks: tuple[Network, ...]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the
    rightmost untrusted address of X-Forwarded-For (see the module's docstring)."""
    peer_address = _address(peer)
    if not forwarded_for or peer_address is None or not _trusted(peer_address, networks):
        return peer
    joined = b",".join(forwarded_for)
    client = peer
    for entry in reversed(joined.rsplit(b",", MAX_HOPS)[-MAX_HOPS:]):
        address = _address(entry.strip().decode("latin-1"))
        if address is None:
            break
        client = str(address)
        if not _trusted(address, networks):
            break
    return client


class ForwardedClient:
    """Rewrites the ASGI scope's `client` (and `scheme`, from X-Forwarded-Proto) for
    requests that come through a trusted proxy; does nothing if none is trusted."""

    def __init__(self, app: ASGIApp, networks: tuple[Network, ...]) -> None:
        self.app = app
        self._networks = networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if self._networks and client and scope["type"] in ("http", "websocket"):
            forwarded_for: list[bytes] = []
            proto = None
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    forwarded_for.append(value)
                elif name == b"x-forwarded-proto":
                    proto = value.strip().lower()
            host = client_address(client[0], forwarded_for, self._networks)
            if host != client[0]:
                scope["client"] = (host, 0)
            peer = _address(client[0])
            if proto in (b"http", b"https") and peer is not None and _trusted(peer, self._networks):
                scheme = proto.decode()
                scope["scheme"] = scheme if scope["type"] == "http" else scheme.replace("http", "ws")
        await self.app(scope, receive, send)
