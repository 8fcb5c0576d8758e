-- 003: market buys and sells at a price the application passes in, one PL/pgSQL
-- function each (buy, sell), and the helpers they share.
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
-- Errors, continuing 002's list (EX001-EX005) and mapped in exchange/http/errors.py:
--   EX006 unknown_symbol          no such market                                    (404)
--   EX007 market_inactive         the market's `active` is false                    (409)
--   EX008 exactly_one_quantity    neither or both of quantity and quote_quantity    (422)
--   EX009 quantity_off_step       quantity not a multiple of the market's qty_step  (422)
--   EX010 quantity_out_of_range   quantity outside [min_qty, max_qty]               (422)
--   EX011 below_min_notional      quantity x price below the market's min_notional  (422)
--   EX012 price_moved             price above max_price (buy) / below min_price     (409)
--   EX013 price_unavailable       no usable price, or it expired during a lock wait (503)
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

-- A trade's second balance: the quote wallet's right after the trade (balance_after
-- is the base wallet's), so a replay answers both balances exactly as the first call.
ALTER TABLE transactions ADD COLUMN quote_balance_after numeric;

ALTER TYPE movement_result ADD ATTRIBUTE quote_balance_after numeric;

CREATE OR REPLACE FUNCTION movement_result(p_transaction_id bigint, p_replayed boolean)
RETURNS movement_result
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_result  movement_result;
BEGIN
    SELECT t.id, t.kind, t.asset, t.amount, t.balance_after, t.symbol, t.quote_asset,
           t.price, t.quote_qty, t.fee, t.fee_asset, t.price_at, t.created_at, p_replayed,
           t.quote_balance_after
    INTO v_result
    FROM transactions AS t
    WHERE t.id = p_transaction_id;
    RETURN v_result;
END;
$$;

-- 002's amount check, naming the request field in its errors (a trade's `quantity` or
-- `quote_quantity`). 002's two-argument checked_amount now calls this with 'amount'.
CREATE FUNCTION checked_amount(p_asset text, p_amount numeric, p_field text)
RETURNS numeric
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_scale  smallint;
    v_max    numeric;
BEGIN
    SELECT a.scale, a.max_amount INTO v_scale, v_max
    FROM assets AS a
    WHERE a.code = p_asset;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'EX003', MESSAGE = format('unknown asset %s', p_asset),
            DETAIL = json_build_object('asset', p_asset)::text;
    END IF;
    -- NaN compares greater than every number in PostgreSQL, so it fails `<= v_max`.
    IF p_amount IS NULL OR NOT (p_amount > 0 AND p_amount <= v_max) THEN
        RAISE EXCEPTION USING ERRCODE = 'EX001',
            MESSAGE = format('%s must be greater than 0 and at most %s', p_field, v_max),
            DETAIL = json_build_object('field', p_field, 'max', v_max::text)::text;
    END IF;
    IF p_amount <> round(p_amount, v_scale) THEN
        RAISE EXCEPTION USING ERRCODE = 'EX002',
            MESSAGE = format('%s allows at most %s decimals', p_asset, v_scale),
            DETAIL = json_build_object('field', p_field, 'scale', v_scale)::text;
    END IF;
    RETURN round(p_amount, v_scale);
END;
$$;

CREATE OR REPLACE FUNCTION checked_amount(p_asset text, p_amount numeric)
RETURNS numeric
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN checked_amount(p_asset, p_amount, 'amount');
END;
$$;

-- p_value (>= 0) rounded up to p_scale decimals: the fee, and what a buyer pays.
-- (trunc() rounds down: what a seller receives.)
-- One unit is 1 / 10^scale, exact at every scale (power(10::numeric, -18) keeps only
-- 16 decimals and would be 0). Neither STRICT nor calling anything non-immutable, so
-- the planner inlines it into the caller's expression instead of running a function.
CREATE FUNCTION round_up(p_value numeric, p_scale integer)
RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
               WHEN trunc(p_value, p_scale) = p_value THEN trunc(p_value, p_scale)
               ELSE round(trunc(p_value, p_scale) + 1 / 10::numeric ^ p_scale, p_scale)
           END
$$;

-- A market's quantities must fit its base asset's scale: a step finer than a unit
-- would make "a multiple of the step" a quantity no wallet can hold.
CREATE FUNCTION check_market_scale()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_scale  smallint;
BEGIN
    SELECT a.scale INTO v_scale
    FROM assets AS a
    WHERE a.code = NEW.base;
    IF NEW.qty_step <> round(NEW.qty_step, v_scale) OR NEW.min_qty <> round(NEW.min_qty, v_scale) THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = format('market %s: qty_step and min_qty must have at most %s decimals (%s''s scale)',
                             NEW.symbol, v_scale, NEW.base);
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER markets_scale
BEFORE INSERT OR UPDATE ON markets
FOR EACH ROW EXECUTE FUNCTION check_market_scale();

-- Everything a trade needs to know about its market, read once before any lock.
CREATE TYPE trade_market AS (
    symbol                     text,
    base                       text,
    quote                      text,
    base_scale                 smallint,
    quote_scale                smallint,
    qty_step                   numeric,
    min_qty                    numeric,
    max_qty                    numeric,
    min_notional               numeric,
    fee_rate                   numeric,
    active                     boolean,
    base_market_account_id     bigint,
    quote_market_account_id    bigint,
    base_fees_account_id       bigint,
    quote_fees_account_id      bigint
);

-- The market with its assets' scales and its house accounts. Raises EX006.
-- Served by markets_pkey, assets_pkey and accounts_house_key.
CREATE FUNCTION trade_market(p_symbol text)
RETURNS trade_market
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_market  trade_market;
BEGIN
    SELECT m.symbol, m.base, m.quote, b.scale, q.scale, m.qty_step, m.min_qty, m.max_qty,
           m.min_notional, m.fee_rate, m.active,
           bm.id, qm.id, bf.id, qf.id
    INTO v_market
    FROM markets AS m
    JOIN assets AS b ON b.code = m.base
    JOIN assets AS q ON q.code = m.quote
    JOIN accounts AS bm ON bm.user_id IS NULL AND bm.kind = 'market' AND bm.asset = m.base
    JOIN accounts AS qm ON qm.user_id IS NULL AND qm.kind = 'market' AND qm.asset = m.quote
    JOIN accounts AS bf ON bf.user_id IS NULL AND bf.kind = 'fees' AND bf.asset = m.base
    JOIN accounts AS qf ON qf.user_id IS NULL AND qf.kind = 'fees' AND qf.asset = m.quote
    WHERE m.symbol = p_symbol;
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
CREATE FUNCTION lock_trade_wallets(
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
CREATE FUNCTION order_hash(
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
CREATE FUNCTION order_quantity(
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

-- Refuse a trade the user cannot pay for (EX004).
CREATE FUNCTION check_funds(p_asset text, p_available numeric, p_needed numeric)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_available < p_needed THEN
        RAISE EXCEPTION USING ERRCODE = 'EX004',
            MESSAGE = format('insufficient %s: %s available', p_asset, p_available),
            DETAIL = json_build_object('asset', p_asset, 'available', p_available::text,
                                       'requested', p_needed::text)::text;
    END IF;
END;
$$;

-- Post a trade whose wallets the caller has locked: the user's base wallet changes by
-- p_base_delta and the quote wallet by p_quote_delta; the fee goes to the house `fees`
-- account of p_fee_asset; the house `market` account takes the other side of both
-- legs. Writes the transaction and its entries (zero amounts left out), which sum to
-- zero per asset. Returns the transaction id.
CREATE FUNCTION post_trade(
    p_user_id bigint,
    p_kind text,
    p_idempotency_key text,
    p_request_hash bytea,
    p_market trade_market,
    p_base_wallet_id bigint,
    p_quote_wallet_id bigint,
    p_price numeric,
    p_price_at timestamptz,
    p_quantity numeric,
    p_quote_qty numeric,
    p_fee numeric,
    p_fee_asset text,
    p_base_delta numeric,
    p_quote_delta numeric
)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_base_fee       numeric := CASE WHEN p_fee_asset = p_market.base THEN p_fee ELSE 0 END;
    v_quote_fee      numeric := CASE WHEN p_fee_asset = p_market.quote THEN p_fee ELSE 0 END;
    v_base_after     numeric;
    v_quote_after    numeric;
    v_tx_id          bigint;
BEGIN
    UPDATE accounts
    SET balance = balance + p_base_delta,
        updated_at = now()
    WHERE id = p_base_wallet_id
    RETURNING balance INTO v_base_after;

    UPDATE accounts
    SET balance = balance + p_quote_delta,
        updated_at = now()
    WHERE id = p_quote_wallet_id
    RETURNING balance INTO v_quote_after;

    INSERT INTO transactions (user_id, kind, idempotency_key, request_hash, asset, amount, balance_after,
                              symbol, quote_asset, price, quote_qty, fee, fee_asset, price_at,
                              quote_balance_after)
    VALUES (p_user_id, p_kind, p_idempotency_key, p_request_hash, p_market.base, p_quantity, v_base_after,
            p_market.symbol, p_market.quote, p_price, p_quote_qty, p_fee, p_fee_asset, p_price_at,
            v_quote_after)
    RETURNING id INTO v_tx_id;

    INSERT INTO entries (transaction_id, account_id, asset, amount)
    SELECT v_tx_id, e.account_id, e.asset, e.amount
    FROM (VALUES (p_base_wallet_id, p_market.base, p_base_delta),
                 (p_market.base_market_account_id, p_market.base, -p_base_delta - v_base_fee),
                 (p_market.base_fees_account_id, p_market.base, v_base_fee),
                 (p_quote_wallet_id, p_market.quote, p_quote_delta),
                 (p_market.quote_market_account_id, p_market.quote, -p_quote_delta - v_quote_fee),
                 (p_market.quote_fees_account_id, p_market.quote, v_quote_fee)
         ) AS e (account_id, asset, amount)
    WHERE e.amount <> 0;
    RETURN v_tx_id;
END;
$$;

-- buy: the user pays quote and receives base less the fee (taken in base).
-- Locks: the user's base and quote wallets, in asset-code order.
-- Raises EX001-EX005 (002) and EX006-EX013 (above).
CREATE FUNCTION buy(
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
DECLARE
    v_market    trade_market := trade_market(p_symbol);
    v_hash      bytea := order_hash('buy', p_symbol, p_quantity, p_quote_quantity, p_max_price);
    v_wallets   record;
    v_tx_id     bigint;
    v_quantity  numeric;
    v_cost      numeric;
    v_fee       numeric;
BEGIN
    SELECT * INTO v_wallets FROM lock_trade_wallets(p_user_id, v_market.base, v_market.quote);
    v_tx_id := earlier_transaction(p_user_id, p_idempotency_key, v_hash);
    IF v_tx_id IS NOT NULL THEN
        RETURN movement_result(v_tx_id, true);
    END IF;

    v_quantity := order_quantity(v_market, 'buy', p_quantity, p_quote_quantity, p_max_price,
                                 p_price, p_price_valid_ms);
    v_cost := round_up(v_quantity * p_price, v_market.quote_scale);
    v_fee := round_up(v_quantity * v_market.fee_rate, v_market.base_scale);
    IF v_fee >= v_quantity THEN
        -- Only with a market set up so that min_notional cannot cover the fee.
        RAISE EXCEPTION USING ERRCODE = 'EX011', MESSAGE = 'the order is too small to cover its fee',
            DETAIL = json_build_object('min_notional', v_market.min_notional::text)::text;
    END IF;
    PERFORM check_funds(v_market.quote, v_wallets.quote_balance, v_cost);

    v_tx_id := post_trade(p_user_id, 'buy', p_idempotency_key, v_hash, v_market,
                          v_wallets.base_wallet_id, v_wallets.quote_wallet_id, p_price, p_price_at,
                          v_quantity, v_cost, v_fee, v_market.base,
                          v_quantity - v_fee, -v_cost);
    RETURN movement_result(v_tx_id, false);
END;
$$;

-- sell: the user gives base and receives quote less the fee (taken in quote).
-- Locks: the user's base and quote wallets, in asset-code order.
-- Raises EX001-EX005 (002) and EX006-EX013 (above).
CREATE FUNCTION sell(
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
DECLARE
    v_market    trade_market := trade_market(p_symbol);
    v_hash      bytea := order_hash('sell', p_symbol, p_quantity, p_quote_quantity, p_min_price);
    v_wallets   record;
    v_tx_id     bigint;
    v_quantity  numeric;
    v_proceeds  numeric;
    v_fee       numeric;
BEGIN
    SELECT * INTO v_wallets FROM lock_trade_wallets(p_user_id, v_market.base, v_market.quote);
    v_tx_id := earlier_transaction(p_user_id, p_idempotency_key, v_hash);
    IF v_tx_id IS NOT NULL THEN
        RETURN movement_result(v_tx_id, true);
    END IF;

    v_quantity := order_quantity(v_market, 'sell', p_quantity, p_quote_quantity, p_min_price,
                                 p_price, p_price_valid_ms);
    v_proceeds := trunc(v_quantity * p_price, v_market.quote_scale);
    v_fee := round_up(v_proceeds * v_market.fee_rate, v_market.quote_scale);
    IF v_fee >= v_proceeds THEN
        RAISE EXCEPTION USING ERRCODE = 'EX011', MESSAGE = 'the order is too small to cover its fee',
            DETAIL = json_build_object('min_notional', v_market.min_notional::text)::text;
    END IF;
    PERFORM check_funds(v_market.base, v_wallets.base_balance, v_quantity);

    v_tx_id := post_trade(p_user_id, 'sell', p_idempotency_key, v_hash, v_market,
                          v_wallets.base_wallet_id, v_wallets.quote_wallet_id, p_price, p_price_at,
                          v_quantity, v_proceeds, v_fee, v_market.quote,
                          -v_quantity, v_proceeds - v_fee);
    RETURN movement_result(v_tx_id, false);
END;
$$;
