-- Market trades: buy() and sell() at a price the application passes in, one shared
-- body (market_trade), and the helpers only trades use.
--
-- Objects: trade_market(), lock_trade_wallets(), order_hash(), order_quantity(),
-- market_trade(), buy(), sell().
-- Called by: sql/queries/buy.sql, sell.sql, and movements() (movement_batches.sql).
-- Types they use (schema, changed only by a migration): trade_market, movement_result.
--
-- The application reads the price from its cache before the call, so no network call
-- happens while a wallet is locked. It passes NULL when it has no price young enough
-- (TRADE_PRICE_MAX_AGE_MS): the function then still replays an earlier call with the
-- same idempotency key, and otherwise refuses with price_unavailable. It also passes
-- how much longer the price stays young enough (p_price_valid_ms): a trade that waited
-- longer than that for a wallet lock is refused the same way, never filled on an older
-- price. (A duration, not a deadline, so the two hosts' clocks need not agree; NULL,
-- as from psql, means no limit.)
--
-- Amounts (what moves, and why it favours the house):
--   quantity         the base quantity traded, on the market's qty_step.
--   quote_quantity   instead of quantity, as Binance's quoteOrderQty: the quantity is
--                    the largest on the step whose notional (quantity x price) does
--                    not exceed it.
--   buy              the user pays the notional rounded UP to the quote's scale, and
--                    receives the quantity less the fee (fee_rate x quantity, rounded
--                    UP to the base's scale).
--   sell             the user gives the quantity, and receives the notional rounded
--                    DOWN to the quote's scale less the fee (fee_rate x that, rounded UP).
-- As on Binance, the fee is taken from the asset the user receives. The house `market`
-- account is the counterparty of both legs, the house `fees` account takes the fee.
--
-- Funds: an order may spend only what is available, balance - locked (locked: what
-- resting limit orders reserve, sql/functions/orders.sql).
--
-- Locks: the user's base and quote wallets, FOR UPDATE, in asset-code order ("C"
-- collation: BTC before USDT), whatever the side, so two trades of one user never
-- deadlock. Missing wallets are created first (lock_trade_wallets, same order).
--
-- Errors (EX001-EX005 as in ledger.sql; mapped in exchange/http/errors.py):
--   EX006 unknown_symbol          no such market                                    (404)
--   EX007 market_inactive         the market's `active` is false                    (409)
--   EX008 exactly_one_quantity    neither or both of quantity and quote_quantity    (422)
--   EX009 quantity_off_step       quantity not a multiple of the market's qty_step  (422)
--   EX010 quantity_out_of_range   quantity outside [min_qty, max_qty]               (422)
--   EX011 below_min_notional      quantity x price below the market's min_notional  (422)
--   EX012 price_moved             price above max_price (buy) / below min_price     (409)
--   EX013 price_unavailable       no usable price, or it expired during a lock wait (503)
--
-- Tuned by: lock_timeout (DB_LOCK_TIMEOUT_MS), TRADE_PRICE_MAX_AGE_MS (the application),
-- markets' qty_step, min_qty, max_qty, min_notional, fee_rate and active.
--
-- Runs as it stands: psql -1 -f sql/functions/trades.sql.

-- Everything a trade needs about its market, one row of trade_markets (kept by the
-- triggers of markets.sql). Raises EX006.
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

-- The user's base and quote wallets, both locked FOR UPDATE (created empty first if
-- missing), always in asset-code order ("C" collation): two trades of one user lock in
-- the same order whatever their market and side, so they never deadlock.
CREATE OR REPLACE FUNCTION lock_trade_wallets(
    p_user_id bigint,
    p_base text,
    p_quote text,
    OUT base_wallet_id bigint,
    OUT base_balance numeric,
    OUT quote_wallet_id bigint,
    OUT quote_balance numeric
)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_base COLLATE "C" < p_quote COLLATE "C" THEN
        SELECT * INTO base_wallet_id, base_balance FROM lock_wallet(p_user_id, p_base);
        SELECT * INTO quote_wallet_id, quote_balance FROM lock_wallet(p_user_id, p_quote);
    ELSE
        SELECT * INTO quote_wallet_id, quote_balance FROM lock_wallet(p_user_id, p_quote);
        SELECT * INTO base_wallet_id, base_balance FROM lock_wallet(p_user_id, p_base);
    END IF;
END;
$$;

-- The fingerprint of an order request, for idempotency. Numbers are compared by value
-- (0.010 and 0.01 are the same order); an absent field prints as nothing, and each
-- field keeps its place, so quantity 1 and quote_quantity 1 differ. STABLE as format()
-- is, so that the planner inlines it.
CREATE OR REPLACE FUNCTION order_hash(
    p_side text,
    p_symbol text,
    p_quantity numeric,
    p_quote_quantity numeric,
    p_price_guard numeric
)
RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT sha256(convert_to(format('%s %s q=%s qq=%s guard=%s', p_side, p_symbol,
                                    trim_scale(p_quantity), trim_scale(p_quote_quantity),
                                    trim_scale(p_price_guard)), 'UTF8'))
$$;

-- The base quantity an order trades, at the base's scale, after every market rule:
-- active (EX007), exactly one of quantity and quote_quantity (EX008), amounts (EX001,
-- EX002), step (EX009), a usable price (EX013), the price guard (EX012), minimum
-- notional (EX011) and quantity range (EX010). p_price_guard is max_price for a buy,
-- min_price for a sell. Call it with the wallets locked: the price's validity is
-- checked against the time spent waiting for them.
CREATE OR REPLACE FUNCTION order_quantity(
    p_market trade_market,
    p_side text,
    p_quantity numeric,
    p_quote_quantity numeric,
    p_price_guard numeric,
    p_price numeric,
    p_price_valid_ms integer
)
RETURNS numeric
LANGUAGE plpgsql AS $$  -- not STABLE: it reads clock_timestamp()
DECLARE
    v_quantity        numeric;
    v_quote_quantity  numeric;
    v_notional        numeric;
BEGIN
    IF NOT p_market.active THEN
        RAISE EXCEPTION USING ERRCODE = 'EX007',
            MESSAGE = format('market %s is not trading', p_market.symbol),
            DETAIL = json_build_object('symbol', p_market.symbol)::text;
    END IF;
    IF (p_quantity IS NULL) = (p_quote_quantity IS NULL) THEN
        RAISE EXCEPTION USING ERRCODE = 'EX008',
            MESSAGE = 'give exactly one of quantity and quote_quantity',
            DETAIL = json_build_object('fields', json_build_array('quantity', 'quote_quantity'))::text;
    END IF;

    IF p_quantity IS NOT NULL THEN
        v_quantity := checked_amount(p_market.base, p_quantity, 'quantity');
        IF mod(v_quantity, p_market.qty_step) <> 0 THEN
            RAISE EXCEPTION USING ERRCODE = 'EX009',
                MESSAGE = format('quantity must be a multiple of %s', p_market.qty_step),
                DETAIL = json_build_object('field', 'quantity', 'step', p_market.qty_step::text)::text;
        END IF;
    ELSE
        v_quote_quantity := checked_amount(p_market.quote, p_quote_quantity, 'quote_quantity');
    END IF;
    -- NaN sorts above Infinity in PostgreSQL: `< 'Infinity'` refuses both.
    IF p_price_guard IS NOT NULL AND NOT (p_price_guard > 0 AND p_price_guard < 'Infinity') THEN
        RAISE EXCEPTION USING ERRCODE = 'EX001',
            MESSAGE = 'a price guard must be a positive number',
            DETAIL = json_build_object('field', CASE p_side WHEN 'buy' THEN 'max_price' ELSE 'min_price' END)::text;
    END IF;

    IF p_price IS NULL OR NOT (p_price > 0 AND p_price < 'Infinity') THEN
        RAISE EXCEPTION USING ERRCODE = 'EX013',
            MESSAGE = format('no recent price for %s; retry shortly', p_market.symbol),
            DETAIL = json_build_object('symbol', p_market.symbol)::text;
    END IF;
    IF clock_timestamp() > statement_timestamp() + p_price_valid_ms * interval '1 millisecond' THEN
        RAISE EXCEPTION USING ERRCODE = 'EX013',
            MESSAGE = format('the price of %s grew too old while the order waited; retry', p_market.symbol),
            DETAIL = json_build_object('symbol', p_market.symbol, 'reason', 'expired_while_waiting')::text;
    END IF;
    IF (p_side = 'buy' AND p_price > p_price_guard) OR (p_side = 'sell' AND p_price < p_price_guard) THEN
        RAISE EXCEPTION USING ERRCODE = 'EX012',
            MESSAGE = format('the price is %s, past your %s of %s', p_price,
                             CASE p_side WHEN 'buy' THEN 'max_price' ELSE 'min_price' END, p_price_guard),
            DETAIL = json_build_object('price', p_price::text,
                                       CASE p_side WHEN 'buy' THEN 'max_price' ELSE 'min_price' END,
                                       p_price_guard::text)::text;
    END IF;

    IF v_quantity IS NULL THEN
        -- div() truncates exactly: the most steps whose notional fits in quote_quantity.
        -- (check_market_scale keeps the step within the base's scale.)
        v_quantity := trunc(div(v_quote_quantity, p_price * p_market.qty_step) * p_market.qty_step,
                            p_market.base_scale);
    END IF;
    v_notional := v_quantity * p_price;
    IF v_quantity = 0 OR v_notional < p_market.min_notional THEN
        RAISE EXCEPTION USING ERRCODE = 'EX011',
            MESSAGE = format('the order is worth %s %s; the minimum is %s', round(v_notional, p_market.quote_scale),
                             p_market.quote, p_market.min_notional),
            DETAIL = json_build_object('notional', round(v_notional, p_market.quote_scale)::text,
                                       'min_notional', p_market.min_notional::text)::text;
    END IF;
    IF v_quantity < p_market.min_qty OR v_quantity > p_market.max_qty THEN
        RAISE EXCEPTION USING ERRCODE = 'EX010',
            MESSAGE = format('quantity must be between %s and %s', p_market.min_qty, p_market.max_qty),
            DETAIL = json_build_object('field', 'quantity', 'quantity', v_quantity::text,
                                       'min', p_market.min_qty::text, 'max', p_market.max_qty::text)::text;
    END IF;
    RETURN v_quantity;
END;
$$;

-- A market buy (p_side 'buy': pays quote, receives base less the fee, in base) or sell
-- ('sell': gives base, receives quote less the fee, in quote). p_price_guard is the
-- buy's max_price or the sell's min_price. Locks: the user's base and quote wallets,
-- in asset-code order ("C" collation).
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
    v_first_locked   numeric;
    v_second_id      bigint;
    v_second_balance numeric;
    v_second_ctid    tid;
    v_second_locked  numeric;
    v_base_id        bigint;
    v_base_balance   numeric;
    v_base_ctid      tid;
    v_base_locked    numeric;
    v_quote_id       bigint;
    v_quote_balance  numeric;
    v_quote_ctid     tid;
    v_quote_locked   numeric;
    v_tx_id          bigint;
    v_quantity       numeric;
    v_notional       numeric;  -- what the buyer pays, or what the seller gets before the fee
    v_fee            numeric;
    v_base_delta     numeric;
    v_quote_delta    numeric;
    v_base_fee       numeric := 0::numeric;
    v_quote_fee      numeric := 0::numeric;
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
    SELECT w.id, w.balance, w.ctid, w.locked INTO v_first_id, v_first_balance, v_first_ctid, v_first_locked
    FROM accounts AS w
    WHERE w.user_id = p_user_id
      AND w.asset = v_first
    FOR UPDATE;
    IF FOUND THEN
        SELECT w.id, w.balance, w.ctid, w.locked INTO v_second_id, v_second_balance, v_second_ctid, v_second_locked
        FROM accounts AS w
        WHERE w.user_id = p_user_id
          AND w.asset = v_second
        FOR UPDATE;
    END IF;
    IF v_first = v_market.base THEN
        v_base_id := v_first_id;
        v_base_balance := v_first_balance;
        v_base_ctid := v_first_ctid;
        v_base_locked := v_first_locked;
        v_quote_locked := v_second_locked;
        v_quote_id := v_second_id;
        v_quote_balance := v_second_balance;
        v_quote_ctid := v_second_ctid;
    ELSE
        v_base_id := v_second_id;
        v_base_balance := v_second_balance;
        v_base_ctid := v_second_ctid;
        v_base_locked := v_second_locked;
        v_quote_locked := v_first_locked;
        v_quote_id := v_first_id;
        v_quote_balance := v_first_balance;
        v_quote_ctid := v_first_ctid;
    END IF;
    IF v_base_id IS NULL OR v_quote_id IS NULL THEN
        -- A first trade in this asset: create the missing wallet, locking in order
        -- (the second wallet is not locked above unless the first one exists).
        SELECT * INTO v_base_id, v_base_balance, v_quote_id, v_quote_balance
        FROM lock_trade_wallets(p_user_id, v_market.base, v_market.quote);
        SELECT w.ctid, w.locked INTO v_base_ctid, v_base_locked FROM accounts AS w WHERE w.id = v_base_id;
        SELECT w.ctid, w.locked INTO v_quote_ctid, v_quote_locked FROM accounts AS w WHERE w.id = v_quote_id;
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
            PERFORM check_funds(v_market.quote, v_quote_balance - v_quote_locked, v_notional);
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
            PERFORM check_funds(v_market.base, v_base_balance - v_base_locked, v_quantity);
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

-- buy and sell: what the application calls (sql/queries/buy.sql, sell.sql).
CREATE OR REPLACE FUNCTION buy(
    p_user_id bigint,
    p_symbol text,
    p_quantity numeric,
    p_quote_quantity numeric,
    p_max_price numeric,
    p_price numeric,
    p_price_at timestamptz,
    p_price_valid_ms integer,
    p_idempotency_key text
)
RETURNS movement_result
LANGUAGE plpgsql AS $$
BEGIN
    RETURN market_trade('buy', p_user_id, p_symbol, p_quantity, p_quote_quantity, p_max_price,
                        p_price, p_price_at, p_price_valid_ms, p_idempotency_key);
END;
$$;

CREATE OR REPLACE FUNCTION sell(
    p_user_id bigint,
    p_symbol text,
    p_quantity numeric,
    p_quote_quantity numeric,
    p_min_price numeric,
    p_price numeric,
    p_price_at timestamptz,
    p_price_valid_ms integer,
    p_idempotency_key text
)
RETURNS movement_result
LANGUAGE plpgsql AS $$
BEGIN
    RETURN market_trade('sell', p_user_id, p_symbol, p_quantity, p_quote_quantity, p_min_price,
                        p_price, p_price_at, p_price_valid_ms, p_idempotency_key);
END;
$$;
