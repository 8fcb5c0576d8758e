-- Users: the rules a DBA's or an admin's change to `users` must keep.
--
-- Objects: keep_an_active_admin() and trigger users_keep_an_active_admin (an update or
-- delete that takes an active admin out raises EX014 last_admin if no other active
-- admin would remain); record_deleted_user() and trigger users_record_deleted (a
-- deleted user's id goes to users_deleted, whose tokens the workers then deny).
--
-- Locks: a transaction-level advisory lock (1633971566, 'admn') makes changes that take
-- an admin out run one at a time; only such changes take it.
-- Errors: EX014 last_admin (409).
--
-- Trigger functions set their own search_path: a DBA's change fires them from a session
-- whose search_path may not name the schema.
--
-- Runs as it stands: psql -1 -f sql/functions/users.sql.

-- keep_an_active_admin(): a trigger on users. An update or delete that takes an active
-- admin out (disabled, demoted or deleted) raises EX014 last_admin if no other active
-- admin would remain. Changes like that are taken one at a time (a transaction-scoped
-- advisory lock), and the check runs after the wait with a fresh snapshot (READ
-- COMMITTED, a volatile function), so two admins disabling each other at the same
-- moment cannot both pass: the second sees the first.
CREATE OR REPLACE FUNCTION keep_an_active_admin()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = exchange
AS $$
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
CREATE OR REPLACE FUNCTION record_deleted_user()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = exchange
AS $$
BEGIN
    INSERT INTO users_deleted (id) VALUES (OLD.id) ON CONFLICT DO NOTHING;
    RETURN OLD;
END;
$$;

CREATE OR REPLACE TRIGGER users_record_deleted
    AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION record_deleted_user();
