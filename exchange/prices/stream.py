"""This worker's end of the price channel: the latest quotes, and its WebSocket clients.

Every worker subscribes once to `{prefix}prices` (published by the elected feed) and
fans each update out to its own clients. Each client has a bounded queue: a client that
falls QUEUE_SIZE messages behind is dropped, and nobody else waits for it. If Redis goes
away the subscription is retried with backoff, so pushes resume when Redis returns.

The Litestar Channels plugin would do the fan-out too, but its subscriber task ends for
good on a Redis error, and it drops messages rather than slow clients; this module is
the ~100 lines that give both behaviours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

import msgspec
import redis.asyncio as aioredis

from exchange.money import encode_money
from exchange.prices.background import Loops, follow_channel
from exchange.prices.binance import Quote
from exchange.prices.cache import as_price
from exchange.prices.feed import channel_name, decode_quotes
from exchange.schemas import PriceMessage

log = logging.getLogger("exchange.prices.stream")

_encode = msgspec.json.Encoder(enc_hook=encode_money).encode


class TooManyClients(Exception):
    pass


class Subscriber:
    """One WebSocket client: the symbols it follows and the messages waiting for it."""

    def __init__(self, symbols: Iterable[str], queue_size: int) -> None:
        self.symbols = frozenset(symbols)
        self.queue: asyncio.Queue[str] = asyncio.Queue(queue_size)
        self.dropped = asyncio.Event()
        # Newest fetched_at_ms queued per symbol: an older quote is never sent after it.
        self.sent_ms: dict[str, int] = {}


class PriceStream:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        deployment_id: str,
        fresh_ms: int,
        max_clients: int,
        queue_size: int,
        current: Callable[[], Awaitable[dict[str, Quote]]] | None = None,
    ) -> None:
        self._redis = redis
        # Where to read the current prices after (re)subscribing: pushes missed while the
        # subscription was down are made up for.
        self._current = current
        self._channel = channel_name(prefix)
        self._deployment_id = deployment_id
        self._fresh_ms = fresh_ms
        self._max_clients = max_clients
        self._queue_size = queue_size
        self._clients: set[Subscriber] = set()
        self._loops = Loops()
        self.latest: dict[str, Quote] = {}
        self.subscribed = asyncio.Event()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def start(self) -> None:
        self._loops.start(self._listen(), "price-stream")

    async def stop(self) -> None:
        await self._loops.stop()
        for client in self._clients:
            client.dropped.set()
        self._clients.clear()

    def subscribe(self, symbols: Iterable[str]) -> Subscriber:
        if len(self._clients) >= self._max_clients:
            raise TooManyClients
        client = Subscriber(symbols, self._queue_size)
        self._clients.add(client)
        return client

    def unsubscribe(self, client: Subscriber) -> None:
        self._clients.discard(client)

    def deliver(self, quotes: list[Quote]) -> None:
        """Remember the quotes and queue each for the clients that follow its symbol."""
        for quote in quotes:
            self.latest[quote.symbol] = quote
        by_symbol = {q.symbol: q for q in quotes}
        messages = {q.symbol: message_text(q, self._fresh_ms) for q in quotes}
        for client in list(self._clients):
            for symbol in client.symbols & messages.keys():
                fetched_at_ms = by_symbol[symbol].fetched_at_ms
                if fetched_at_ms < client.sent_ms.get(symbol, -1):
                    continue
                try:
                    client.queue.put_nowait(messages[symbol])
                except asyncio.QueueFull:
                    log.info("dropping a WebSocket client %d messages behind", client.queue.qsize())
                    self._clients.discard(client)
                    client.dropped.set()
                    break
                client.sent_ms[symbol] = fetched_at_ms

    def offer(self, client: Subscriber, quotes: Iterable[Quote]) -> None:
        """Queue a client's first prices, unless a newer push got there first."""
        for quote in quotes:
            newer = quote.fetched_at_ms > client.sent_ms.get(quote.symbol, -1)
            if quote.symbol in client.symbols and newer and not client.queue.full():
                client.queue.put_nowait(message_text(quote, self._fresh_ms))
                client.sent_ms[quote.symbol] = quote.fetched_at_ms

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

    def _deliver_raw(self, data: bytes) -> None:
        try:
            quotes = decode_quotes(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring a malformed message on the price channel")
            return
        self.deliver(quotes)


def message_text(quote: Quote, fresh_ms: int) -> str:
    price = as_price(quote, fresh_ms)
    return _encode(PriceMessage(**msgspec.structs.asdict(price))).decode()
