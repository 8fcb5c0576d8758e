-- Limit orders: placing one (place_limit_order), cancelling it (cancel_order), and
-- filling the resting orders that a new price crosses (fill_crossed_orders); the
-- trigger that allows only NEW -> final status changes (orders_status_transition).
--
-- Objects: order_request_hash(), order_answer(), place_limit_order(), cancel_order(),
-- fill_crossed_orders(), check_order_transition() and trigger orders_status_transition.
-- Called by: sql/queries/order_place.sql, order_cancel.sql, orders_fill_crossed.sql.
-- Tables and types (schema, migration 015): orders, order_answer, markets.maker_fee_rate, accounts.locked,
-- transactions.order_id.
--
-- Reservation (two-phase, as TigerBeetle's pending transfers): a resting (NEW) order
-- reserves what it may spend, written on the order (locked_asset, locked_amount) and
-- added to the wallet's `locked` in the same transaction. A buy reserves quantity x
-- price of the quote, rounded UP to the quote's scale; a sell the quantity of the base.
-- Withdrawals, market orders and new limit orders may use only balance - locked.
-- Cancelling or filling releases exactly the order's locked_amount.
--
-- Placing (the application passes the live price it read before the call, as for
-- buy() and sell(): no network call while a wallet is locked):
--   marketable (buy: live <= limit; sell: live >= limit)  fills at once at the live
--       price as taker, through market_trade() (trades.sql) with the limit as its
--       price guard, and the order ends FILLED with its transaction linked;
--   not marketable, GTC                                    rests NEW, funds locked;
--   not marketable, IOC or FOK                             EXPIRED, nothing locked.
-- Idempotency: (user_id, idempotency_key) is unique on orders; a replay with the same
-- request answers the order as it is now, another request with the key is EX005.
--
-- Filling: fill_crossed_orders(symbol, price, price_at, batch) fills at most `batch`
-- NEW orders that the price crosses (buy: price <= limit; sell: price >= limit), best
-- limit first, then the oldest, each whole at its own limit price as maker (the
-- market's maker_fee_rate), one buy/sell transaction each (order_id set, idempotency key
-- 'fill order <id>', which no client key can be: client keys have no spaces), with
-- balanced entries against the house market and fees accounts. Set-based: a handful of
-- statements for the whole batch. The caller repeats it until it fills fewer than
-- `batch` (exchange/prices/order_fills.py). A replayed price, two sweeps at once or a
-- crash halfway never fill an order twice: the status change NEW -> FILLED is made
-- under the order's row lock and re-checked there, in the transaction that writes the
-- fill; a crashed sweep rolls back whole, and the next one finds the orders again.
--
-- Locks, in the global order every money function keeps (so fills, cancels, trades,
-- deposits, withdrawals and movements() batches never wait on each other in a circle):
--   1. wallets, FOR UPDATE: users by ascending id, each user's wallets by asset code
--      ("C" collation), as movements() takes users and market_trade() takes assets;
--   2. then order rows (FOR UPDATE, or the UPDATE that changes their status).
-- place_limit_order: the user's base and quote wallets (lock_trade_wallets), then
--   inserts its order. cancel_order: the wallet of the order's locked asset, then the
--   order. fill_crossed_orders: the base and quote wallets of every user of the batch,
--   in one ordered SELECT ... FOR UPDATE, then the batch's orders.
--
-- Errors (EX001-EX013 as in ledger.sql and trades.sql; mapped in exchange/ledger/errors.py):
--   EX015 price_off_tick         limit price not a multiple of the market's tick_size (422)
--   EX016 price_out_of_band      limit price outside [live / 5, live x 5]             (422)
--   EX017 not_found              no such order of this user                            (404)
--   EX018 order_not_open         cancelling an order that is already final             (409)
--   23505 on orders_user_client_order_key: client_order_id already used (409)
--   23514 from check_order_transition: a status change other than NEW -> final.
-- Tuned by: lock_timeout (DB_LOCK_TIMEOUT_MS), the batch size (ORDER_FILL_BATCH, the
-- application), markets' tick_size, maker_fee_rate and the band factor 5 below.
--
-- Runs as it stands: psql -1 -f sql/functions/orders.sql.

-- The fingerprint of a limit order request, for idempotency; numbers compared by value.
CREATE OR REPLACE FUNCTION order_request_hash(
    p_symbol text,
    p_side text,
    p_price numeric,
    p_quantity numeric,
    p_time_in_force text,
    p_client_order_id text
)
RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT sha256(convert_to(format('limit %s %s p=%s q=%s tif=%s coid=%s', p_side, p_symbol,
                                    trim_scale(p_price), trim_scale(p_quantity), p_time_in_force,
                                    p_client_order_id), 'UTF8'))
$$;

-- One order as the API answers it (also for a replay), with its fill transaction.
CREATE OR REPLACE FUNCTION order_answer(p_order_id bigint, p_replayed boolean)
RETURNS order_answer
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_answer  order_answer;
BEGIN
    SELECT o.id, o.symbol, o.side, o.type, o.time_in_force, o.price, o.quantity, o.executed_qty,
           o.cumulative_quote_qty, o.status, o.locked_asset, o.locked_amount, o.client_order_id,
           o.created_at, o.updated_at,
           o.fill_transaction_id, p_replayed
    INTO v_answer
    FROM orders AS o
    WHERE o.id = p_order_id;
    RETURN v_answer;
END;
$$;

CREATE OR REPLACE FUNCTION place_limit_order(
    p_user_id bigint,
    p_symbol text,
    p_side text,
    p_price numeric,
    p_quantity numeric,
    p_time_in_force text,
    p_client_order_id text,
    p_live_price numeric,
    p_live_price_at timestamptz,
    p_price_valid_ms integer,
    p_idempotency_key text
)
RETURNS order_answer
LANGUAGE plpgsql AS $$
DECLARE
    v_market      trade_market := trade_market(p_symbol);
    v_hash        bytea := order_request_hash(p_symbol, p_side, p_price, p_quantity,
                                              p_time_in_force, p_client_order_id);
    v_tick        numeric;
    v_quantity    numeric;
    v_marketable  boolean;
    v_lock_asset  text;
    v_lock        numeric;
    v_wallet_id   bigint;
    v_available   numeric;
    v_order_id    bigint;
    v_earlier     bytea;
    v_trade       movement_result;
BEGIN
    IF p_side NOT IN ('buy', 'sell') OR p_time_in_force NOT IN ('GTC', 'IOC', 'FOK') THEN
        RAISE EXCEPTION USING ERRCODE = 'EX001', MESSAGE = 'side must be buy or sell, time_in_force GTC, IOC or FOK',
            DETAIL = json_build_object('side', p_side, 'time_in_force', p_time_in_force)::text;
    END IF;
    -- The user's base and quote wallets, created if missing, in asset-code order.
    PERFORM lock_trade_wallets(p_user_id, v_market.base, v_market.quote);

    -- A replay answers the order as it is now, whatever today's checks say.
    SELECT o.id, o.request_hash INTO v_order_id, v_earlier
    FROM orders AS o
    WHERE o.user_id = p_user_id
      AND o.idempotency_key = p_idempotency_key;
    IF FOUND THEN
        IF v_earlier <> v_hash THEN
            RAISE EXCEPTION USING ERRCODE = 'EX005',
                MESSAGE = 'this Idempotency-Key was used for a different request',
                DETAIL = json_build_object('order_id', v_order_id)::text;
        END IF;
        RETURN order_answer(v_order_id, true);
    END IF;

    SELECT m.tick_size INTO v_tick FROM markets AS m WHERE m.symbol = v_market.symbol;
    IF NOT (p_price > 0 AND p_price < 'Infinity') OR mod(p_price, v_tick) <> 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'EX015',
            MESSAGE = format('price must be a positive multiple of %s', v_tick),
            DETAIL = json_build_object('field', 'price', 'tick_size', v_tick::text)::text;
    END IF;
    -- Active market, step, range and minimum notional, all at the limit price.
    v_quantity := order_quantity(v_market, p_side, p_quantity, NULL, NULL, p_price, NULL);
    IF p_live_price IS NULL OR NOT (p_live_price > 0 AND p_live_price < 'Infinity') THEN
        RAISE EXCEPTION USING ERRCODE = 'EX013',
            MESSAGE = format('no recent price for %s; retry shortly', v_market.symbol),
            DETAIL = json_build_object('symbol', v_market.symbol)::text;
    END IF;
    IF p_price < p_live_price / 5 OR p_price > p_live_price * 5 THEN
        RAISE EXCEPTION USING ERRCODE = 'EX016',
            MESSAGE = format('price must be between %s and %s (the live price / 5 and x 5)',
                             round(p_live_price / 5, v_market.quote_scale), round(p_live_price * 5, v_market.quote_scale)),
            DETAIL = json_build_object('field', 'price', 'min', round(p_live_price / 5, v_market.quote_scale)::text,
                                       'max', round(p_live_price * 5, v_market.quote_scale)::text)::text;
    END IF;

    v_marketable := CASE p_side WHEN 'buy' THEN p_live_price <= p_price ELSE p_live_price >= p_price END;
    v_lock_asset := CASE p_side WHEN 'buy' THEN v_market.quote ELSE v_market.base END;
    v_lock := CASE p_side WHEN 'buy' THEN round_up(v_quantity * p_price, v_market.quote_scale) ELSE v_quantity END;

    -- A conflict on the idempotency key cannot happen here: the wallets are locked and
    -- the key was looked up under that lock. A used client_order_id raises 23505.
    INSERT INTO orders (user_id, symbol, side, type, time_in_force, price, quantity, status,
                        locked_asset, locked_amount, client_order_id, idempotency_key, request_hash)
    VALUES (p_user_id, v_market.symbol, p_side, 'limit', p_time_in_force, p_price, v_quantity,
            CASE WHEN v_marketable OR p_time_in_force = 'GTC' THEN 'NEW' ELSE 'EXPIRED' END,
            v_lock_asset, 0, p_client_order_id, p_idempotency_key, v_hash)
    RETURNING orders.id INTO v_order_id;

    IF v_marketable THEN
        -- As taker at the live price; the limit is the trade's price guard.
        v_trade := market_trade(p_side, p_user_id, v_market.symbol, v_quantity, NULL, p_price,
                                p_live_price, p_live_price_at, p_price_valid_ms, p_idempotency_key);
        IF v_trade.replayed THEN  -- the key names an earlier market order
            RAISE EXCEPTION USING ERRCODE = 'EX005',
                MESSAGE = 'this Idempotency-Key was used for a different request',
                DETAIL = json_build_object('transaction_id', v_trade.id)::text;
        END IF;
        UPDATE transactions SET order_id = v_order_id WHERE transactions.id = v_trade.id;
        UPDATE orders
        SET status = 'FILLED', executed_qty = v_quantity, cumulative_quote_qty = v_trade.quote_qty,
            fill_transaction_id = v_trade.id, updated_at = now()
        WHERE orders.id = v_order_id;
    ELSIF p_time_in_force = 'GTC' THEN
        SELECT w.id, w.balance - w.locked INTO v_wallet_id, v_available
        FROM accounts AS w
        WHERE w.user_id = p_user_id
          AND w.asset = v_lock_asset;
        PERFORM check_funds(v_lock_asset, v_available, v_lock);
        UPDATE accounts SET locked = locked + v_lock, updated_at = now() WHERE accounts.id = v_wallet_id;
        UPDATE orders SET locked_amount = v_lock WHERE orders.id = v_order_id;
    END IF;
    RETURN order_answer(v_order_id, false);
END;
$$;

-- Cancel one NEW order of the user: its lock is released. Another user's order is EX017
-- (as a missing one), a final one EX018.
CREATE OR REPLACE FUNCTION cancel_order(p_user_id bigint, p_order_id bigint)
RETURNS order_answer
LANGUAGE plpgsql AS $$
DECLARE
    v_asset   text;
    v_status  text;
    v_amount  numeric;
BEGIN
    SELECT o.locked_asset INTO v_asset
    FROM orders AS o
    WHERE o.id = p_order_id
      AND o.user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'EX017', MESSAGE = 'no such order',
            DETAIL = json_build_object('order_id', p_order_id)::text;
    END IF;
    -- The global order: the wallet first, then the order (a fill may have won meanwhile).
    PERFORM 1 FROM accounts AS w WHERE w.user_id = p_user_id AND w.asset = v_asset FOR UPDATE;
    SELECT o.status, o.locked_amount INTO v_status, v_amount
    FROM orders AS o
    WHERE o.id = p_order_id
    FOR UPDATE;
    IF v_status <> 'NEW' THEN
        RAISE EXCEPTION USING ERRCODE = 'EX018', MESSAGE = format('order %s is %s', p_order_id, v_status),
            DETAIL = json_build_object('order_id', p_order_id, 'status', v_status)::text;
    END IF;
    UPDATE accounts SET locked = locked - v_amount, updated_at = now()
    WHERE user_id = p_user_id
      AND asset = v_asset;
    UPDATE orders SET status = 'CANCELED', locked_amount = 0, updated_at = now()
    WHERE id = p_order_id;
    RETURN order_answer(p_order_id, false);
END;
$$;

-- Fill at most p_batch NEW orders of p_symbol that p_price crosses; returns how many
-- were filled. See the header for the rules and the lock order.
CREATE OR REPLACE FUNCTION fill_crossed_orders(
    p_symbol text,
    p_price numeric,
    p_price_at timestamptz,
    p_batch integer
)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_market    trade_market := trade_market(p_symbol);
    v_maker     numeric;
    v_order_ids bigint[];
    v_user_ids  bigint[];
    v_filled    integer;
BEGIN
    SELECT m.maker_fee_rate INTO v_maker FROM markets AS m WHERE m.symbol = v_market.symbol;

    -- The batch: best limit first, then the oldest (ids grow with time).
    -- Served by orders_open_buy_idx and orders_open_sell_idx.
    SELECT array_agg(c.id ORDER BY c.best, c.id), array_agg(DISTINCT c.user_id)
    INTO v_order_ids, v_user_ids
    FROM (
        SELECT u.id, u.user_id, u.best
        FROM (
            (SELECT o.id, o.user_id, -o.price AS best
             FROM orders AS o
             WHERE o.symbol = v_market.symbol AND o.status = 'NEW' AND o.side = 'buy' AND o.price >= p_price
             ORDER BY o.price DESC, o.id
             LIMIT p_batch)
            UNION ALL
            (SELECT o.id, o.user_id, o.price
             FROM orders AS o
             WHERE o.symbol = v_market.symbol AND o.status = 'NEW' AND o.side = 'sell' AND o.price <= p_price
             ORDER BY o.price, o.id
             LIMIT p_batch)
        ) AS u
        ORDER BY u.best, u.id
        LIMIT p_batch
    ) AS c;
    IF v_order_ids IS NULL THEN
        RETURN 0;
    END IF;

    -- 1. Wallets, in the global order: users ascending, assets by "C" collation.
    PERFORM 1
    FROM accounts AS w
    WHERE w.user_id = ANY (v_user_ids)
      AND w.asset IN (v_market.base, v_market.quote)
    ORDER BY w.user_id, w.asset COLLATE "C"
    FOR UPDATE;

    -- 2. The orders, in one statement with everything a fill writes. The status change
    -- is re-checked under each order's row lock: one cancelled or filled meanwhile drops
    -- out. Amounts as market_trade() computes them, at the order's own price, maker fee.
    WITH filled AS (
        UPDATE orders AS o
        SET status = 'FILLED',
            executed_qty = o.quantity,
            cumulative_quote_qty = CASE o.side WHEN 'buy' THEN round_up(o.quantity * o.price, v_market.quote_scale)
                                               ELSE trunc(o.quantity * o.price, v_market.quote_scale) END,
            locked_amount = 0,
            -- The fill's id, taken now: a FILLED order names its fill (a CHECK).
            fill_transaction_id = nextval(pg_get_serial_sequence('transactions', 'id')),
            updated_at = now()
        WHERE o.id = ANY (v_order_ids)
          AND o.status = 'NEW'
        RETURNING o.id, o.user_id, o.side, o.price, o.quantity, o.cumulative_quote_qty AS notional,
                  o.fill_transaction_id
    ), priced AS (
        SELECT f.*,
               array_position(v_order_ids, f.id) AS ordinal,
               CASE f.side WHEN 'buy' THEN round_up(f.quantity * v_maker, v_market.base_scale)
                           ELSE round_up(f.notional * v_maker, v_market.quote_scale) END AS fee
        FROM filled AS f
    ), moved AS (
        SELECT p.*,
               CASE p.side WHEN 'buy' THEN p.quantity - p.fee ELSE -p.quantity END AS base_delta,
               CASE p.side WHEN 'buy' THEN -p.notional ELSE p.notional - p.fee END AS quote_delta,
               CASE p.side WHEN 'buy' THEN p.fee ELSE 0 END AS base_fee,
               CASE p.side WHEN 'buy' THEN 0 ELSE p.fee END AS quote_fee,
               CASE p.side WHEN 'buy' THEN 0 ELSE p.quantity END AS base_release,
               CASE p.side WHEN 'buy' THEN p.notional ELSE 0 END AS quote_release,
               bw.id AS base_wallet_id,
               qw.id AS quote_wallet_id,
               bw.balance AS base_before,
               qw.balance AS quote_before
        FROM priced AS p
        JOIN accounts AS bw ON bw.user_id = p.user_id AND bw.asset = v_market.base
        JOIN accounts AS qw ON qw.user_id = p.user_id AND qw.asset = v_market.quote
    ), fills AS (
        -- Each transaction's balances after, in the batch's order within a user.
        SELECT m.*,
               m.base_before + sum(m.base_delta) OVER (PARTITION BY m.user_id ORDER BY m.ordinal) AS base_after,
               m.quote_before + sum(m.quote_delta) OVER (PARTITION BY m.user_id ORDER BY m.ordinal) AS quote_after
        FROM moved AS m
    ), tx AS (
        INSERT INTO transactions (id, user_id, kind, idempotency_key, request_hash, asset, amount, balance_after,
                                  symbol, quote_asset, price, quote_qty, fee, fee_asset, price_at,
                                  quote_balance_after, order_id)
        OVERRIDING SYSTEM VALUE
        SELECT f.fill_transaction_id, f.user_id, f.side, 'fill order ' || f.id, sha256(convert_to('fill order ' || f.id, 'UTF8')),
               v_market.base, f.quantity, f.base_after, v_market.symbol, v_market.quote, f.price,
               f.notional, f.fee, CASE f.side WHEN 'buy' THEN v_market.base ELSE v_market.quote END,
               p_price_at, f.quote_after, f.id
        FROM fills AS f
        ORDER BY f.ordinal
        RETURNING transactions.id, transactions.order_id
    ), wallets AS (
        UPDATE accounts AS w
        SET balance = w.balance + d.delta,
            locked = w.locked - d.release,
            updated_at = now()
        FROM (
            SELECT f.base_wallet_id AS wallet_id, sum(f.base_delta) AS delta, sum(f.base_release) AS release
            FROM fills AS f
            GROUP BY f.base_wallet_id
            UNION ALL
            SELECT f.quote_wallet_id, sum(f.quote_delta), sum(f.quote_release)
            FROM fills AS f
            GROUP BY f.quote_wallet_id
        ) AS d
        WHERE w.id = d.wallet_id
        RETURNING w.id
    ), posted AS (
        -- The house `market` account takes the other side of both legs, `fees` the fee.
        INSERT INTO entries (transaction_id, account_id, asset, amount)
        SELECT t.id, e.account_id, e.asset, e.amount
        FROM fills AS f
        JOIN tx AS t ON t.id = f.fill_transaction_id
        CROSS JOIN LATERAL (
            VALUES (f.base_wallet_id, v_market.base, f.base_delta),
                   (v_market.base_market_account_id, v_market.base, -f.base_delta - f.base_fee),
                   (v_market.base_fees_account_id, v_market.base, f.base_fee),
                   (f.quote_wallet_id, v_market.quote, f.quote_delta),
                   (v_market.quote_market_account_id, v_market.quote, -f.quote_delta - f.quote_fee),
                   (v_market.quote_fees_account_id, v_market.quote, f.quote_fee)
        ) AS e (account_id, asset, amount)
        WHERE e.amount <> 0
        RETURNING entries.id
    )
    -- (wallets and posted run whether read or not: data-modifying WITH clauses always do.)
    SELECT count(*)::integer INTO v_filled
    FROM fills;
    RETURN v_filled;
END;
$$;

-- Only NEW -> FILLED, CANCELED, EXPIRED or REJECTED; a final status never changes.
CREATE OR REPLACE FUNCTION check_order_transition()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = exchange
AS $$
BEGIN
    IF NEW.status <> OLD.status AND OLD.status <> 'NEW' THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = format('order %s: %s -> %s is not an allowed transition', OLD.id, OLD.status, NEW.status);
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER orders_status_transition
BEFORE UPDATE OF status ON orders
FOR EACH ROW EXECUTE FUNCTION check_order_transition();
