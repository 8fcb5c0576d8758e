-- Credit a user's wallet from the house external account: one call, one transaction.
-- $1 user_id, $2 asset, $3 amount, $4 idempotency key. See 002_deposit_withdraw.sql.
SELECT *
FROM deposit($1, $2, $3, $4);
