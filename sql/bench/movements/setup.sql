-- The money functions alone, without HTTP: pgbench scripts for a DBA who changes them.
-- In a scratch database, never the product's:
--
--   createdb -h 127.0.0.1 -U postgres exchange_pgbench
--   DATABASE_URL=postgresql://postgres@127.0.0.1/exchange_pgbench exchange migrate
--   export PGOPTIONS='-c search_path=exchange'
--   psql -h 127.0.0.1 -U postgres -d exchange_pgbench -f sql/bench/movements/setup.sql
--   pgbench -h 127.0.0.1 -U postgres -n -M prepared -c 16 -j 2 -T 10 \
--       -f sql/bench/movements/deposit.sql exchange_pgbench      (or buy.sql, sell.sql)
--
-- Add `-c synchronous_commit=off` to PGOPTIONS (for this measurement only) and run one
-- client (-c 1) to compare two versions of a function by CPU alone, without the fsync.
-- On a machine whose speed drifts, instructions.sh counts each function's instructions
-- instead (callgrind): the same figure on every run.
-- This file makes users 1 to 256 of a freshly migrated database, each with 1,000,000
-- USDT and 1,000 BTC; the scripts pick one of those ids at random.
\set ON_ERROR_STOP on
DO $$
BEGIN
    IF EXISTS (SELECT FROM users) THEN
        RAISE EXCEPTION 'run setup.sql on a freshly migrated scratch database';
    END IF;
END;
$$;

INSERT INTO users (email, password_hash)
SELECT format('bench-%s@example.com', g), 'not-a-hash'
FROM generate_series(1, 256) AS g;

SELECT count(deposit(u.id, 'USDT', 1000000, 'bench-usdt'))
     + count(deposit(u.id, 'BTC', 1000, 'bench-btc')) AS deposits
FROM users AS u;
