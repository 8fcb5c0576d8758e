-- 005: deposit, withdraw, buy and sell, same behaviour, fewer statements.
--
-- Nothing here changes what a movement does, what it locks, the order of its checks,
-- or its errors (002 and 003 document those). It changes how much PostgreSQL works
-- per call, measured with pgbench on sql/bench/movements/*.sql (see that folder):
--   * The hot path runs its statements directly instead of through helper functions
--     called in FROM (`SELECT * FROM lock_wallet(...)`): each such call is a
--     query of its own, with its own executor start and a materialised result.
--     The helpers stay, for the rare path (a wallet created on first use) and for
--     anyone who calls them from psql.
--   * The result comes from INSERT ... RETURNING instead of reading the row back
--     (movement_result() still builds a replay's answer).
--   * deposit and withdraw share one body (wallet_movement), buy and sell share
--     another (market_trade), so each rule is written once.
--   * A trade reads its market's four house accounts from market_accounts, one
--     indexed row, instead of joining accounts four times on every call.

-- The house accounts a market's trades post to: one row per market, kept by trigger
-- from markets and accounts (a market added, or its base/quote changed, by a DBA).
CREATE TABLE market_accounts (
    symbol                   text PRIMARY KEY REFERENCES markets (symbol),
    base_market_account_id   bigint NOT NULL REFERENCES accounts (id),
    quote_market_account_id  bigint NOT NULL REFERENCES accounts (id),
    base_fees_account_id     bigint NOT NULL REFERENCES accounts (id),
    quote_fees_account_id    bigint NOT NULL REFERENCES accounts (id)
);

CREATE FUNCTION refresh_market_accounts()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO market_accounts (symbol, base_market_account_id, quote_market_account_id,
                                 base_fees_account_id, quote_fees_account_id)
    VALUES (NEW.symbol, house_account('market', NEW.base), house_account('market', NEW.quote),
            house_account('fees', NEW.base), house_account('fees', NEW.quote))
    ON CONFLICT (symbol) DO UPDATE
    SET base_market_account_id = EXCLUDED.base_market_account_id,
        quote_market_account_id = EXCLUDED.quote_market_account_id,
        base_fees_account_id = EXCLUDED.base_fees_account_id,
        quote_fees_account_id = EXCLUDED.quote_fees_account_id;
    RETURN NEW;
END;
$$;

CREATE TRIGGER markets_accounts
AFTER INSERT OR UPDATE OF symbol, base, quote ON markets
FOR EACH ROW EXECUTE FUNCTION refresh_market_accounts();

INSERT INTO market_accounts (symbol, base_market_account_id, quote_market_account_id,
                             base_fees_account_id, quote_fees_account_id)
SELECT m.symbol, house_account('market', m.base), house_account('market', m.quote),
       house_account('fees', m.base), house_account('fees', m.quote)
FROM markets AS m;

-- Same result as 003's trade_market(), from market_accounts. Raises EX006.
CREATE OR REPLACE FUNCTION trade_market(p_symbol text)
RETURNS trade_market
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_market  trade_market;
BEGIN
    SELECT m.symbol, m.base, m.quote, b.scale, q.scale, m.qty_step, m.min_qty, m.max_qty,
           m.min_notional, m.fee_rate, m.active,
           ma.base_market_account_id, ma.quote_market_account_id,
           ma.base_fees_account_id, ma.quote_fees_account_id
    INTO v_market
    FROM markets AS m
    JOIN market_accounts AS ma ON ma.symbol = m.symbol
    JOIN assets AS b ON b.code = m.base
    JOIN assets AS q ON q.code = m.quote
    WHERE m.symbol = p_symbol;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'EX006', MESSAGE = format('unknown symbol %s', p_symbol),
            DETAIL = json_build_object('symbols', json_build_array(p_symbol))::text;
    END IF;
    RETURN v_market;
END;
$$;

-- deposit (p_kind 'deposit') or withdrawal ('withdrawal') between the user's wallet and
-- the house `external` account. Locks: the user's wallet of p_asset.
CREATE FUNCTION wallet_movement(
    p_kind text,
    p_user_id bigint,
    p_asset text,
    p_amount numeric,
    p_idempotency_key text
)
RETURNS movement_result
LANGUAGE plpgsql AS $$
DECLARE
    v_amount       numeric := checked_amount(p_asset, p_amount, 'amount');
    v_delta        numeric := CASE p_kind WHEN 'deposit' THEN v_amount ELSE -v_amount END;
    v_hash         bytea := sha256(convert_to(concat_ws(' ', p_kind, p_asset, v_amount), 'UTF8'));
    v_external_id  bigint;
    v_wallet_id    bigint;
    v_balance      numeric;
    v_tx_id        bigint;
    v_result       movement_result;
BEGIN
    SELECT a.id INTO v_external_id
    FROM accounts AS a
    WHERE a.user_id IS NULL
      AND a.kind = 'external'
      AND a.asset = p_asset;

    SELECT w.id, w.balance INTO v_wallet_id, v_balance
    FROM accounts AS w
    WHERE w.user_id = p_user_id
      AND w.asset = p_asset
    FOR UPDATE;
    IF NOT FOUND THEN
        SELECT * INTO v_wallet_id, v_balance FROM lock_wallet(p_user_id, p_asset);
    END IF;

    v_tx_id := earlier_transaction(p_user_id, p_idempotency_key, v_hash);
    IF v_tx_id IS NOT NULL THEN
        RETURN movement_result(v_tx_id, true);
    END IF;

    IF v_balance + v_delta < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'EX004',
            MESSAGE = format('insufficient %s: %s available', p_asset, v_balance),
            DETAIL = json_build_object('asset', p_asset, 'available', v_balance::text,
                                       'requested', v_amount::text)::text;
    END IF;

    UPDATE accounts
    SET balance = balance + v_delta,
        updated_at = now()
    WHERE id = v_wallet_id
    RETURNING balance INTO v_balance;

    INSERT INTO transactions (user_id, kind, idempotency_key, request_hash, asset, amount, balance_after)
    VALUES (p_user_id, p_kind, p_idempotency_key, v_hash, p_asset, v_amount, v_balance)
    RETURNING id, kind, asset, amount, balance_after, symbol, quote_asset, price, quote_qty,
              fee, fee_asset, price_at, created_at, false, quote_balance_after
    INTO v_result;

    INSERT INTO entries (transaction_id, account_id, asset, amount)
    VALUES (v_result.id, v_wallet_id, p_asset, v_delta),
           (v_result.id, v_external_id, p_asset, -v_delta);
    RETURN v_result;
END;
$$;

-- 002's deposit and withdraw, same signatures, now one shared body.
CREATE OR REPLACE FUNCTION deposit(p_user_id bigint, p_asset text, p_amount numeric, p_idempotency_key text)
RETURNS movement_result
LANGUAGE plpgsql AS $$
BEGIN
    RETURN wallet_movement('deposit', p_user_id, p_asset, p_amount, p_idempotency_key);
END;
$$;

CREATE OR REPLACE FUNCTION withdraw(p_user_id bigint, p_asset text, p_amount numeric, p_idempotency_key text)
RETURNS movement_result
LANGUAGE plpgsql AS $$
BEGIN
    RETURN wallet_movement('withdrawal', p_user_id, p_asset, p_amount, p_idempotency_key);
END;
$$;

-- A market buy (p_side 'buy': pays quote, receives base less the fee, in base) or sell
-- ('sell': gives base, receives quote less the fee, in quote). p_price_guard is the
-- buy's max_price or the sell's min_price. Locks: the user's base and quote wallets,
-- in asset-code order ("C" collation), as 003's lock_trade_wallets.
CREATE FUNCTION market_trade(
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

    v_tx_id := earlier_transaction(p_user_id, p_idempotency_key, v_hash);
    IF v_tx_id IS NOT NULL THEN
        RETURN movement_result(v_tx_id, true);
    END IF;

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

    UPDATE accounts
    SET balance = balance + v_base_delta,
        updated_at = now()
    WHERE id = v_base_id
    RETURNING balance INTO v_base_balance;

    UPDATE accounts
    SET balance = balance + v_quote_delta,
        updated_at = now()
    WHERE id = v_quote_id
    RETURNING balance INTO v_quote_balance;

    INSERT INTO transactions (user_id, kind, idempotency_key, request_hash, asset, amount, balance_after,
                              symbol, quote_asset, price, quote_qty, fee, fee_asset, price_at,
                              quote_balance_after)
    VALUES (p_user_id, p_side, p_idempotency_key, v_hash, v_market.base, v_quantity, v_base_balance,
            v_market.symbol, v_market.quote, p_price, v_notional, v_fee,
            CASE p_side WHEN 'buy' THEN v_market.base ELSE v_market.quote END, p_price_at,
            v_quote_balance)
    RETURNING id, kind, asset, amount, balance_after, symbol, quote_asset, price, quote_qty,
              fee, fee_asset, price_at, created_at, false, quote_balance_after
    INTO v_result;

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

-- 003's buy and sell, same signatures, now one shared body.
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
