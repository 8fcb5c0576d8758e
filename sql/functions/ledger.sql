-- Ledger primitives: the small functions every money movement shares.
--
-- Objects: movement_result(), house_account(), checked_amount(), lock_wallet(),
-- earlier_transaction(), check_funds(), round_up().
-- Types they use (schema, changed only by a migration): movement_result.
--
-- Locks: lock_wallet() takes one wallet row FOR UPDATE (creating it empty first with
-- INSERT ... ON CONFLICT DO NOTHING). Callers that lock two wallets call it in
-- asset-code order ("C" collation), the global wallet lock order. Nothing else here
-- locks anything.
--
-- Errors (class EX, mapped to JSON errors in exchange/http/errors.py):
--   EX001 invalid_amount          amount not > 0, or above the asset's max_amount   (422)
--   EX002 too_many_decimals       more decimals than the asset's scale              (422)
--   EX003 unknown_asset                                                             (404)
--   EX004 insufficient_funds                                                        (409)
--   EX005 idempotency_key_reused  same key, different request                       (422)
-- DETAIL carries JSON for the client.
--
-- Tuned by: assets.scale and assets.max_amount (rows, not settings).
-- Helpers are PL/pgSQL rather than LANGUAGE sql where they run queries: PostgreSQL 15
-- plans the body of a SQL function again on every call, while PL/pgSQL keeps its plans
-- per connection. round_up() is LANGUAGE sql on purpose: the planner inlines it.
--
-- Runs as it stands: psql -1 -f sql/functions/ledger.sql (search_path = exchange).

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

-- The house account of one kind ('external', 'market', 'fees') for one asset.
-- Served by accounts_house_key.
CREATE OR REPLACE FUNCTION house_account(p_kind text, p_asset text)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id  bigint;
BEGIN
    SELECT a.id INTO v_id
    FROM accounts AS a
    WHERE a.user_id IS NULL
      AND a.kind = p_kind
      AND a.asset = p_asset;
    RETURN v_id;
END;
$$;

-- The amount, checked against the asset (EX003 unknown, EX001 not > 0 or above
-- max_amount, EX002 more decimals than the scale) and written at the asset's scale.
-- Never rounds silently. p_field names the request field in errors ('amount',
-- 'quantity', 'quote_quantity').
CREATE OR REPLACE FUNCTION checked_amount(p_asset text, p_amount numeric, p_field text)
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

-- The user's wallet for one asset, locked FOR UPDATE; created empty first if missing.
-- Callers that lock two wallets call this in asset-code order so they never deadlock.
CREATE OR REPLACE FUNCTION lock_wallet(p_user_id bigint, p_asset text, OUT wallet_id bigint, OUT balance numeric)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT w.id, w.balance INTO wallet_id, balance
    FROM accounts AS w
    WHERE w.user_id = p_user_id
      AND w.asset = p_asset
    FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO accounts (user_id, asset, kind, balance)
        VALUES (p_user_id, p_asset, 'wallet', 0)
        ON CONFLICT ON CONSTRAINT accounts_user_asset_key DO NOTHING;
        SELECT w.id, w.balance INTO wallet_id, balance
        FROM accounts AS w
        WHERE w.user_id = p_user_id
          AND w.asset = p_asset
        FOR UPDATE;
    END IF;
END;
$$;

-- The transaction an earlier call made with this key, or NULL if none.
-- Raises EX005 if that call was a different request.
CREATE OR REPLACE FUNCTION earlier_transaction(p_user_id bigint, p_idempotency_key text, p_request_hash bytea)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id    bigint;
    v_hash  bytea;
BEGIN
    SELECT t.id, t.request_hash INTO v_id, v_hash
    FROM transactions AS t
    WHERE t.user_id = p_user_id
      AND t.idempotency_key = p_idempotency_key;
    IF FOUND AND v_hash <> p_request_hash THEN
        RAISE EXCEPTION USING ERRCODE = 'EX005',
            MESSAGE = 'this Idempotency-Key was used for a different request',
            DETAIL = json_build_object('transaction_id', v_id)::text;
    END IF;
    RETURN v_id;
END;
$$;

-- Refuse a trade the user cannot pay for (EX004).
CREATE OR REPLACE FUNCTION check_funds(p_asset text, p_available numeric, p_needed numeric)
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

-- p_value (>= 0) rounded up to p_scale decimals: the fee, and what a buyer pays.
-- (trunc() rounds down: what a seller receives.)
-- One unit is 1 / 10^scale, exact at every scale (power(10::numeric, -18) keeps only
-- 16 decimals and would be 0). Neither STRICT nor calling anything non-immutable, so
-- the planner inlines it into the caller's expression instead of running a function.
CREATE OR REPLACE FUNCTION round_up(p_value numeric, p_scale integer)
RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
               WHEN trunc(p_value, p_scale) = p_value THEN trunc(p_value, p_scale)
               ELSE round(trunc(p_value, p_scale) + 1 / 10::numeric ^ p_scale, p_scale)
           END
$$;
