-- pgTAP: the money functions' core rules, in one transaction that is rolled back.
-- Run alone: pg_prove -d DBNAME sql/tests/money_rules.sql (or psql -X -f), on a database
-- that `exchange migrate` has migrated and that has the extension:
--   CREATE EXTENSION IF NOT EXISTS pgtap;
-- Rules: balances never go negative, every transaction's entries balance per asset,
-- a replay returns the same row, a reused key with another request is refused, and the
-- audit query finds nothing.
\set ON_ERROR_STOP 1
BEGIN;
SET LOCAL search_path = exchange, public;
SELECT plan(16);

CREATE TEMP TABLE rules_user ON COMMIT DROP AS
WITH u AS (
    INSERT INTO users (email, password_hash)
    VALUES ('money-rules@pgtap.test', 'not a hash')
    RETURNING id
)
SELECT id FROM u;

-- A deposit, and its replay.
CREATE TEMP TABLE first_deposit ON COMMIT DROP AS
SELECT * FROM deposit((SELECT id FROM rules_user), 'USDT', 100.50, 'pgtap-deposit-1');
SELECT is((SELECT balance_after FROM first_deposit), 100.50::numeric, 'a deposit credits the wallet');
SELECT is((SELECT replayed FROM first_deposit), false, 'a first call is not a replay');
SELECT results_eq(
    $$SELECT id, balance_after, true FROM first_deposit$$,
    $$SELECT id, balance_after, replayed FROM deposit((SELECT id FROM rules_user), 'USDT', 100.5, 'pgtap-deposit-1')$$,
    'a replay with the same key and request returns the same transaction, marked replayed'
);
SELECT is((SELECT count(*) FROM transactions WHERE user_id = (SELECT id FROM rules_user)), 1::bigint,
          'a replay writes nothing');

-- A reused key with another request.
SELECT throws_ok(
    $$SELECT deposit((SELECT id FROM rules_user), 'USDT', 7, 'pgtap-deposit-1')$$,
    'EX005', NULL, 'a reused key with another amount is refused (EX005)'
);
SELECT throws_ok(
    $$SELECT withdraw((SELECT id FROM rules_user), 'USDT', 100.50, 'pgtap-deposit-1')$$,
    'EX005', NULL, 'a reused key with another kind is refused (EX005)'
);

-- Balances never go negative.
SELECT throws_ok(
    $$SELECT withdraw((SELECT id FROM rules_user), 'USDT', 100.51, 'pgtap-withdraw-1')$$,
    'EX004', NULL, 'a withdrawal above the balance is refused (EX004)'
);
SELECT throws_ok(
    $$SELECT buy((SELECT id FROM rules_user), 'BTCUSDT', 1, NULL, NULL, 60000, now(), NULL, 'pgtap-buy-big')$$,
    'EX004', NULL, 'a buy above the quote balance is refused (EX004)'
);
SELECT throws_ok(
    $$SELECT sell((SELECT id FROM rules_user), 'BTCUSDT', 0.001, NULL, NULL, 60000, now(), NULL, 'pgtap-sell-none')$$,
    'EX004', NULL, 'a sell of base the user does not hold is refused (EX004)'
);
SELECT throws_ok(
    $$UPDATE accounts SET balance = -1 WHERE user_id = (SELECT id FROM rules_user) AND asset = 'USDT'$$,
    '23514', NULL, 'the schema itself refuses a negative wallet balance'
);

-- Trades: a buy and a sell; entries balance per asset for every movement.
SELECT lives_ok(
    $$SELECT buy((SELECT id FROM rules_user), 'BTCUSDT', 0.001, NULL, NULL, 60000.01, now(), NULL, 'pgtap-buy-1')$$,
    'a buy the user can pay for is made'
);
SELECT is(
    (SELECT balance::numeric FROM accounts WHERE user_id = (SELECT id FROM rules_user) AND asset = 'USDT'),
    40.49::numeric,
    'a buyer pays the notional rounded up to the quote''s scale (100.50 - 60.01)'
);
SELECT lives_ok(
    $$SELECT sell((SELECT id FROM rules_user), 'BTCUSDT', 0.0009, NULL, NULL, 59999.99, now(), NULL, 'pgtap-sell-1')$$,
    'a sell of base the user holds is made'
);
SELECT is_empty(
    $$SELECT e.transaction_id, e.asset
      FROM entries AS e
      JOIN transactions AS t ON t.id = e.transaction_id
      WHERE t.user_id = (SELECT id FROM rules_user)
      GROUP BY e.transaction_id, e.asset
      HAVING sum(e.amount) <> 0$$,
    'every transaction''s entries sum to zero per asset'
);
SELECT is(
    (SELECT count(*) FROM accounts WHERE user_id = (SELECT id FROM rules_user) AND balance < 0),
    0::bigint,
    'no wallet of the user is negative'
);

-- The ledger's invariants, as sql/queries/audit.sql checks them (its main three).
SELECT is_empty(
    $$SELECT invariant FROM (
        SELECT 'transaction_unbalanced' AS invariant FROM entries AS e
        GROUP BY e.transaction_id, e.asset HAVING sum(e.amount) <> 0
        UNION ALL
        SELECT 'wallet_balance_mismatch' FROM accounts AS w
        LEFT JOIN (SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id) AS s
               ON s.account_id = w.id
        WHERE w.kind = 'wallet' AND w.balance <> coalesce(s.total, 0)
        UNION ALL
        SELECT 'asset_not_balanced' FROM (
            SELECT asset, balance FROM accounts WHERE kind = 'wallet'
            UNION ALL
            SELECT asset, balance FROM house_balances) AS b
        GROUP BY b.asset HAVING sum(b.balance) <> 0
    ) AS violations$$,
    'the ledger balances: wallets match their entries, every asset sums to zero'
);

SELECT * FROM finish();
ROLLBACK;
