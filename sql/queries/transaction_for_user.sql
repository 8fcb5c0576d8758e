-- One transaction, only if it belongs to the user (another user's id finds nothing).
-- Served by transactions_pkey.
SELECT t.id, t.kind, t.asset, t.amount, t.balance_after, t.symbol, t.quote_asset,
       t.price, t.quote_qty, t.fee, t.fee_asset, t.price_at, t.created_at, t.quote_balance_after
FROM transactions AS t
WHERE t.id = $1
  AND t.user_id = $2;
