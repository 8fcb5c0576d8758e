-- Many money movements in one call and one transaction, each in its own subtransaction:
-- one row per movement, its result or its error. $1 kinds, $2 user ids, $3 assets or
-- symbols, $4 amounts or quantities, $5 quote quantities, $6 price guards, $7 prices,
-- $8 price times, $9 price validity (ms), $10 idempotency keys: arrays of one length,
-- NULL where a kind takes nothing. movements() is in sql/functions/movement_batches.sql.
SELECT *
FROM movements($1, $2, $3, $4, $5, $6, $7, $8, $9, $10);
