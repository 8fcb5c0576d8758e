-- The house accounts' balances (sums of their entries), by asset then kind.
-- Served by accounts_house_key and entries_account_id_idx (index-only sums).
SELECT h.asset, h.kind, h.balance
FROM house_balances AS h
ORDER BY h.asset, h.kind;
