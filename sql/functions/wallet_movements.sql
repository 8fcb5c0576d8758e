-- Deposits and withdrawals: deposit() and withdraw(), one shared body
-- (wallet_movement), and the replay look-up they use (earlier_wallet_movement).
--
-- Objects: earlier_wallet_movement(), wallet_movement(), deposit(), withdraw().
-- Called by: sql/queries/deposit.sql, withdraw.sql, and movements() (movement_batches.sql).
--
-- A movement is one call, one transaction (READ COMMITTED), between the user's wallet
-- and the house `external` account of the asset, with two entries that sum to zero.
-- The house account keeps no stored balance (house_balances sums its entries), so no
-- movement waits on a row shared by all users.
--
-- Order of work: the amount is checked against the asset (no lock held), then the
-- wallet is locked, then the transaction row is inserted with ON CONFLICT ON CONSTRAINT
-- transactions_user_key DO NOTHING: the unique index is the idempotency look-up,
-- whatever the table's statistics. No row inserted means the key was used: the earlier
-- answer is replayed if it was the same request (compared by value), else EX005.
-- An overdraft (EX004) is raised after the insert, which rolls it back.
--
-- Locks: the user's wallet of p_asset (FOR UPDATE), nothing else. A withdrawal may take
-- only the available amount: balance - locked (locked: resting orders, orders.sql).
-- Errors: EX001, EX002, EX003 (amount and asset), EX004 (withdraw), EX005.
-- Tuned by: lock_timeout (DB_LOCK_TIMEOUT_MS, set per connection by the application),
-- assets.scale and assets.max_amount.
--
-- Runs as it stands: psql -1 -f sql/functions/wallet_movements.sql.

CREATE OR REPLACE FUNCTION earlier_wallet_movement(
    p_user_id bigint,
    p_idempotency_key text,
    p_kind text,
    p_asset text,
    p_amount numeric
)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id    bigint;
    v_same  boolean;
BEGIN
    -- Served by transactions_user_key. Numeric equality: 250.5 = 250.50000000.
    SELECT t.id, t.kind = p_kind AND t.asset = p_asset AND t.amount = p_amount
    INTO v_id, v_same
    FROM transactions AS t
    WHERE t.user_id = p_user_id
      AND t.idempotency_key = p_idempotency_key;
    IF FOUND AND v_same IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'EX005',
            MESSAGE = 'this Idempotency-Key was used for a different request',
            DETAIL = json_build_object('transaction_id', v_id)::text;
    END IF;
    RETURN v_id;
END;
$$;

CREATE OR REPLACE FUNCTION wallet_movement(
    p_kind text,
    p_user_id bigint,
    p_asset text,
    p_amount numeric,
    p_idempotency_key text
)
RETURNS movement_result
LANGUAGE plpgsql AS $$
DECLARE
    v_amount       numeric;
    v_delta        numeric;
    v_external_id  bigint;
    v_wallet_id    bigint;
    v_balance      numeric;
    v_locked       numeric := 0::numeric;
    v_tx_id        bigint;
    v_result       movement_result;
BEGIN
    BEGIN
        v_amount := checked_amount(p_asset, p_amount, 'amount');
    EXCEPTION WHEN OTHERS THEN  -- (OTHERS does not catch a cancel or a statement timeout)
        -- Refused by today's rules, but a replay of a call they allowed is still a replay.
        v_tx_id := earlier_wallet_movement(p_user_id, p_idempotency_key, p_kind, p_asset, p_amount);
        IF v_tx_id IS NOT NULL THEN
            RETURN movement_result(v_tx_id, true);
        END IF;
        RAISE;
    END;
    v_delta := CASE p_kind WHEN 'deposit' THEN v_amount ELSE -v_amount END;

    SELECT a.id INTO v_external_id
    FROM accounts AS a
    WHERE a.user_id IS NULL
      AND a.kind = 'external'
      AND a.asset = p_asset;

    SELECT w.id, w.balance, w.locked INTO v_wallet_id, v_balance, v_locked
    FROM accounts AS w
    WHERE w.user_id = p_user_id
      AND w.asset = p_asset
    FOR UPDATE;
    IF NOT FOUND THEN
        SELECT * INTO v_wallet_id, v_balance FROM lock_wallet(p_user_id, p_asset);
        v_locked := 0;  -- a wallet just made reserves nothing
    END IF;

    -- balance_after is known: the wallet is locked. A conflict means a replay.
    -- request_hash fingerprints the request; replays compare by value (above).
    INSERT INTO transactions (user_id, kind, idempotency_key, request_hash, asset, amount, balance_after)
    VALUES (p_user_id, p_kind, p_idempotency_key,
            sha256(convert_to(concat_ws(' ', p_kind, p_asset, v_amount), 'UTF8')),
            p_asset, v_amount, v_balance + v_delta)
    ON CONFLICT ON CONSTRAINT transactions_user_key DO NOTHING
    RETURNING id, kind, asset, amount, balance_after, symbol, quote_asset, price, quote_qty,
              fee, fee_asset, price_at, created_at, false, quote_balance_after
    INTO v_result;
    IF NOT FOUND THEN
        RETURN movement_result(
            earlier_wallet_movement(p_user_id, p_idempotency_key, p_kind, p_asset, v_amount), true);
    END IF;

    -- Raising here also undoes the insert above.
    -- Only what no resting order reserves is available (balance - locked).
    IF v_balance - v_locked + v_delta < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'EX004',
            MESSAGE = format('insufficient %s: %s available', p_asset, v_balance - v_locked),
            DETAIL = json_build_object('asset', p_asset, 'available', (v_balance - v_locked)::text,
                                       'requested', v_amount::text)::text;
    END IF;

    UPDATE accounts
    SET balance = v_result.balance_after,
        updated_at = now()
    WHERE id = v_wallet_id;

    INSERT INTO entries (transaction_id, account_id, asset, amount)
    VALUES (v_result.id, v_wallet_id, p_asset, v_delta),
           (v_result.id, v_external_id, p_asset, -v_delta);
    RETURN v_result;
END;
$$;

-- deposit and withdraw: what the application calls (sql/queries/deposit.sql,
-- withdraw.sql).
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
