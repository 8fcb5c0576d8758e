-- Fill at most $4 resting orders of market $1 that price $2 (given by Binance at $3)
-- crosses; returns how many were filled. fill_crossed_orders() is in
-- sql/functions/orders.sql. Repeat while it returns $4.
SELECT fill_crossed_orders($1, $2, $3, $4);
