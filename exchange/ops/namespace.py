"""Where one deployment's Redis keys and channels live, and the envelope of its messages.

Every key and pub/sub channel is `{REDIS_PREFIX}{deployment id}:...`, the id being made
by the deployment's first migration (sql/migrations/014_deployment_id.sql). Keys are
kept apart by the database number of REDIS_URL too, but channels are not: pub/sub
ignores the database number. So two deployments on one Redis with the default
REDIS_PREFIX heard each other's prices (which trades fill at) and logouts; with the id
in every name, they cannot. Every message also carries the id, and a follower drops a
message that names another deployment (exchange/ops/redis_loops.py).
"""

from __future__ import annotations

import msgspec


def redis_namespace(prefix: str, deployment_id: str) -> str:
    return f"{prefix}{deployment_id}:"


class Envelope(msgspec.Struct, frozen=True):
    deployment: str
    body: msgspec.Raw


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Envelope).decode


def seal(deployment_id: str, body: bytes) -> bytes:
    """A channel message: the body (JSON) and the deployment that sent it."""
    return _encode(Envelope(deployment_id, msgspec.Raw(body)))


def opened(data: bytes) -> Envelope:
    """Raises msgspec.DecodeError / ValidationError on anything but an envelope."""
    return _decode(data)
