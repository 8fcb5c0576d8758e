-- `exchange bench --ceiling`: the one-hot-row rate of this PostgreSQL, the yardstick for
-- the `hot` scenario. A PL/pgSQL function locks one row (SELECT ... FOR UPDATE), updates
-- it and appends an entry, as a money movement does; pgbench calls it from every client
-- on the same row, so each commit (and its fsync) waits for the one before it.
-- Loaded into a scratch database; never into the product's.
CREATE TABLE hot_account (
    id      integer PRIMARY KEY,
    balance numeric NOT NULL
);

CREATE TABLE hot_entry (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id integer NOT NULL REFERENCES hot_account (id),
    amount     numeric NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO hot_account (id, balance) VALUES (1, 0);

CREATE FUNCTION hot_move(p_account_id integer, p_amount numeric)
RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE
    v_balance numeric;
BEGIN
    SELECT balance INTO v_balance FROM hot_account WHERE id = p_account_id FOR UPDATE;
    UPDATE hot_account SET balance = v_balance + p_amount WHERE id = p_account_id;
    INSERT INTO hot_entry (account_id, amount) VALUES (p_account_id, p_amount);
    RETURN v_balance + p_amount;
END
$$;
