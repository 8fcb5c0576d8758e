-- 015: limit orders that rest with locked funds (issue 22).
--
-- An order is one row of `orders`. A resting (NEW) order reserves what it may spend:
-- a buy locks quantity x price of the quote, rounded up to the quote's scale; a sell
-- locks the quantity of the base. The reservation is written twice: on the order
-- (locked_asset, locked_amount) and in the wallet's `locked`, in one transaction, so the
-- audit can prove that every locked unit is explained by an open order. A fill writes
-- one ordinary buy or sell transaction linked to its order (transactions.order_id).
-- The functions that write orders are in sql/functions/orders.sql.

SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '10min';

-- The fee of a resting order filled at its own price (maker). Binance's default rates.
ALTER TABLE markets
    ADD COLUMN maker_fee_rate numeric NOT NULL DEFAULT 0.001;

ALTER TABLE markets
    ADD CONSTRAINT markets_maker_fee_rate_check CHECK (maker_fee_rate >= 0 AND maker_fee_rate < 1) NOT VALID;

-- A wallet never reserves more than it holds (withdrawals and trades check
-- balance - locked first, with a clear error; this is the backstop).
ALTER TABLE accounts
    ADD CONSTRAINT accounts_locked_within_balance CHECK (locked = 0 OR locked <= balance) NOT VALID;

CREATE TABLE orders (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id               bigint NOT NULL REFERENCES users (id),
    symbol                text NOT NULL REFERENCES markets (symbol),
    side                  text NOT NULL CHECK (side IN ('buy', 'sell')),
    type                  text NOT NULL CHECK (type IN ('market', 'limit')),
    time_in_force         text NOT NULL DEFAULT 'GTC' CHECK (time_in_force IN ('GTC', 'IOC', 'FOK')),
    -- The limit price; NULL for a market order.
    price                 numeric CHECK (price > 0),
    quantity              numeric NOT NULL CHECK (quantity > 0),
    -- Fills are whole today; the columns are ready for partial fills.
    executed_qty          numeric NOT NULL DEFAULT 0 CHECK (executed_qty >= 0 AND executed_qty <= quantity),
    cumulative_quote_qty  numeric NOT NULL DEFAULT 0 CHECK (cumulative_quote_qty >= 0),
    status                text NOT NULL CHECK (status IN ('NEW', 'FILLED', 'CANCELED', 'EXPIRED', 'REJECTED')),
    -- What a NEW order reserves (0 once it is final).
    locked_asset          text NOT NULL REFERENCES assets (code),
    locked_amount         numeric NOT NULL DEFAULT 0 CHECK (locked_amount >= 0),
    client_order_id       text CHECK (client_order_id ~ '^[A-Za-z0-9._-]{1,36}$'),
    idempotency_key       text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 100),
    request_hash          bytea NOT NULL,
    -- The fill (a buy or sell transaction whose order_id is this order), once FILLED.
    -- Kept here so that reading an order needs no index on transactions.order_id.
    fill_transaction_id   bigint,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_user_idempotency_key UNIQUE (user_id, idempotency_key),
    CONSTRAINT orders_user_client_order_key UNIQUE (user_id, client_order_id),
    CONSTRAINT orders_limit_has_price CHECK ((type = 'limit') = (price IS NOT NULL)),
    -- A final order holds no lock; a FILLED one executed all of its quantity.
    CONSTRAINT orders_final_holds_no_lock CHECK (status = 'NEW' OR locked_amount = 0),
    CONSTRAINT orders_filled_is_whole CHECK ((status = 'FILLED') = (executed_qty = quantity)),
    CONSTRAINT orders_filled_has_fill CHECK ((status = 'FILLED') = (fill_transaction_id IS NOT NULL))
);
-- The allowed transitions (NEW -> FILLED, CANCELED, EXPIRED or REJECTED; a final
-- status never changes) are enforced by the trigger orders_status_transition
-- (sql/functions/orders.sql): a CHECK constraint cannot see the old row.

-- A user's orders, newest first (keyset pages), and the open ones of a market that a
-- price crosses, best price first then oldest (the fill sweep).
CREATE INDEX orders_user_id_idx ON orders (user_id, id DESC);
CREATE INDEX orders_open_buy_idx ON orders (symbol, price DESC, id) WHERE status = 'NEW' AND side = 'buy';
CREATE INDEX orders_open_sell_idx ON orders (symbol, price, id) WHERE status = 'NEW' AND side = 'sell';

-- The fill transaction of an order (NULL for every other transaction).
ALTER TABLE transactions
    ADD COLUMN order_id bigint;

ALTER TABLE transactions
    ADD CONSTRAINT transactions_order_id_fkey FOREIGN KEY (order_id) REFERENCES orders (id) NOT VALID;

-- One order as the API answers it (order_answer() in sql/functions/orders.sql builds it
-- the same way for a first call, a replay, a cancel and a read).
CREATE TYPE order_answer AS (
    id                    bigint,
    symbol                text,
    side                  text,
    type                  text,
    time_in_force         text,
    price                 numeric,
    quantity              numeric,
    executed_qty          numeric,
    cumulative_quote_qty  numeric,
    status                text,
    locked_asset          text,
    locked_amount         numeric,
    client_order_id       text,
    created_at            timestamptz,
    updated_at            timestamptz,
    transaction_id        bigint,
    replayed              boolean
);
