"""WebSocket connection slots: WS_MAX_CONNECTIONS for the whole server, and
WS_MAX_CONNECTIONS_PER_ADDRESS for one client address on one worker.

The kernel spreads connections over the workers unevenly (2,000 clients on 2 workers
landed 1,046/954), so a limit per worker refused clients while the server had room.
The server's count lives in Redis: the hash `{prefix}ws:connections:{server}` holds one
field per worker, its connections. A worker takes a slot with one script that adds up
the live workers' fields, compares with the limit and counts the new connection: one
round trip per connection, exact under any burst. A worker is live while its key
`{prefix}ws:alive:{worker}` exists (renewed every second, gone 3 s after the worker
dies); a dead worker's field is dropped by the next take. `{server}` is the host name
and PORT, which the workers of one `exchange serve` share.

If Redis is unreachable, a worker admits up to WS_MAX_CONNECTIONS on its own (logged):
the price socket keeps serving its last prices, each worker bounded by its own count.
The per-address cap is counted in each worker's memory (one address holds at most
WORKERS x WS_MAX_CONNECTIONS_PER_ADDRESS slots), keyed by the address as the app sees
it (`websocket.client.host`), cut to ADDRESS_MAX_CHARS.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from exchange.ops.redis_loops import Loops

log = logging.getLogger("exchange.prices.slots")

ADDRESS_MAX_CHARS = 64  # an IPv6 address with a zone fits; anything longer is cut
ALIVE_MS = 3_000
RENEW_SECONDS = 1.0

# KEYS[1]: the server's hash (worker -> connections). ARGV: this worker, the limit, the
# prefix of the workers' liveness keys. 1 if a slot was taken, 0 if the server is full.
_TAKE = """
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
    if fields[i] == ARGV[1] or redis.call('EXISTS', ARGV[3] .. fields[i]) == 1 then
        total = total + tonumber(fields[i + 1])
    else
        redis.call('HDEL', KEYS[1], fields[i])
    end
end
if total >= tonumber(ARGV[2]) then
    return 0
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"""


class ServerFull(Exception):
    pass


class AddressFull(Exception):
    pass


class Slots:
    def __init__(
        self, redis: aioredis.Redis, *, prefix: str, port: int, max_connections: int, max_per_address: int
    ) -> None:
        self._redis = redis
        self._take = redis.register_script(_TAKE)
        server = f"{socket.gethostname()[:64]}:{port}"
        self._key = f"{prefix}ws:connections:{server}"
        self._alive_prefix = f"{prefix}ws:alive:"
        self._worker = secrets.token_hex(8)
        self._max_connections = max_connections
        self._max_per_address = max_per_address
        self._by_address: dict[str, int] = {}
        self._count = 0  # this worker's connections
        self._in_flight = 0  # takes and releases sent to Redis, not yet answered
        self._unsure = True  # whether Redis may hold a wrong count for this worker
        self._loops = Loops()

    @property
    def address_count(self) -> int:
        """Addresses with a connection on this worker (each one key in memory)."""
        return len(self._by_address)

    async def start(self) -> None:
        await self._renew()
        self._loops.start(self._renew_forever(), "ws-slots")

    async def stop(self) -> None:
        await self._loops.stop()
        with contextlib.suppress(RedisError, OSError):
            await self._redis.hdel(self._key, self._worker)
            await self._redis.delete(self._alive_prefix + self._worker)

    async def take(self, address: str | None) -> str:
        """A slot for a client at `address`; returns the key to give back with release().
        Raises AddressFull or ServerFull."""
        who = (address or "unknown")[:ADDRESS_MAX_CHARS]
        if self._by_address.get(who, 0) >= self._max_per_address:
            raise AddressFull
        self._by_address[who] = self._by_address.get(who, 0) + 1
        try:
            await self._take_in_redis()
        except BaseException:
            self._forget(who)
            raise
        self._count += 1
        return who

    async def release(self, who: str) -> None:
        self._forget(who)
        self._count -= 1
        self._in_flight += 1
        try:
            await self._redis.hincrby(self._key, self._worker, -1)
        except (RedisError, OSError):
            self._unsure = True  # the next renewal writes this worker's true count
        finally:
            self._in_flight -= 1

    async def _take_in_redis(self) -> None:
        self._in_flight += 1
        try:
            taken = await self._take(
                keys=[self._key], args=[self._worker, self._max_connections, self._alive_prefix]
            )
        except (RedisError, OSError) as exc:
            log.warning(
                "WebSocket slots: Redis unreachable (%s); counting this worker alone", type(exc).__name__
            )
            self._unsure = True
            taken = self._count < self._max_connections
        finally:
            self._in_flight -= 1
        if not taken:
            raise ServerFull

    def _forget(self, who: str) -> None:
        left = self._by_address[who] - 1
        if left:
            self._by_address[who] = left
        else:
            del self._by_address[who]

    async def _renew(self) -> None:
        """Keep this worker live; write its true count where Redis may have lost or missed
        some (after an error, or when its key had gone: Redis restarted, or this worker
        stalled), never while a take or release is under way."""
        try:
            was_alive = await self._redis.set(self._alive_prefix + self._worker, 1, px=ALIVE_MS, get=True)
            if (self._unsure or was_alive is None) and not self._in_flight:
                await self._redis.hset(self._key, self._worker, self._count)
                self._unsure = False
        except (RedisError, OSError) as exc:
            self._unsure = True
            log.warning("WebSocket slots: could not renew (%s)", type(exc).__name__)

    async def _renew_forever(self) -> None:
        while not self._loops.stopping.is_set():
            await self._loops.pause(RENEW_SECONDS)
            await self._renew()
