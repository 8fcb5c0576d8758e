-- 008: fewer instructions per movement. Same rules, same answers, same locks.
--
-- Counted with callgrind on a single-user backend (instructions repeat exactly where
-- timings on this machine move by 15-30%): sql/bench/movements/instructions.sh KIND,
-- per call, commit included:
--                 before (007)   after (008)
--   deposit          1,016,204       844,944   (-17%)
--   withdraw         1,016,825       845,397   (-17%)
--   buy              1,812,595     1,365,641   (-25%)
--   sell             1,798,641     1,351,479   (-25%)
--
-- 1. The single-column CHECKs of the three tables every movement writes (accounts,
--    transactions, entries) become domains. PostgreSQL 15 keeps a table's CHECKs as
--    text and parses them again in every INSERT or UPDATE statement (ExecConstraints,
--    stringToNode): about 140,000 instructions per UPDATE of accounts, 14% of a
--    deposit. A domain's constraints are parsed once per connection and cached. The
--    rules are 001's, word for word; a violation is still SQLSTATE 23514 (the message
--    names the domain instead of the table). accounts_wallet_shape spans three columns,
--    so it stays a table CHECK. No table is rewritten: each column first takes a domain
--    without constraints (the same type underneath), then each domain gets its CHECK,
--    which scans the columns that use it.
-- 2. Everything a trade needs about its market is one row of trade_markets, kept by
--    triggers from markets and assets, instead of 005's four-table join on every trade
--    (about 110,000 instructions). It replaces market_accounts.
-- 3. A trade writes both wallets in one UPDATE instead of two (one executor start, one
--    set of constraints), finding them by the row versions it locked (about 100,000
--    instructions). tests/test_ledger_schema.py checks the rules, the triggers and that
--    this migration rewrites no table.
--
-- Running it: it holds ACCESS EXCLUSIVE locks on accounts, transactions and entries
-- until it commits, while it checks every row against the domains (one scan per column)
-- and rebuilds accounts_house_key (a partial index is never reused), so movements wait
-- for it. Seconds on a small ledger; on a large one, run it in a quiet moment.

-- house_balances depends on the columns whose type changes; recreated below as it was.
DROP VIEW house_balances;

CREATE DOMAIN account_kind AS text;
CREATE DOMAIN transaction_kind AS text;
CREATE DOMAIN idempotency_key AS text;
CREATE DOMAIN positive_amount AS numeric;
CREATE DOMAIN non_negative_amount AS numeric;
CREATE DOMAIN nonzero_amount AS numeric;

ALTER TABLE accounts
    DROP CONSTRAINT accounts_kind_check,
    DROP CONSTRAINT accounts_balance_check,
    DROP CONSTRAINT accounts_locked_check,
    ALTER COLUMN kind TYPE account_kind,
    ALTER COLUMN balance TYPE non_negative_amount,
    ALTER COLUMN locked TYPE non_negative_amount;

ALTER TABLE transactions
    DROP CONSTRAINT transactions_kind_check,
    DROP CONSTRAINT transactions_idempotency_key_check,
    DROP CONSTRAINT transactions_amount_check,
    ALTER COLUMN kind TYPE transaction_kind,
    ALTER COLUMN idempotency_key TYPE idempotency_key,
    ALTER COLUMN amount TYPE positive_amount;

ALTER TABLE entries
    DROP CONSTRAINT entries_amount_check,
    ALTER COLUMN amount TYPE nonzero_amount;

ALTER DOMAIN account_kind
    ADD CONSTRAINT account_kind_check CHECK (VALUE IN ('wallet', 'external', 'market', 'fees'));
ALTER DOMAIN transaction_kind
    ADD CONSTRAINT transaction_kind_check CHECK (VALUE IN ('deposit', 'withdrawal', 'buy', 'sell'));
ALTER DOMAIN idempotency_key
    ADD CONSTRAINT idempotency_key_check CHECK (length(VALUE) BETWEEN 1 AND 100);
-- A wallet's balance (and `locked`) is never negative.
ALTER DOMAIN non_negative_amount
    ADD CONSTRAINT non_negative_amount_check CHECK (VALUE >= 0);
-- A movement moves something.
ALTER DOMAIN positive_amount
    ADD CONSTRAINT positive_amount_check CHECK (VALUE > 0);
-- An entry posts something (zero amounts are left out).
ALTER DOMAIN nonzero_amount
    ADD CONSTRAINT nonzero_amount_check CHECK (VALUE <> 0);

CREATE VIEW house_balances AS
SELECT a.id AS account_id,
       a.kind,
       a.asset,
       coalesce(sum(e.amount), 0) AS balance
FROM accounts AS a
LEFT JOIN entries AS e ON e.account_id = a.id
WHERE a.user_id IS NULL
GROUP BY a.id, a.kind, a.asset;

-- Everything a trade needs to know about its market (003's trade_market type), one row
-- per market. Derived: written only by refresh_trade_market, which the triggers below
-- call whenever a market or an asset's scale changes. (House accounts are created with
-- their asset and never change; a trigger on accounts would run on every movement.)
-- As before 008 (market_accounts), a market with this row cannot be deleted or renamed:
-- halt it with `active = false`.
CREATE TABLE trade_markets OF trade_market (
    symbol                   WITH OPTIONS PRIMARY KEY REFERENCES markets (symbol),
    base                     WITH OPTIONS NOT NULL,
    quote                    WITH OPTIONS NOT NULL,
    base_scale               WITH OPTIONS NOT NULL,
    quote_scale              WITH OPTIONS NOT NULL,
    qty_step                 WITH OPTIONS NOT NULL,
    min_qty                  WITH OPTIONS NOT NULL,
    max_qty                  WITH OPTIONS NOT NULL,
    min_notional             WITH OPTIONS NOT NULL,
    fee_rate                 WITH OPTIONS NOT NULL,
    active                   WITH OPTIONS NOT NULL,
    base_market_account_id   WITH OPTIONS NOT NULL,
    quote_market_account_id  WITH OPTIONS NOT NULL,
    base_fees_account_id     WITH OPTIONS NOT NULL,
    quote_fees_account_id    WITH OPTIONS NOT NULL
);

-- Refreshes run one at a time, and each reads its sources after taking its turn. Two
-- changes committed at once (a market inserted while its asset's scale changes, say)
-- would otherwise each compute the row without the other's change, under READ
-- COMMITTED, and leave it stale. A transaction-level advisory lock, held until commit:
-- only DBA changes take it, never a trade.
CREATE FUNCTION lock_trade_markets()
RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtext('exchange.trade_markets'))
$$;

-- Rebuild one market's row from markets, assets and accounts (003's join).
CREATE FUNCTION refresh_trade_market(p_symbol text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lock_trade_markets();
    -- The statements below see every refresh committed before the turn came.
    DELETE FROM trade_markets WHERE symbol = p_symbol;
    INSERT INTO trade_markets
    SELECT m.symbol, m.base, m.quote, b.scale, q.scale, m.qty_step, m.min_qty, m.max_qty,
           m.min_notional, m.fee_rate, m.active,
           house_account('market', m.base), house_account('market', m.quote),
           house_account('fees', m.base), house_account('fees', m.quote)
    FROM markets AS m
    JOIN assets AS b ON b.code = m.base
    JOIN assets AS q ON q.code = m.quote
    WHERE m.symbol = p_symbol;
END;
$$;

CREATE FUNCTION markets_refresh_trade_market()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM refresh_trade_market(NEW.symbol);
    RETURN NULL;
END;
$$;

CREATE TRIGGER markets_trade_market
AFTER INSERT OR UPDATE ON markets
FOR EACH ROW EXECUTE FUNCTION markets_refresh_trade_market();

-- An asset's scale changed: every market it is part of, those committed while this
-- waited for its turn included.
CREATE FUNCTION asset_refresh_trade_markets()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lock_trade_markets();
    PERFORM refresh_trade_market(m.symbol)
    FROM markets AS m
    WHERE NEW.code IN (m.base, m.quote);
    RETURN NULL;
END;
$$;

CREATE TRIGGER assets_trade_markets
AFTER UPDATE OF scale ON assets
FOR EACH ROW EXECUTE FUNCTION asset_refresh_trade_markets();

SELECT refresh_trade_market(m.symbol) FROM markets AS m;

-- 005's market_accounts is part of trade_markets now.
DROP TRIGGER markets_accounts ON markets;
DROP FUNCTION refresh_market_accounts();
DROP TABLE market_accounts;

-- Same result as 003's and 005's, from trade_markets. Raises EX006.
CREATE OR REPLACE FUNCTION trade_market(p_symbol text)
RETURNS trade_market
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_market  trade_market;
BEGIN
    SELECT t.* INTO v_market
    FROM trade_markets AS t
    WHERE t.symbol = p_symbol;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'EX006', MESSAGE = format('unknown symbol %s', p_symbol),
            DETAIL = json_build_object('symbols', json_build_array(p_symbol))::text;
    END IF;
    RETURN v_market;
END;
$$;

-- 007's market_trade; only the wallet update differs (3. above).
CREATE OR REPLACE FUNCTION market_trade(
    p_side text,
    p_user_id bigint,
    p_symbol text,
    p_quantity numeric,
    p_quote_quantity numeric,
    p_price_guard numeric,
    p_price numeric,
    p_price_at timestamptz,
    p_price_valid_ms integer,
    p_idempotency_key text
)
RETURNS movement_result
LANGUAGE plpgsql AS $$
DECLARE
    v_market         trade_market := trade_market(p_symbol);
    v_hash           bytea := order_hash(p_side, p_symbol, p_quantity, p_quote_quantity, p_price_guard);
    v_first          text;
    v_second         text;
    v_first_id       bigint;
    v_first_balance  numeric;
    v_first_ctid     tid;
    v_second_id      bigint;
    v_second_balance numeric;
    v_second_ctid    tid;
    v_base_id        bigint;
    v_base_balance   numeric;
    v_base_ctid      tid;
    v_quote_id       bigint;
    v_quote_balance  numeric;
    v_quote_ctid     tid;
    v_tx_id          bigint;
    v_quantity       numeric;
    v_notional       numeric;  -- what the buyer pays, or what the seller gets before the fee
    v_fee            numeric;
    v_base_delta     numeric;
    v_quote_delta    numeric;
    v_base_fee       numeric := 0;
    v_quote_fee      numeric := 0;
    v_result         movement_result;
    v_updated        integer;
BEGIN
    IF v_market.base COLLATE "C" < v_market.quote COLLATE "C" THEN
        v_first := v_market.base;
        v_second := v_market.quote;
    ELSE
        v_first := v_market.quote;
        v_second := v_market.base;
    END IF;
    SELECT w.id, w.balance, w.ctid INTO v_first_id, v_first_balance, v_first_ctid
    FROM accounts AS w
    WHERE w.user_id = p_user_id
      AND w.asset = v_first
    FOR UPDATE;
    IF FOUND THEN
        SELECT w.id, w.balance, w.ctid INTO v_second_id, v_second_balance, v_second_ctid
        FROM accounts AS w
        WHERE w.user_id = p_user_id
          AND w.asset = v_second
        FOR UPDATE;
    END IF;
    IF v_first = v_market.base THEN
        v_base_id := v_first_id;
        v_base_balance := v_first_balance;
        v_base_ctid := v_first_ctid;
        v_quote_id := v_second_id;
        v_quote_balance := v_second_balance;
        v_quote_ctid := v_second_ctid;
    ELSE
        v_base_id := v_second_id;
        v_base_balance := v_second_balance;
        v_base_ctid := v_second_ctid;
        v_quote_id := v_first_id;
        v_quote_balance := v_first_balance;
        v_quote_ctid := v_first_ctid;
    END IF;
    IF v_base_id IS NULL OR v_quote_id IS NULL THEN
        -- A first trade in this asset: create the missing wallet, locking in order
        -- (the second wallet is not locked above unless the first one exists).
        SELECT * INTO v_base_id, v_base_balance, v_quote_id, v_quote_balance
        FROM lock_trade_wallets(p_user_id, v_market.base, v_market.quote);
        SELECT w.ctid INTO v_base_ctid FROM accounts AS w WHERE w.id = v_base_id;
        SELECT w.ctid INTO v_quote_ctid FROM accounts AS w WHERE w.id = v_quote_id;
    END IF;

    -- The order's checks. A replay is answered whatever they say now (the price may have
    -- moved, the funds gone): on any error, the key is looked up before re-raising.
    BEGIN
        v_quantity := order_quantity(v_market, p_side, p_quantity, p_quote_quantity, p_price_guard,
                                     p_price, p_price_valid_ms);
        IF p_side = 'buy' THEN
            v_notional := round_up(v_quantity * p_price, v_market.quote_scale);
            v_fee := round_up(v_quantity * v_market.fee_rate, v_market.base_scale);
            IF v_fee >= v_quantity THEN
                -- Only with a market set up so that min_notional cannot cover the fee.
                RAISE EXCEPTION USING ERRCODE = 'EX011', MESSAGE = 'the order is too small to cover its fee',
                    DETAIL = json_build_object('min_notional', v_market.min_notional::text)::text;
            END IF;
            PERFORM check_funds(v_market.quote, v_quote_balance, v_notional);
            v_base_delta := v_quantity - v_fee;
            v_quote_delta := -v_notional;
            v_base_fee := v_fee;
        ELSE
            v_notional := trunc(v_quantity * p_price, v_market.quote_scale);
            v_fee := round_up(v_notional * v_market.fee_rate, v_market.quote_scale);
            IF v_fee >= v_notional THEN
                RAISE EXCEPTION USING ERRCODE = 'EX011', MESSAGE = 'the order is too small to cover its fee',
                    DETAIL = json_build_object('min_notional', v_market.min_notional::text)::text;
            END IF;
            PERFORM check_funds(v_market.base, v_base_balance, v_quantity);
            v_base_delta := -v_quantity;
            v_quote_delta := v_notional - v_fee;
            v_quote_fee := v_fee;
        END IF;
    EXCEPTION WHEN OTHERS THEN  -- (OTHERS does not catch a cancel or a statement timeout)
        -- A replay whose checks would fail now is still a replay.
        v_tx_id := earlier_transaction(p_user_id, p_idempotency_key, v_hash);
        IF v_tx_id IS NOT NULL THEN
            RETURN movement_result(v_tx_id, true);
        END IF;
        RAISE;
    END;

    -- The balances after are known: both wallets are locked. A conflict means a replay.
    INSERT INTO transactions (user_id, kind, idempotency_key, request_hash, asset, amount, balance_after,
                              symbol, quote_asset, price, quote_qty, fee, fee_asset, price_at,
                              quote_balance_after)
    VALUES (p_user_id, p_side, p_idempotency_key, v_hash, v_market.base, v_quantity,
            v_base_balance + v_base_delta,
            v_market.symbol, v_market.quote, p_price, v_notional, v_fee,
            CASE p_side WHEN 'buy' THEN v_market.base ELSE v_market.quote END, p_price_at,
            v_quote_balance + v_quote_delta)
    ON CONFLICT ON CONSTRAINT transactions_user_key DO NOTHING
    RETURNING id, kind, asset, amount, balance_after, symbol, quote_asset, price, quote_qty,
              fee, fee_asset, price_at, created_at, false, quote_balance_after
    INTO v_result;
    IF NOT FOUND THEN
        RETURN movement_result(earlier_transaction(p_user_id, p_idempotency_key, v_hash), true);
    END IF;

    -- Both wallets in one statement, found by their row versions (ctid): they are locked
    -- above, so those stay put until commit, and a TID scan needs no index look-up nor
    -- statistics (`id IN (...)` is planned as a sequential scan on a small table).
    UPDATE accounts
    SET balance = CASE id WHEN v_base_id THEN v_result.balance_after ELSE v_result.quote_balance_after END,
        updated_at = now()
    WHERE ctid = ANY (ARRAY[v_base_ctid, v_quote_ctid]);
    GET DIAGNOSTICS v_updated = ROW_COUNT;
    IF v_updated <> 2 THEN  -- a row version moved while locked: impossible, and never silent
        RAISE EXCEPTION 'market_trade: % wallet rows updated, 2 expected', v_updated;
    END IF;

    -- The house `market` account takes the other side of both legs, `fees` the fee;
    -- zero amounts are left out. The entries sum to zero per asset.
    INSERT INTO entries (transaction_id, account_id, asset, amount)
    SELECT v_result.id, e.account_id, e.asset, e.amount
    FROM (VALUES (v_base_id, v_market.base, v_base_delta),
                 (v_market.base_market_account_id, v_market.base, -v_base_delta - v_base_fee),
                 (v_market.base_fees_account_id, v_market.base, v_base_fee),
                 (v_quote_id, v_market.quote, v_quote_delta),
                 (v_market.quote_market_account_id, v_market.quote, -v_quote_delta - v_quote_fee),
                 (v_market.quote_fees_account_id, v_market.quote, v_quote_fee)
         ) AS e (account_id, asset, amount)
    WHERE e.amount <> 0;
    RETURN v_result;
END;
$$;
