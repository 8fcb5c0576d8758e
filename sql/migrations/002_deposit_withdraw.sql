-- 002: deposit and withdraw, one PL/pgSQL function each, and the helpers they share.
--
-- The application calls each money function as one statement: one round trip, one
-- transaction, READ COMMITTED. Errors are raised with a named SQLSTATE in class EX,
-- which exchange/http/errors.py maps to a JSON error; DETAIL carries JSON for the client:
--   EX001 invalid_amount          amount not > 0, or above the asset's max_amount   (422)
--   EX002 too_many_decimals       more decimals than the asset's scale              (422)
--   EX003 unknown_asset                                                             (404)
--   EX004 insufficient_funds                                                        (409)
--   EX005 idempotency_key_reused  same key, different request                       (422)
--
-- Idempotency: a function first locks the wallet it moves, then looks the key up.
-- Two calls with the same key and the same request lock the same wallet, so the second
-- waits, then finds the first's committed row and replays it. Calls with the same key
-- and different requests may lock different wallets; then UNIQUE (user_id,
-- idempotency_key) refuses the later insert (23505 on transactions_user_key), which
-- the application also reports as idempotency_key_reused.
--
-- Helpers are PL/pgSQL rather than LANGUAGE sql: PostgreSQL 15 plans the body of a
-- SQL function again on every call, while PL/pgSQL keeps its plans per connection.
-- Work that needs no lock (amount checks, house account look-up) runs before the
-- wallet is locked, so the lock is held only for the statements that need it.

-- What every money function returns: the API's view of one transaction, plus whether
-- it is a replay of an earlier call with the same idempotency key.
CREATE TYPE movement_result AS (
    id                   bigint,
    kind                 text,
    asset                text,
    amount               numeric,
    balance_after        numeric,
    symbol               text,
    quote_asset          text,
    price                numeric,
    quote_qty            numeric,
    fee                  numeric,
    fee_asset            text,
    price_at             timestamptz,
    created_at           timestamptz,
    replayed             boolean
);

-- Built the same way for a first call and for its replays, so both answer the same body.
CREATE FUNCTION movement_result(p_transaction_id bigint, p_replayed boolean)
RETURNS movement_result
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_result  movement_result;
BEGIN
    SELECT t.id, t.kind, t.asset, t.amount, t.balance_after, t.symbol, t.quote_asset,
           t.price, t.quote_qty, t.fee, t.fee_asset, t.price_at, t.created_at, p_replayed
    INTO v_result
    FROM transactions AS t
    WHERE t.id = p_transaction_id;
    RETURN v_result;
END;
$$;

-- The house account of one kind ('external', 'market', 'fees') for one asset.
-- Served by accounts_house_key.
CREATE FUNCTION house_account(p_kind text, p_asset text)
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

-- The amount, checked against the asset (EX001, EX002, EX003) and written at the
-- asset's scale. Never rounds silently: an amount with more decimals is refused.
CREATE FUNCTION checked_amount(p_asset text, p_amount numeric)
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
            MESSAGE = format('amount must be greater than 0 and at most %s', v_max),
            DETAIL = json_build_object('field', 'amount', 'max', v_max::text)::text;
    END IF;
    IF p_amount <> round(p_amount, v_scale) THEN
        RAISE EXCEPTION USING ERRCODE = 'EX002',
            MESSAGE = format('%s allows at most %s decimals', p_asset, v_scale),
            DETAIL = json_build_object('field', 'amount', 'scale', v_scale)::text;
    END IF;
    RETURN round(p_amount, v_scale);
END;
$$;

-- The user's wallet for one asset, locked FOR UPDATE; created empty first if missing.
-- Callers that lock two wallets call this in asset-code order so they never deadlock.
CREATE FUNCTION lock_wallet(p_user_id bigint, p_asset text, OUT wallet_id bigint, OUT balance numeric)
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
CREATE FUNCTION earlier_transaction(p_user_id bigint, p_idempotency_key text, p_request_hash bytea)
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

-- Post a movement between a user's wallet (already locked by the caller) and a house
-- account: the wallet changes by p_delta (+ deposit, - withdrawal), and the transaction
-- is written with two entries that sum to zero. Returns the transaction id.
CREATE FUNCTION post_wallet_movement(
    p_user_id bigint,
    p_kind text,
    p_idempotency_key text,
    p_request_hash bytea,
    p_wallet_id bigint,
    p_house_account_id bigint,
    p_asset text,
    p_delta numeric
)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_balance_after  numeric;
    v_tx_id          bigint;
BEGIN
    UPDATE accounts
    SET balance = balance + p_delta,
        updated_at = now()
    WHERE id = p_wallet_id
    RETURNING balance INTO v_balance_after;

    INSERT INTO transactions (user_id, kind, idempotency_key, request_hash, asset, amount, balance_after)
    VALUES (p_user_id, p_kind, p_idempotency_key, p_request_hash, p_asset, abs(p_delta), v_balance_after)
    RETURNING id INTO v_tx_id;

    INSERT INTO entries (transaction_id, account_id, asset, amount)
    VALUES (v_tx_id, p_wallet_id, p_asset, p_delta),
           (v_tx_id, p_house_account_id, p_asset, -p_delta);
    RETURN v_tx_id;
END;
$$;

-- deposit: credit the user's wallet from the house `external` account.
-- Locks: the user's wallet of p_asset. Raises EX001, EX002, EX003, EX005.
CREATE FUNCTION deposit(p_user_id bigint, p_asset text, p_amount numeric, p_idempotency_key text)
RETURNS movement_result
LANGUAGE plpgsql AS $$
DECLARE
    v_amount       numeric := checked_amount(p_asset, p_amount);
    v_hash         bytea := sha256(convert_to(concat_ws(' ', 'deposit', p_asset, v_amount), 'UTF8'));
    v_external_id  bigint := house_account('external', p_asset);
    v_wallet       record;
    v_tx_id        bigint;
BEGIN
    SELECT * INTO v_wallet FROM lock_wallet(p_user_id, p_asset);
    v_tx_id := earlier_transaction(p_user_id, p_idempotency_key, v_hash);
    IF v_tx_id IS NOT NULL THEN
        RETURN movement_result(v_tx_id, true);
    END IF;

    v_tx_id := post_wallet_movement(p_user_id, 'deposit', p_idempotency_key, v_hash,
                                    v_wallet.wallet_id, v_external_id, p_asset, v_amount);
    RETURN movement_result(v_tx_id, false);
END;
$$;

-- withdraw: debit the user's wallet to the house `external` account.
-- Locks: the user's wallet of p_asset. Raises EX001, EX002, EX003, EX004, EX005.
CREATE FUNCTION withdraw(p_user_id bigint, p_asset text, p_amount numeric, p_idempotency_key text)
RETURNS movement_result
LANGUAGE plpgsql AS $$
DECLARE
    v_amount       numeric := checked_amount(p_asset, p_amount);
    v_hash         bytea := sha256(convert_to(concat_ws(' ', 'withdrawal', p_asset, v_amount), 'UTF8'));
    v_external_id  bigint := house_account('external', p_asset);
    v_wallet       record;
    v_tx_id        bigint;
BEGIN
    SELECT * INTO v_wallet FROM lock_wallet(p_user_id, p_asset);
    v_tx_id := earlier_transaction(p_user_id, p_idempotency_key, v_hash);
    IF v_tx_id IS NOT NULL THEN
        RETURN movement_result(v_tx_id, true);
    END IF;

    IF v_wallet.balance < v_amount THEN
        RAISE EXCEPTION USING ERRCODE = 'EX004',
            MESSAGE = format('insufficient %s: %s available', p_asset, v_wallet.balance),
            DETAIL = json_build_object('asset', p_asset, 'available', v_wallet.balance::text,
                                       'requested', v_amount::text)::text;
    END IF;

    v_tx_id := post_wallet_movement(p_user_id, 'withdrawal', p_idempotency_key, v_hash,
                                    v_wallet.wallet_id, v_external_id, p_asset, -v_amount);
    RETURN movement_result(v_tx_id, false);
END;
$$;
