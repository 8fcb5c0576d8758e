-- 001: the ledger's tables.
--
-- Money is numeric, never float. Every movement is one row in transactions and two or
-- more signed rows in entries that sum to zero per asset (double entry).
--
-- Hot rows: house accounts (external, market, fees) are the counterparty of every
-- movement, so they keep no stored balance (balance IS NULL); their balance is the sum
-- of their entries (view house_balances). A movement locks only the caller's own
-- wallet rows, so throughput grows with users instead of queueing on one row.

CREATE TABLE assets (
    code        text PRIMARY KEY CHECK (code ~ '^[A-Z0-9]{2,12}$'),
    scale       smallint NOT NULL CHECK (scale BETWEEN 0 AND 18),
    -- Largest amount one movement may carry: refuses absurd amounts (DBA-tunable).
    max_amount  numeric NOT NULL CHECK (max_amount > 0)
);

INSERT INTO assets (code, scale, max_amount) VALUES
    ('USDT', 2, 1000000000),
    ('BTC', 8, 100000),
    ('ETH', 8, 1000000),
    ('SOL', 8, 100000000),
    ('BNB', 8, 10000000);

-- Spot markets, with Binance's exchangeInfo filters (LOT_SIZE stepSize/minQty/maxQty,
-- PRICE_FILTER tickSize, NOTIONAL minNotional) and the taker fee rate.
CREATE TABLE markets (
    symbol        text PRIMARY KEY CHECK (symbol ~ '^[A-Z0-9]{4,20}$'),
    base          text NOT NULL REFERENCES assets (code),
    quote         text NOT NULL REFERENCES assets (code),
    qty_step      numeric NOT NULL CHECK (qty_step > 0),
    min_qty       numeric NOT NULL CHECK (min_qty > 0),
    max_qty       numeric NOT NULL CHECK (max_qty >= min_qty),
    tick_size     numeric NOT NULL CHECK (tick_size > 0),
    min_notional  numeric NOT NULL CHECK (min_notional >= 0),
    fee_rate      numeric NOT NULL CHECK (fee_rate >= 0 AND fee_rate < 1),
    active        boolean NOT NULL DEFAULT true,
    CHECK (base <> quote)
);

INSERT INTO markets (symbol, base, quote, qty_step, min_qty, max_qty, tick_size, min_notional, fee_rate) VALUES
    ('BTCUSDT', 'BTC', 'USDT', 0.00001, 0.00001, 9000, 0.01, 5, 0.001),
    ('ETHUSDT', 'ETH', 'USDT', 0.0001, 0.0001, 9000, 0.01, 5, 0.001),
    ('SOLUSDT', 'SOL', 'USDT', 0.001, 0.001, 90000, 0.01, 5, 0.001),
    ('BNBUSDT', 'BNB', 'USDT', 0.001, 0.001, 90000, 0.01, 5, 0.001);

CREATE TABLE users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email          text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash  text NOT NULL,
    role           text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Emails are unique whatever their case; login looks users up through this index.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- A user's wallet is (user_id, asset) with a stored, never negative balance.
-- House accounts have user_id NULL, one per (kind, asset), and no stored balance.
CREATE TABLE accounts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint REFERENCES users (id),
    asset       text NOT NULL REFERENCES assets (code),
    kind        text NOT NULL CHECK (kind IN ('wallet', 'external', 'market', 'fees')),
    balance     numeric CHECK (balance >= 0),
    -- Reserved for resting limit orders (two-phase movements); always 0 until then.
    locked      numeric NOT NULL DEFAULT 0 CHECK (locked >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_user_asset_key UNIQUE (user_id, asset),
    CONSTRAINT accounts_wallet_shape CHECK (
        (kind = 'wallet' AND user_id IS NOT NULL AND balance IS NOT NULL)
        OR (kind <> 'wallet' AND user_id IS NULL AND balance IS NULL)
    )
);

CREATE UNIQUE INDEX accounts_house_key ON accounts (kind, asset) WHERE user_id IS NULL;

-- Every asset has its three house accounts, including an asset a DBA adds later.
CREATE FUNCTION create_house_accounts()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO accounts (asset, kind)
    SELECT NEW.code, k.kind
    FROM (VALUES ('external'), ('market'), ('fees')) AS k (kind);
    RETURN NEW;
END;
$$;

CREATE TRIGGER assets_house_accounts
AFTER INSERT ON assets
FOR EACH ROW EXECUTE FUNCTION create_house_accounts();

INSERT INTO accounts (asset, kind)
SELECT a.code, k.kind
FROM assets AS a
CROSS JOIN (VALUES ('external'), ('market'), ('fees')) AS k (kind);

-- One row per money movement. (user_id, idempotency_key) is unique: the constraint,
-- not a check-then-insert, is what makes a retried request safe under concurrency.
-- request_hash fingerprints the request so a reused key with another request is refused.
CREATE TABLE transactions (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          bigint NOT NULL REFERENCES users (id),
    kind             text NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'buy', 'sell')),
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 100),
    request_hash     bytea NOT NULL,
    -- deposit/withdrawal: the asset and amount moved; buy/sell: the base asset and quantity.
    asset            text NOT NULL,
    amount           numeric NOT NULL CHECK (amount > 0),
    -- The user's wallet balance of `asset` right after this movement (a statement line).
    balance_after    numeric NOT NULL,
    -- Trades only (filled by buy/sell): market, price used and when Binance gave it.
    symbol           text,
    quote_asset      text,
    price            numeric,
    quote_qty        numeric,
    fee              numeric,
    fee_asset        text,
    price_at         timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT transactions_user_key UNIQUE (user_id, idempotency_key)
);

-- A user's history, newest first, for keyset pagination (id < $before).
CREATE INDEX transactions_user_id_idx ON transactions (user_id, id DESC);

-- Signed postings. No foreign key to accounts on purpose: an FK check takes a
-- KEY SHARE lock on the referenced row, and every movement references a house
-- account, so all movements would contend on a few house rows. The money functions
-- are the only writers, and the audit query checks every entry's account exists.
CREATE TABLE entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  bigint NOT NULL REFERENCES transactions (id),
    account_id      bigint NOT NULL,
    asset           text NOT NULL,
    amount          numeric NOT NULL CHECK (amount <> 0)
);

CREATE INDEX entries_transaction_id_idx ON entries (transaction_id);
-- Serves house_balances and the audit with index-only scans.
CREATE INDEX entries_account_id_idx ON entries (account_id) INCLUDE (amount);

-- House balances: the sum of each house account's entries.
CREATE VIEW house_balances AS
SELECT a.id AS account_id,
       a.kind,
       a.asset,
       coalesce(sum(e.amount), 0) AS balance
FROM accounts AS a
LEFT JOIN entries AS e ON e.account_id = a.id
WHERE a.user_id IS NULL
GROUP BY a.id, a.kind, a.asset;
