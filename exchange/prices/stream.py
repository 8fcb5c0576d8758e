"""This worker's end of the price channel: the latest quotes, and its WebSocket clients.

Every worker subscribes once to `{prefix}prices` (published by the elected feed) and
fans each update out to its own clients. Each message is encoded once per worker, and
under `exchange serve` framed once too: the same bytes go straight to every client's
transport (exchange/ops/wire.py). A client is dropped as too slow, and nobody else
waits for it, when the server holds more than WS_MAX_UNSENT_BYTES it has not sent
(the transport's buffer, or the queue where there is no wire; the kernel's share is
capped apart by SO_SNDBUF), or when it has not taken what it was sent for
WS_SEND_TIMEOUT_MS: a keepalive ping sent after it unanswered that long (a client that
does not read cannot answer, while its kernel's receive window may take minutes of
prices). If Redis goes away the subscription is retried with backoff, so pushes resume
when Redis returns.

The Litestar Channels plugin would do the fan-out too, but its subscriber task ends for
good on a Redis error, and it drops messages rather than slow clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import NamedTuple

import msgspec
import redis.asyncio as aioredis

from exchange.money import encode_money
from exchange.ops.redis_loops import Loops, follow_channel
from exchange.ops.wire import Wire, text_frame
from exchange.prices.binance import Quote
from exchange.prices.cache import as_price
from exchange.prices.feed import channel_name, decode_quotes
from exchange.schemas import PriceMessage

log = logging.getLogger("exchange.prices.stream")

_encode = msgspec.json.Encoder(enc_hook=encode_money).encode
# How often every client is checked for unanswered pings and unsent bytes.
WATCH_SECONDS = 0.25
# Clients written to between two turns of the event loop: a fan-out to a thousand
# clients in one go held the worker's loop, and every REST request on it, for ~20 ms.
FAN_OUT_CHUNK = 100


class Message(NamedTuple):
    """One price message, encoded once for all of a worker's clients."""

    text: str
    frame: bytes


class Subscriber:
    """One WebSocket client: the symbols it follows and what it has not taken yet."""

    def __init__(self, symbols: Iterable[str], wire: Wire | None, max_unsent_bytes: int) -> None:
        self.symbols = frozenset(symbols)
        self.wire = wire
        self.max_unsent_bytes = max_unsent_bytes
        # Without a wire: messages waiting for the ASGI sender, and their size.
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.queued_bytes = 0
        self.dropped = asyncio.Event()
        # Newest fetched_at_ms sent per symbol: an older quote is never sent after it.
        self.sent_ms: dict[str, int] = {}

    def push(self, message: Message) -> bool:
        """Hand a message on; False once the server holds too much the client has not taken."""
        if self.wire is not None:
            self.wire.write(message.frame)
            return self.wire.unsent_bytes() <= self.max_unsent_bytes
        self.queue.put_nowait(message.text)
        self.queued_bytes += len(message.text)
        return self.queued_bytes <= self.max_unsent_bytes

    def taken(self, text: str) -> None:
        """The ASGI sender handed this queued message to the server."""
        self.queued_bytes -= len(text)

    def stuck(self, send_timeout_seconds: float) -> bool:  # float-ok
        wire = self.wire
        if wire is None:  # the ASGI sender times out its sends instead
            return False
        return (
            wire.unanswered_ping_seconds() > send_timeout_seconds
            or wire.unsent_bytes() > self.max_unsent_bytes
        )


class PriceStream:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        deployment_id: str,
        fresh_ms: int,
        max_unsent_bytes: int,
        send_timeout_ms: int,
        current: Callable[[], Awaitable[dict[str, Quote]]] | None = None,
    ) -> None:
        self._redis = redis
        # Where to read the current prices after (re)subscribing: pushes missed while the
        # subscription was down are made up for.
        self._current = current
        self._channel = channel_name(prefix)
        self._deployment_id = deployment_id
        self._fresh_ms = fresh_ms
        self._max_unsent_bytes = max_unsent_bytes
        self._send_timeout_seconds = send_timeout_ms / 1000
        self._clients: set[Subscriber] = set()
        self._loops = Loops()
        self.latest: dict[str, Quote] = {}
        self.subscribed = asyncio.Event()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def start(self) -> None:
        self._loops.start(self._listen(), "price-stream")
        self._loops.start(self._watch(), "price-stream-watch")

    async def stop(self) -> None:
        await self._loops.stop()
        for client in self._clients:
            client.dropped.set()
        self._clients.clear()

    def subscribe(self, symbols: Iterable[str], wire: Wire | None = None) -> Subscriber:
        client = Subscriber(symbols, wire, self._max_unsent_bytes)
        self._clients.add(client)
        return client

    def unsubscribe(self, client: Subscriber) -> None:
        self._clients.discard(client)

    def deliver(self, quotes: list[Quote]) -> None:
        """Remember the quotes and send each to the clients that follow its symbol."""
        for _ in self._deliver_in_chunks(quotes):
            pass

    async def deliver_yielding(self, quotes: list[Quote]) -> None:
        """deliver(), letting the event loop run between chunks of clients."""
        for _ in self._deliver_in_chunks(quotes):
            await asyncio.sleep(0)

    def _deliver_in_chunks(self, quotes: list[Quote]) -> Iterator[None]:
        for quote in quotes:
            self.latest[quote.symbol] = quote
        by_symbol = {q.symbol: (q.fetched_at_ms, self.message(q)) for q in quotes}
        for count, client in enumerate(list(self._clients), 1):
            if count % FAN_OUT_CHUNK == 0:
                yield
                if client not in self._clients:  # it left or was dropped meanwhile
                    continue
            for symbol in client.symbols & by_symbol.keys():
                fetched_at_ms, message = by_symbol[symbol]
                if fetched_at_ms < client.sent_ms.get(symbol, -1):
                    continue
                client.sent_ms[symbol] = fetched_at_ms
                if not client.push(message):
                    self._drop(client, "holds too many unsent bytes")
                    break

    def offer(self, client: Subscriber, quotes: Iterable[Quote]) -> None:
        """Send a client's first prices, unless a newer push got there first."""
        for quote in quotes:
            newer = quote.fetched_at_ms > client.sent_ms.get(quote.symbol, -1)
            if quote.symbol in client.symbols and newer:
                client.sent_ms[quote.symbol] = quote.fetched_at_ms
                if not client.push(self.message(quote)):
                    self._drop(client, "holds too many unsent bytes")
                    return

    def message(self, quote: Quote) -> Message:
        text = message_text(quote, self._fresh_ms)
        return Message(text, text_frame(text.encode()))

    def _drop(self, client: Subscriber, why: str) -> None:
        log.info("dropping a WebSocket client that %s", why)
        self._clients.discard(client)
        client.dropped.set()

    async def _watch(self) -> None:
        while not self._loops.stopping.is_set():
            for client in [c for c in self._clients if c.stuck(self._send_timeout_seconds)]:
                self._drop(client, "has not taken what it was sent")
            await self._loops.pause(WATCH_SECONDS)

    async def _listen(self) -> None:
        await follow_channel(
            self._redis,
            self._channel,
            self._loops,
            deployment_id=self._deployment_id,
            subscribed=self.subscribed,
            on_subscribed=self._catch_up,
            on_message=self._deliver_raw,
            log=log,
        )

    async def _catch_up(self) -> None:
        if self._current is not None:
            self.deliver(list((await self._current()).values()))

    async def _deliver_raw(self, data: bytes) -> None:
        try:
            quotes = decode_quotes(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring a malformed message on the price channel")
            return
        # The next message is read once this one reached every client: a backlog waits
        # in Redis (bounded by its pub/sub output buffer limit), not in this process.
        await self.deliver_yielding(quotes)


def message_text(quote: Quote, fresh_ms: int) -> str:
    price = as_price(quote, fresh_ms)
    return _encode(PriceMessage(**msgspec.structs.asdict(price))).decode()
