-- Place a limit order (order_answer row). place_limit_order() is in
-- sql/functions/orders.sql. One call, one transaction.
-- $1 user_id, $2 symbol, $3 side, $4 limit price, $5 quantity, $6 time_in_force,
-- $7 client_order_id (or NULL), $8 live price read from the cache (NULL if none usable),
-- $9 when Binance gave it, $10 how many more ms it may be used (NULL: no limit),
-- $11 idempotency key.
SELECT *
FROM place_limit_order($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11);
