-- pgTAP: the global wallet lock order. A trade locks the user's two wallets in
-- asset-code order ("C" collation: BTC before USDT), whatever its side, so two trades of
-- one user never wait on each other in a circle.
--
-- Lock waits are seen across sessions, so this test drives two more sessions through
-- dblink (which commit their own work): `holder` locks one wallet, `trader` calls buy()
-- or sell() and waits for it, and this session then finds which wallet the trader
-- took before it waited. Its user and empty wallets are deleted at the end.
-- Run alone: pg_prove -d DBNAME sql/tests/lock_order.sql, on a migrated database with
--   CREATE EXTENSION IF NOT EXISTS pgtap; CREATE EXTENSION IF NOT EXISTS dblink;
\set ON_ERROR_STOP 1
BEGIN;
SET LOCAL search_path = exchange, public;
SELECT plan(4);

CREATE TEMP TABLE lock_order_conn ON COMMIT DROP AS
SELECT format('dbname=%s port=%s', quote_ident(current_database()), current_setting('port')) AS conninfo;
SELECT dblink_connect('holder', (SELECT conninfo FROM lock_order_conn));
SELECT dblink_connect('trader', (SELECT conninfo FROM lock_order_conn));
SELECT dblink_exec('trader', 'SET search_path = exchange');
-- No session of this test waits for long, whatever goes wrong.
SELECT dblink_exec(name, 'SET lock_timeout = ''10s''') FROM (VALUES ('holder'), ('trader')) AS c (name);
SET LOCAL lock_timeout = '10s';

CREATE TEMP TABLE lock_order_user ON COMMIT DROP AS
SELECT id FROM dblink('holder', $$
    WITH u AS (
        INSERT INTO exchange.users (email, password_hash)
        VALUES ('lock-order-' || gen_random_uuid() || '@pgtap.test', 'not a hash')
        RETURNING id
    ), w AS (
        INSERT INTO exchange.accounts (user_id, asset, kind, balance)
        SELECT u.id, a.asset, 'wallet', 0 FROM u, (VALUES ('BTC'), ('USDT')) AS a (asset)
    )
    SELECT id FROM u
$$) AS t (id bigint);

-- The trader's backend, and a wait (at most 5 s) until it waits for a lock.
CREATE TEMP TABLE lock_order_trader ON COMMIT DROP AS
SELECT pid FROM dblink('trader', 'SELECT pg_backend_pid()') AS t (pid integer);
CREATE FUNCTION pg_temp.wait_for_trader_lock_wait() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..500 LOOP
        PERFORM pg_stat_clear_snapshot();  -- activity is otherwise read once per transaction
        IF EXISTS (SELECT 1 FROM pg_stat_activity
                   WHERE pid = (SELECT pid FROM lock_order_trader) AND wait_event_type = 'Lock') THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
    RETURN false;
END;
$$;

-- Whether this session could lock the user's wallet now. The probe's lock is released at
-- once (its subtransaction is rolled back), so the trader never waits on this session.
CREATE FUNCTION pg_temp.wallet_is_free(p_asset text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM accounts
    WHERE user_id = (SELECT id FROM lock_order_user) AND asset = p_asset
    FOR UPDATE NOWAIT;
    RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'free';
EXCEPTION
    WHEN raise_exception THEN RETURN true;
    WHEN lock_not_available THEN RETURN false;
END;
$$;

-- Holder locks USDT; a buy of BTCUSDT must have locked BTC before it waits.
SELECT dblink_exec('holder', 'BEGIN');
SELECT * FROM dblink('holder', format(
    'SELECT 1 FROM exchange.accounts WHERE user_id = %s AND asset = %L FOR UPDATE',
    (SELECT id FROM lock_order_user), 'USDT')) AS t (locked integer);
SELECT dblink_send_query('trader', format(
    'SELECT id FROM buy(%s, %L, 0.001, NULL, NULL, 60000, now(), NULL, %L)',
    (SELECT id FROM lock_order_user), 'BTCUSDT', 'lock-order-buy'));
SELECT ok(pg_temp.wait_for_trader_lock_wait(), 'a buy waits for the USDT wallet another session holds');
SELECT ok(NOT pg_temp.wallet_is_free('BTC'), 'meanwhile it holds the BTC wallet: BTC is locked before USDT');
SELECT dblink_exec('holder', 'ROLLBACK');
SELECT * FROM dblink_get_result('trader', false) AS t (id bigint);  -- EX004: no funds
SELECT * FROM dblink_get_result('trader', false) AS t (id bigint);

-- Holder locks BTC; a sell of BTCUSDT waits for it without taking USDT first.
SELECT dblink_exec('holder', 'BEGIN');
SELECT * FROM dblink('holder', format(
    'SELECT 1 FROM exchange.accounts WHERE user_id = %s AND asset = %L FOR UPDATE',
    (SELECT id FROM lock_order_user), 'BTC')) AS t (locked integer);
SELECT dblink_send_query('trader', format(
    'SELECT id FROM sell(%s, %L, 0.001, NULL, NULL, 60000, now(), NULL, %L)',
    (SELECT id FROM lock_order_user), 'BTCUSDT', 'lock-order-sell'));
SELECT ok(pg_temp.wait_for_trader_lock_wait(), 'a sell waits for the BTC wallet another session holds');
SELECT ok(pg_temp.wallet_is_free('USDT'), 'meanwhile the USDT wallet is free: whatever the side, BTC comes first');
SELECT dblink_exec('holder', 'ROLLBACK');
SELECT * FROM dblink_get_result('trader', false) AS t (id bigint);
SELECT * FROM dblink_get_result('trader', false) AS t (id bigint);

SELECT dblink_exec('holder', format(
    'DELETE FROM exchange.accounts WHERE user_id = %1$s; DELETE FROM exchange.users WHERE id = %1$s',
    (SELECT id FROM lock_order_user)));
SELECT dblink_disconnect('holder');
SELECT dblink_disconnect('trader');

SELECT * FROM finish();
ROLLBACK;
