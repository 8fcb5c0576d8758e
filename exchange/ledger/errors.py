"""What the money functions' SQLSTATEs and the ledger's unique constraints mean, as the
domain's error codes (exchange/errors.py). The SQLSTATEs of class EX are listed in the
headers of sql/functions/ledger.sql, trades.sql, orders.sql and users.sql."""

from __future__ import annotations

SQLSTATE_CODES: dict[str, str] = {
    "EX001": "invalid_amount",
    "EX002": "too_many_decimals",
    "EX003": "unknown_asset",
    "EX004": "insufficient_funds",
    "EX005": "idempotency_key_reused",
    "EX006": "unknown_symbol",
    "EX007": "market_inactive",
    "EX008": "exactly_one_quantity",
    "EX009": "quantity_off_step",
    "EX010": "quantity_out_of_range",
    "EX011": "below_min_notional",
    "EX012": "price_moved",
    "EX013": "price_unavailable",
    "EX014": "last_admin",
    "EX015": "price_off_tick",
    "EX016": "price_out_of_band",
    "EX017": "not_found",
    "EX018": "order_not_open",
}

# Unique constraints whose violation is the client's doing -> (code, message).
UNIQUE_CODES: dict[str, tuple[str, str]] = {
    "users_email_key": ("email_taken", "an account with this email already exists"),
    "transactions_user_key": (
        "idempotency_key_reused",
        "this Idempotency-Key was used for a different request",
    ),
    "orders_user_client_order_key": (
        "duplicate_client_order_id",
        "you already have an order with this client_order_id",
    ),
}
