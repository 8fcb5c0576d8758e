-- 004: what the security features need.
--
-- Every worker rereads the ids of disabled users every AUTH_RELOAD_MS
-- (sql/queries/users_disabled.sql). This partial index holds only those rows, so the
-- reload costs the same with ten users or ten million.
CREATE INDEX users_disabled_idx ON users (id) WHERE disabled;
