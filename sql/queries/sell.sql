-- Market sell: give base, receive quote less the fee. One call, one transaction.
-- $1 user_id, $2 symbol, $3 quantity (or NULL), $4 quote_quantity (or NULL),
-- $5 min_price (or NULL), $6 price read from the cache (NULL if none usable),
-- $7 when Binance gave that price, $8 how many more ms the price may be used (NULL: no
-- limit), $9 idempotency key. sell() is in sql/functions/trades.sql.
SELECT *
FROM sell($1, $2, $3, $4, $5, $6, $7, $8, $9);
