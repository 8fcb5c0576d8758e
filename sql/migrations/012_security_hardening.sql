-- Issue 25 (security hardening): indexes for every history filter, a record of
-- deleted users (their tokens stop working), and the last active admin kept.

-- GET /transactions?kind= : one kind of a user's history, newest first.
CREATE INDEX transactions_user_kind_idx ON transactions (user_id, kind, id DESC);
-- GET /transactions?asset= (&kind=): the asset moved (deposit, withdrawal, a trade's
-- base)... Kind before id: each kind's rows are in id order, so a page of one asset
-- reads a few rows of each kind, with or without ?kind=.
CREATE INDEX transactions_user_asset_idx ON transactions (user_id, asset, kind, id DESC);
-- ...or a trade's quote asset (NULL for deposits and withdrawals, so kept out).
CREATE INDEX transactions_user_quote_asset_idx ON transactions (user_id, quote_asset, kind, id DESC)
    WHERE quote_asset IS NOT NULL;

-- Ids of users deleted from `users` (by a DBA: the API never deletes). Ids are never
-- reused (identity), and the workers deny these ids' tokens (exchange/denylist.py).
CREATE TABLE users_deleted (
    id          bigint PRIMARY KEY,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);

-- FUNCTIONS (to move into sql/functions/ on merge)

-- keep_an_active_admin(): a trigger on users. An update or delete that takes an active
-- admin out (disabled, demoted or deleted) raises EX014 last_admin if no other active
-- admin would remain. Changes like that are taken one at a time (a transaction-scoped
-- advisory lock), and the check runs after the wait with a fresh snapshot (READ
-- COMMITTED, a volatile function), so two admins disabling each other at the same
-- moment cannot both pass: the second sees the first.
CREATE OR REPLACE FUNCTION keep_an_active_admin() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.role = 'admin' AND NOT OLD.disabled
       AND (TG_OP = 'DELETE' OR NEW.role <> 'admin' OR NEW.disabled) THEN
        PERFORM pg_advisory_xact_lock(1633971566);  -- 'admn'
        IF NOT EXISTS (
            SELECT 1
            FROM users
            WHERE role = 'admin'
              AND NOT disabled
              AND id <> OLD.id
        ) THEN
            RAISE EXCEPTION 'the last active admin cannot be disabled, demoted or deleted'
                USING ERRCODE = 'EX014';
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER users_keep_an_active_admin
    BEFORE UPDATE OF role, disabled OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION keep_an_active_admin();

-- record_deleted_user(): a trigger on users; a deleted user's id goes to users_deleted.
CREATE OR REPLACE FUNCTION record_deleted_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO users_deleted (id) VALUES (OLD.id) ON CONFLICT DO NOTHING;
    RETURN OLD;
END;
$$;

CREATE OR REPLACE TRIGGER users_record_deleted
    AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION record_deleted_user();
