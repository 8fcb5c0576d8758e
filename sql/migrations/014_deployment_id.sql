-- 014: this deployment's id, made once at its first migration.
--
-- Every Redis key and pub/sub channel the servers use starts with REDIS_PREFIX and this
-- id (exchange/ops/namespace.py), and every pub/sub message carries it. Redis pub/sub
-- ignores the database number of REDIS_URL, so two deployments on one Redis with the
-- default REDIS_PREFIX heard each other's prices and logouts; two databases migrated
-- apart get two ids, so their servers cannot. A database restored from another
-- deployment's backup carries that deployment's id: give it a new one (README,
-- *Several deployments on one Redis*).
CREATE TABLE deployment (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- At most one row.
    only_row    boolean NOT NULL DEFAULT true UNIQUE CHECK (only_row)
);

INSERT INTO deployment DEFAULT VALUES;
