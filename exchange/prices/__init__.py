"""Prices from Binance: binance.py (httpx client), cache.py (Redis cache-aside),
feed.py (poller and pub/sub). They land with the prices issue; nothing here yet."""
