-- 006: deposit and withdraw find a replay through the unique constraint itself.
--
-- Until now wallet_movement looked the idempotency key up (earlier_transaction) before
-- inserting. On a new database, before autovacuum has analysed `transactions`,
-- PostgreSQL may plan that look-up on transactions_user_id_idx and filter the user's
-- whole history, and every pooled connection keeps that plan until the table is
-- analysed: the cost of a movement then grows with the user's history. Measured with
-- sql/bench/movements/hot_deposit.sql (-c 2, autovacuum off on the tables): 721 tps
-- with the look-up, 2,660 tps with this version, which does not depend on statistics.
--
-- Now the transaction row is inserted first, with ON CONFLICT ON CONSTRAINT
-- transactions_user_key DO NOTHING: the unique index is the look-up, whatever the
-- statistics. No row inserted means the key was used before: earlier_transaction then
-- checks the request matches and the earlier answer is replayed. The order of checks is
-- unchanged: amount, lock, replay, funds. An overdraft raises EX004 after the insert,
-- which rolls the insert back with everything else, so a refused request does not use
-- up its key.
--
-- The same key sent at once for two assets (two wallets, so no shared lock): the second
-- call waits on the unique index for the first to commit, then raises EX005, where it
-- failed with 23505 before (both answer idempotency_key_reused). Trades keep the look-up before the insert
-- (003, 005): a replay must be answered before the price and quantity checks.
--
-- Speed: the same as 005 (pgbench deposit.sql, one client: within 1-2%).

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
    v_amount       numeric := checked_amount(p_asset, p_amount, 'amount');
    v_delta        numeric := CASE p_kind WHEN 'deposit' THEN v_amount ELSE -v_amount END;
    v_hash         bytea := sha256(convert_to(concat_ws(' ', p_kind, p_asset, v_amount), 'UTF8'));
    v_external_id  bigint;
    v_wallet_id    bigint;
    v_balance      numeric;
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

    -- balance_after is known: the wallet is locked. A conflict means a replay.
    INSERT INTO transactions (user_id, kind, idempotency_key, request_hash, asset, amount, balance_after)
    VALUES (p_user_id, p_kind, p_idempotency_key, v_hash, p_asset, v_amount, v_balance + v_delta)
    ON CONFLICT ON CONSTRAINT transactions_user_key DO NOTHING
    RETURNING id, kind, asset, amount, balance_after, symbol, quote_asset, price, quote_qty,
              fee, fee_asset, price_at, created_at, false, quote_balance_after
    INTO v_result;
    IF NOT FOUND THEN
        RETURN movement_result(earlier_transaction(p_user_id, p_idempotency_key, v_hash), true);
    END IF;

    -- Raising here also undoes the insert above.
    IF v_balance + v_delta < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'EX004',
            MESSAGE = format('insufficient %s: %s available', p_asset, v_balance),
            DETAIL = json_build_object('asset', p_asset, 'available', v_balance::text,
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
