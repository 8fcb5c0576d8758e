-- Movement batches: movements() runs many money movements, of any users, in one call
-- and one transaction, each in its own subtransaction.
--
-- Objects: movements().  Types it uses (schema): movement_outcome, movement_result.
-- Called by: sql/queries/movements.sql (exchange/ledger/batches.py gathers the
-- movements that arrive while a worker's earlier calls run; a quiet server sends them
-- one per call through deposit(), withdraw(), buy() and sell() directly).
--
-- Each movement calls the unchanged deposit(), withdraw(), buy() or sell() inside a
-- BEGIN ... EXCEPTION block: a movement that fails is rolled back alone and answered as
-- an error row (SQLSTATE, message, detail, constraint); the others commit together, in
-- one transaction and one WAL flush.
--
-- Locks: every wallet each movement locks (see wallet_movements.sql and trades.sql),
-- held until the batch commits, so:
--  - users are taken in ascending id (then arrival order): two batches never wait on
--    each other in a circle;
--  - a lock is waited for at most 100 ms (lock_timeout set on the function), and once
--    the call has run 100 ms, or once one of its movements has timed out, at most 1 ms.
--    A movement refused that way (SQLSTATE 55P03) is sent again alone by the server,
--    with the usual DB_LOCK_TIMEOUT_MS.
-- Tuned by: the two 100 ms figures below; MOVEMENT_BATCH_LANES and MOVEMENT_BATCH_MAX
-- (the application).
--
-- Runs as it stands: psql -1 -f sql/functions/movement_batches.sql.

-- p_kinds[i]: 'deposit' or 'withdrawal' (p_subjects[i] an asset, p_amounts[i] the
-- amount), or 'buy' or 'sell' (p_subjects[i] a symbol, p_amounts[i] the quantity or
-- NULL, then the quote quantity, price guard, price, price_at and price validity as
-- buy() and sell() take them). One row per movement, in the order they were made.
CREATE OR REPLACE FUNCTION movements(
    p_kinds text[],
    p_user_ids bigint[],
    p_subjects text[],
    p_amounts numeric[],
    p_quote_quantities numeric[],
    p_price_guards numeric[],
    p_prices numeric[],
    p_price_ats timestamptz[],
    p_price_valid_ms integer[],
    p_keys text[]
)
RETURNS SETOF movement_outcome
LANGUAGE plpgsql
SET lock_timeout = '100ms'
AS $$
DECLARE
    v_i        integer;
    v_result   movement_result;
    v_out      movement_outcome;
    v_short    boolean := false;   -- lock waits cut to 1 ms
BEGIN
    FOR v_i IN
        SELECT u.ordinal::integer
        FROM unnest(p_user_ids) WITH ORDINALITY AS u(user_id, ordinal)
        ORDER BY u.user_id, u.ordinal
    LOOP
        IF NOT v_short AND clock_timestamp() > statement_timestamp() + interval '100 milliseconds' THEN
            PERFORM set_config('lock_timeout', '1ms', true);
            v_short := true;
        END IF;
        v_out := NULL;
        v_out.ordinal := v_i;
        BEGIN
            CASE p_kinds[v_i]
                WHEN 'deposit' THEN
                    v_result := deposit(p_user_ids[v_i], p_subjects[v_i], p_amounts[v_i], p_keys[v_i]);
                WHEN 'withdrawal' THEN
                    v_result := withdraw(p_user_ids[v_i], p_subjects[v_i], p_amounts[v_i], p_keys[v_i]);
                WHEN 'buy' THEN
                    v_result := buy(p_user_ids[v_i], p_subjects[v_i], p_amounts[v_i], p_quote_quantities[v_i],
                                    p_price_guards[v_i], p_prices[v_i], p_price_ats[v_i],
                                    p_price_valid_ms[v_i], p_keys[v_i]);
                WHEN 'sell' THEN
                    v_result := sell(p_user_ids[v_i], p_subjects[v_i], p_amounts[v_i], p_quote_quantities[v_i],
                                     p_price_guards[v_i], p_prices[v_i], p_price_ats[v_i],
                                     p_price_valid_ms[v_i], p_keys[v_i]);
            END CASE;
            v_out.id := v_result.id;
            v_out.kind := v_result.kind;
            v_out.asset := v_result.asset;
            v_out.amount := v_result.amount;
            v_out.balance_after := v_result.balance_after;
            v_out.symbol := v_result.symbol;
            v_out.quote_asset := v_result.quote_asset;
            v_out.price := v_result.price;
            v_out.quote_qty := v_result.quote_qty;
            v_out.fee := v_result.fee;
            v_out.fee_asset := v_result.fee_asset;
            v_out.price_at := v_result.price_at;
            v_out.created_at := v_result.created_at;
            v_out.replayed := v_result.replayed;
            v_out.quote_balance_after := v_result.quote_balance_after;
        EXCEPTION WHEN OTHERS THEN  -- not statement_timeout: that ends the whole call
            GET STACKED DIAGNOSTICS v_out.error_sqlstate = RETURNED_SQLSTATE,
                                    v_out.error_message = MESSAGE_TEXT,
                                    v_out.error_detail = PG_EXCEPTION_DETAIL,
                                    v_out.error_constraint = CONSTRAINT_NAME;
            IF v_out.error_sqlstate = '55P03' AND NOT v_short THEN
                PERFORM set_config('lock_timeout', '1ms', true);
                v_short := true;
            END IF;
        END;
        RETURN NEXT v_out;
    END LOOP;
END;
$$;
