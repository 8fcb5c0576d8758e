-- pgTAP: limit orders' rules (sql/functions/orders.sql), in one transaction that is
-- rolled back. Run alone: pg_prove -d DBNAME sql/tests/limit_orders.sql, on a migrated
-- database with CREATE EXTENSION IF NOT EXISTS pgtap.
-- Rules: a resting order's funds are locked and released exactly once (cancel or fill),
-- a fill never happens twice, a final status never changes, and the audit finds nothing.
\set ON_ERROR_STOP 1
BEGIN;
SET LOCAL search_path = exchange, public;
SELECT plan(14);

CREATE TEMP TABLE orders_user ON COMMIT DROP AS
WITH u AS (
    INSERT INTO users (email, password_hash)
    VALUES ('limit-orders@pgtap.test', 'not a hash')
    RETURNING id
)
SELECT id FROM u;
SELECT lives_ok($$SELECT deposit((SELECT id FROM orders_user), 'USDT', 100, 'pgtap-orders-deposit')$$,
                'the user has 100 USDT');
-- No other order rests on ETHUSDT in this transaction's view but the ones made here.
UPDATE orders SET status = 'CANCELED', locked_amount = 0
WHERE symbol = 'ETHUSDT' AND status = 'NEW' AND user_id <> (SELECT id FROM orders_user);

CREATE TEMP TABLE resting ON COMMIT DROP AS
SELECT * FROM place_limit_order((SELECT id FROM orders_user), 'ETHUSDT', 'buy', 2000.01, 0.0333, 'GTC',
                                NULL, 2500, now(), NULL, 'pgtap-order-1');
SELECT is((SELECT status FROM resting), 'NEW', 'a GTC buy below the live price rests');
SELECT is((SELECT locked_amount FROM resting), 66.61::numeric, 'it locks quantity x price, rounded up (66.600333)');
SELECT is((SELECT locked::numeric FROM accounts WHERE user_id = (SELECT id FROM orders_user) AND asset = 'USDT'),
          66.61::numeric, 'the wallet''s locked holds the same amount');
SELECT throws_ok($$SELECT withdraw((SELECT id FROM orders_user), 'USDT', 33.40, 'pgtap-orders-withdraw')$$,
                 'EX004', NULL, 'a withdrawal above available (33.39) is refused');

SELECT is((cancel_order((SELECT id FROM orders_user), (SELECT id FROM resting))).status, 'CANCELED',
          'a cancel answers the cancelled order');
SELECT is((SELECT locked::numeric FROM accounts WHERE user_id = (SELECT id FROM orders_user) AND asset = 'USDT'),
          0::numeric, 'a cancel releases the lock');
SELECT throws_ok($$SELECT cancel_order((SELECT id FROM orders_user), (SELECT id FROM resting))$$,
                 'EX018', NULL, 'a second cancel is refused: the order is final');

CREATE TEMP TABLE to_fill ON COMMIT DROP AS
SELECT * FROM place_limit_order((SELECT id FROM orders_user), 'ETHUSDT', 'buy', 2000.00, 0.01, 'GTC',
                                NULL, 2500, now(), NULL, 'pgtap-order-2');
SELECT is(fill_crossed_orders('ETHUSDT', 1999.99, now(), 500), 1, 'a crossing price fills the order');
SELECT is(fill_crossed_orders('ETHUSDT', 1999.99, now(), 500), 0, 'a replayed price fills nothing');
SELECT is((SELECT count(*) FROM transactions WHERE order_id = (SELECT id FROM to_fill)), 1::bigint,
          'the order has exactly one fill transaction');
SELECT is((SELECT locked::numeric FROM accounts WHERE user_id = (SELECT id FROM orders_user) AND asset = 'USDT'),
          0::numeric, 'the fill released the lock');
SELECT throws_ok(format('UPDATE orders SET status = %L WHERE id = %s', 'CANCELED', (SELECT id FROM to_fill)),
                 '23514', NULL, 'a final status never changes');
SELECT is_empty(
    $$SELECT w.asset
      FROM accounts AS w
      WHERE w.user_id = (SELECT id FROM orders_user)
        AND w.locked <> coalesce((SELECT sum(o.locked_amount) FROM orders AS o
                                  WHERE o.user_id = w.user_id AND o.locked_asset = w.asset
                                    AND o.status = 'NEW'), 0)$$,
    'every wallet''s locked equals what its open orders reserve'
);

SELECT * FROM finish();
ROLLBACK;
