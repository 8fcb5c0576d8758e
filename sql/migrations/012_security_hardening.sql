-- 012: indexes for every history filter, and a record of deleted users (their tokens
-- stop working). The triggers that keep the last active admin and fill users_deleted
-- are in sql/functions/users.sql.
--
-- Running it: CREATE INDEX takes a SHARE lock on transactions, so movements wait while
-- the three indexes are built (seconds at 1M rows). On a large ledger, build them
-- first, outside a transaction, with the same statements as CREATE INDEX CONCURRENTLY
-- IF NOT EXISTS; this migration then finds them and builds nothing.

-- A migration waits at most this long for a lock (squawk's require-lock-timeout).
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '10min';

-- GET /transactions?kind= : one kind of a user's history, newest first.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS transactions_user_kind_idx ON transactions (user_id, kind, id DESC);
-- GET /transactions?asset= (&kind=): the asset moved (deposit, withdrawal, a trade's
-- base)... Kind before id: each kind's rows are in id order, so a page of one asset
-- reads a few rows of each kind, with or without ?kind=.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS transactions_user_asset_idx ON transactions (user_id, asset, kind, id DESC);
-- ...or a trade's quote asset (NULL for deposits and withdrawals, so kept out).
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS transactions_user_quote_asset_idx ON transactions (user_id, quote_asset, kind, id DESC)
    WHERE quote_asset IS NOT NULL;

-- Ids of users deleted from `users` (by a DBA: the API never deletes). Ids are never
-- reused (identity), and the workers deny these ids' tokens (exchange/auth/denylist.py).
CREATE TABLE users_deleted (
    id          bigint PRIMARY KEY,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
