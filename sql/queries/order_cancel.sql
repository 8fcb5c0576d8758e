-- Cancel one NEW order of a user and release its lock (order_answer row).
-- cancel_order() is in sql/functions/orders.sql. $1 user_id, $2 order id.
SELECT *
FROM cancel_order($1, $2);
