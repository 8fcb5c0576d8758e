-- Debit a user's wallet to the house external account: one call, one transaction.
-- $1 user_id, $2 asset, $3 amount, $4 idempotency key.
-- withdraw() is in sql/functions/wallet_movements.sql.
SELECT *
FROM withdraw($1, $2, $3, $4);
