"""The domain's errors: one stable, machine-readable code per failure a client can act on.

Raised below the HTTP layer (auth, ledger, prices, the request structs) with a code, a
message and details, and no HTTP status: exchange/http/errors.py gives each code its
status and headers (STATUS_BY_CODE), so a module that checks a password or moves money
knows nothing of HTTP. Clients branch on `code`, never on `message`.
"""

from __future__ import annotations

from typing import Any


class ExchangeError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        retry_after_seconds: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        # When a retry may succeed (a rate limit's window, a price source's backoff).
        self.retry_after_seconds = retry_after_seconds
