-- One order of a user (no row for another user's). order_answer() is in
-- sql/functions/orders.sql. $1 user_id, $2 order id. Served by orders_pkey.
SELECT a.*
FROM orders AS o
CROSS JOIN LATERAL order_answer(o.id, false) AS a
WHERE o.id = $2
  AND o.user_id = $1;
