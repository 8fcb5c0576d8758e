-- Credit a user's wallet from the house external account: one call, one transaction.
-- $1 user_id, $2 asset, $3 amount, $4 idempotency key.
-- deposit() is in sql/functions/wallet_movements.sql.
SELECT *
FROM deposit($1, $2, $3, $4);
