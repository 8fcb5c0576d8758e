-- One page of a user's history, newest first. Keyset pagination: $2 is the last id
-- of the previous page (NULL for the first page). $3 page size.
-- Served by transactions_user_id_idx. Filtered pages: transactions_for_user_by_*.sql.
SELECT t.id, t.kind, t.asset, t.amount, t.balance_after, t.symbol, t.quote_asset,
       t.price, t.quote_qty, t.fee, t.fee_asset, t.price_at, t.created_at, t.quote_balance_after
FROM transactions AS t
WHERE t.user_id = $1
  AND t.id < coalesce($2::bigint, 9223372036854775807)
ORDER BY t.id DESC
LIMIT $3;
