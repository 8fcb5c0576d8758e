-- 007: buy and sell find a used idempotency key through the unique constraint, as
-- deposit and withdraw do since 006, so no trade's cost depends on table statistics.
--
-- 005's market_trade looked the key up (earlier_transaction) before the order's checks,
-- because a replay must be answered whatever those checks say now (the price moved past
-- the guard, no fresh price, the funds spent since). On a database without statistics
-- that look-up may be planned on transactions_user_id_idx and filter the user's whole
-- history (006 explains it).
--
-- Now the checks run first, inside a block with an EXCEPTION clause: if one raises, the
-- key is looked up there (an error path, rare) and a replay is answered, or the error
-- is raised again unchanged. If they pass, the transaction row is inserted with
-- ON CONFLICT ON CONSTRAINT transactions_user_key DO NOTHING, and a conflict is a replay
-- (or EX005 for another request). Answers, errors and locks are those of 005: wallets
-- first, in asset-code order; the balances are written from the locked values.
--
-- The block costs a subtransaction per trade (no XID: nothing is written inside it),
-- about what the look-up it replaces cost. Measured with pgbench buy.sql and sell.sql
-- (one client, synchronous_commit=off, alternating with 005): 2,300-2,630 tps against
-- 005's 2,490-2,750, about 3% less on average, inside this machine's run-to-run noise.

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
    v_second_id      bigint;
    v_second_balance numeric;
    v_base_id        bigint;
    v_base_balance   numeric;
    v_quote_id       bigint;
    v_quote_balance  numeric;
    v_tx_id          bigint;
    v_quantity       numeric;
    v_notional       numeric;  -- what the buyer pays, or what the seller gets before the fee
    v_fee            numeric;
    v_base_delta     numeric;
    v_quote_delta    numeric;
    v_base_fee       numeric := 0;
    v_quote_fee      numeric := 0;
    v_result         movement_result;
BEGIN
    IF v_market.base COLLATE "C" < v_market.quote COLLATE "C" THEN
        v_first := v_market.base;
        v_second := v_market.quote;
    ELSE
        v_first := v_market.quote;
        v_second := v_market.base;
    END IF;
    SELECT w.id, w.balance INTO v_first_id, v_first_balance
    FROM accounts AS w
    WHERE w.user_id = p_user_id
      AND w.asset = v_first
    FOR UPDATE;
    IF FOUND THEN
        SELECT w.id, w.balance INTO v_second_id, v_second_balance
        FROM accounts AS w
        WHERE w.user_id = p_user_id
          AND w.asset = v_second
        FOR UPDATE;
    END IF;
    IF v_first = v_market.base THEN
        v_base_id := v_first_id;
        v_base_balance := v_first_balance;
        v_quote_id := v_second_id;
        v_quote_balance := v_second_balance;
    ELSE
        v_base_id := v_second_id;
        v_base_balance := v_second_balance;
        v_quote_id := v_first_id;
        v_quote_balance := v_first_balance;
    END IF;
    IF v_base_id IS NULL OR v_quote_id IS NULL THEN
        -- A first trade in this asset: create the missing wallet, locking in order
        -- (the second wallet is not locked above unless the first one exists).
        SELECT * INTO v_base_id, v_base_balance, v_quote_id, v_quote_balance
        FROM lock_trade_wallets(p_user_id, v_market.base, v_market.quote);
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

    UPDATE accounts
    SET balance = v_result.balance_after,
        updated_at = now()
    WHERE id = v_base_id;

    UPDATE accounts
    SET balance = v_result.quote_balance_after,
        updated_at = now()
    WHERE id = v_quote_id;

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
