-- A user's orders, newest first, one keyset page: $1 user_id, $2 status (or NULL),
-- $3 symbol (or NULL), $4 client_order_id (or NULL), $5 only ids below this (or NULL),
-- $6 page size. Orders are written by sql/functions/orders.sql.
-- Served by orders_user_id_idx (user_id, id DESC); a client_order_id by
-- orders_user_client_order_key.
SELECT o.id,
       o.symbol,
       o.side,
       o.type,
       o.time_in_force,
       o.price,
       o.quantity,
       o.executed_qty,
       o.cumulative_quote_qty,
       o.status,
       o.locked_asset,
       o.locked_amount,
       o.client_order_id,
       o.created_at,
       o.updated_at,
       o.fill_transaction_id AS transaction_id,
       false AS replayed
FROM orders AS o
WHERE o.user_id = $1
  AND ($2::text IS NULL OR o.status = $2::text)
  AND ($3::text IS NULL OR o.symbol = $3::text)
  AND ($4::text IS NULL OR o.client_order_id = $4::text)
  AND ($5::bigint IS NULL OR o.id < $5::bigint)
ORDER BY o.id DESC
LIMIT $6;
