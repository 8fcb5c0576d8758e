-- House balances: house accounts keep no stored balance (so no movement waits on a
-- row shared by all users); their balance is the sum of their entries. Read by
-- sql/queries/audit.sql and house_balances.sql; entries_account_id_idx makes the sums
-- index-only.
--
-- Runs as it stands: psql -1 -f sql/functions/house_balances.sql.

CREATE OR REPLACE VIEW house_balances AS
SELECT a.id AS account_id,
       a.kind,
       a.asset,
       coalesce(sum(e.amount), 0) AS balance
FROM accounts AS a
LEFT JOIN entries AS e ON e.account_id = a.id
WHERE a.user_id IS NULL
GROUP BY a.id, a.kind, a.asset;
