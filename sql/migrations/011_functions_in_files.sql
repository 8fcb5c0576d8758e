-- 011: migrations hold schema and data only; every function, trigger and view has one
-- current definition in sql/functions/, which `exchange migrate` applies after the
-- migrations whenever a file's checksum changes (and `exchange sql check` compares
-- with the database). The function texts in 001-010 are history: on a fresh database
-- they run first and sql/functions/ replaces them in the same `exchange migrate`.
--
-- From here on a migration must not call a function or rely on a trigger: on a fresh
-- database the files of sql/functions/ run after every migration (as Flyway runs its
-- repeatable scripts after the versioned ones). A migration that adds an asset writes
-- its house accounts itself (ON CONFLICT DO NOTHING), say.
--
-- Dropped here: what nothing calls any more (checked with plpgsql_check's
-- plpgsql_show_dependency_tb on a database migrated through 010, and by grep of the
-- tree): 002's post_wallet_movement and 2-argument checked_amount, 003's post_trade.

-- A migration waits at most this long for a lock (squawk's require-lock-timeout): one
-- stuck behind a long transaction would otherwise hold every movement queued behind it.
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';

-- Nothing calls these (see above), so squawk's ban-drop-function is answered:
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS post_wallet_movement(bigint, text, text, bytea, bigint, bigint, text, numeric);
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS post_trade(bigint, text, text, bytea, trade_market, bigint, bigint, numeric,
                                   timestamptz, numeric, numeric, numeric, text, numeric, numeric);
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS checked_amount(text, numeric);
