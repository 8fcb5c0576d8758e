-- Every violation of the ledger's invariants, one row each; no rows means the books
-- balance. Reads the whole ledger (full scans by design); entries_account_id_idx
-- makes the per-account sums index-only.
--   transaction_unbalanced       a transaction's entries do not sum to zero for an asset
--   transaction_without_entries  a transaction has no entries at all
--   wallet_balance_mismatch      a wallet's stored balance differs from its entries' sum
--   wallet_negative              a wallet's balance is below zero
--   asset_not_balanced           all accounts of an asset (wallets + house) do not sum to zero
--   entry_account_mismatch       an entry names a missing account or one of another asset
--   wallet_locked_mismatch       a wallet's locked differs from what its open orders reserve
--   wallet_locked_above_balance  a wallet reserves more than it holds
--   order_fill_count             a FILLED order without exactly one fill transaction, or
--                                another order with one
--   final_order_holds_lock       a final order (not NEW) still reserves funds
-- Orders are in sql/functions/orders.sql; orders_user_id_idx is not needed here.
SELECT 'transaction_unbalanced' AS invariant,
       format('transaction %s, asset %s', e.transaction_id, e.asset) AS subject,
       sum(e.amount) AS amount
FROM entries AS e
GROUP BY e.transaction_id, e.asset
HAVING sum(e.amount) <> 0

UNION ALL

SELECT 'transaction_without_entries',
       format('transaction %s', t.id),
       t.amount
FROM transactions AS t
WHERE NOT EXISTS (SELECT 1 FROM entries AS e WHERE e.transaction_id = t.id)

UNION ALL

SELECT 'wallet_balance_mismatch',
       format('account %s (user %s, %s): stored %s, entries %s',
              w.id, w.user_id, w.asset, w.balance, coalesce(s.total, 0)),
       w.balance - coalesce(s.total, 0)
FROM accounts AS w
LEFT JOIN (
    SELECT e.account_id, sum(e.amount) AS total
    FROM entries AS e
    GROUP BY e.account_id
) AS s ON s.account_id = w.id
WHERE w.kind = 'wallet'
  AND w.balance <> coalesce(s.total, 0)

UNION ALL

SELECT 'wallet_negative',
       format('account %s (user %s, %s)', w.id, w.user_id, w.asset),
       w.balance
FROM accounts AS w
WHERE w.kind = 'wallet'
  AND w.balance < 0

UNION ALL

SELECT 'asset_not_balanced',
       format('asset %s', b.asset),
       sum(b.balance)
FROM (
    SELECT w.asset, w.balance
    FROM accounts AS w
    WHERE w.kind = 'wallet'
    UNION ALL
    SELECT h.asset, h.balance
    FROM house_balances AS h
) AS b
GROUP BY b.asset
HAVING sum(b.balance) <> 0

UNION ALL

SELECT 'entry_account_mismatch',
       format('entry %s (transaction %s, account %s, %s)', e.id, e.transaction_id, e.account_id, e.asset),
       e.amount
FROM entries AS e
LEFT JOIN accounts AS a ON a.id = e.account_id
WHERE a.id IS NULL
   OR a.asset <> e.asset

UNION ALL

SELECT 'wallet_locked_mismatch',
       format('account %s (user %s, %s): locked %s, open orders %s',
              w.id, w.user_id, w.asset, w.locked, coalesce(r.reserved, 0)),
       w.locked - coalesce(r.reserved, 0)
FROM accounts AS w
LEFT JOIN (
    SELECT o.user_id, o.locked_asset, sum(o.locked_amount) AS reserved
    FROM orders AS o
    WHERE o.status = 'NEW'
    GROUP BY o.user_id, o.locked_asset
) AS r ON r.user_id = w.user_id AND r.locked_asset = w.asset
WHERE w.kind = 'wallet'
  AND w.locked <> coalesce(r.reserved, 0)

UNION ALL

SELECT 'wallet_locked_mismatch',
       format('user %s, %s: open orders reserve %s without a wallet', r.user_id, r.locked_asset, r.reserved),
       r.reserved
FROM (
    SELECT o.user_id, o.locked_asset, sum(o.locked_amount) AS reserved
    FROM orders AS o
    WHERE o.status = 'NEW'
    GROUP BY o.user_id, o.locked_asset
) AS r
WHERE NOT EXISTS (SELECT 1 FROM accounts AS w WHERE w.user_id = r.user_id AND w.asset = r.locked_asset)

UNION ALL

SELECT 'wallet_locked_above_balance',
       format('account %s (user %s, %s): locked %s, balance %s', w.id, w.user_id, w.asset, w.locked, w.balance),
       w.locked - w.balance
FROM accounts AS w
WHERE w.kind = 'wallet'
  AND w.locked > 0  -- a negative wallet that reserves nothing is wallet_negative's
  AND w.locked > w.balance

UNION ALL

SELECT 'order_fill_count',
       format('order %s (%s): %s fill transactions', o.id, o.status, count(t.id)),
       count(t.id)
FROM orders AS o
LEFT JOIN transactions AS t ON t.order_id = o.id
GROUP BY o.id, o.status
HAVING count(t.id) <> CASE o.status WHEN 'FILLED' THEN 1 ELSE 0 END

UNION ALL

SELECT 'final_order_holds_lock',
       format('order %s (%s)', o.id, o.status),
       o.locked_amount
FROM orders AS o
WHERE o.status <> 'NEW'
  AND o.locked_amount <> 0

ORDER BY 1, 2;
