-- 010: many money movements in one call, each still all or nothing.
--
-- Under load most of a movement's cost was around its statements, not in them: one
-- transaction, one WAL flush and one round trip each. movements() takes a batch of
-- movements, of any users, as parallel arrays, and calls the unchanged deposit(),
-- withdraw(), buy() or sell() for each inside its own subtransaction (a BEGIN ...
-- EXCEPTION block): a movement that fails is rolled back alone and answered as an
-- error row, the others commit together, in one transaction and one WAL flush. Each
-- still writes its balanced entries and answers what its own call would have.
-- The server (exchange/ledger/batches.py) gathers the movements that arrive while
-- its earlier calls run, so a quiet server sends them one per call.
--
-- Locks. A batch holds every wallet it locked until it commits, so:
--  - users are taken in ascending id (then arrival order): two batches never wait on
--    each other in a circle;
--  - a lock is waited for at most 100 ms, and once the call has run 100 ms, or once
--    one of its movements has timed out, at most 1 ms: a batch never sits for long on
--    locks it would make others wait behind. A movement refused that way (SQLSTATE
--    55P03, its subtransaction rolled back) is sent again alone by the server, with
--    the usual DB_LOCK_TIMEOUT_MS.
--
-- Counted with callgrind (sql/bench/movements/instructions.sh deposit 20 16): a deposit
-- alone is about 859,000 instructions, commit included; in a batch of 16, about 712,000
-- each. The larger gain is the WAL flush and the round trip, which callgrind cannot see.
-- Every statement here is plain SQL; psql -1 -f runs it as `exchange migrate` does.

-- One movement's answer: movement_result's columns, or the error it raised.
CREATE TYPE movement_outcome AS (
    ordinal              integer,      -- its position in the call's arrays, from 1
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
    replayed             boolean,
    quote_balance_after  numeric,
    error_sqlstate       text,         -- NULL when the movement was made (or replayed)
    error_message        text,
    error_detail         text,
    error_constraint     text
);

-- p_kinds[i]: 'deposit' or 'withdrawal' (p_subjects[i] an asset, p_amounts[i] the
-- amount), or 'buy' or 'sell' (p_subjects[i] a symbol, p_amounts[i] the quantity or
-- NULL, then the quote quantity, price guard, price, price_at and price validity as
-- buy() and sell() take them). One row per movement, in the order they were made.
CREATE FUNCTION movements(
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
        SELECT u.ordinal
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
