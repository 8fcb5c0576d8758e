-- Reference data upkeep: what keeps house accounts and trade_markets in step with the
-- assets and markets a DBA adds or changes, and the rules on those changes.
--
-- Objects: create_house_accounts() and trigger assets_house_accounts (every asset has
-- its external, market and fees accounts); check_market_scale() and trigger
-- markets_scale; check_asset_scale() and trigger assets_scale (a scale never shrinks
-- under a market or the ledger); lock_trade_markets(), refresh_trade_market(),
-- markets_refresh_trade_market() and trigger markets_trade_market,
-- asset_refresh_trade_markets() and trigger assets_trade_markets (trade_markets, the one
-- row a trade reads about its market, follows markets and assets).
--
-- Locks: a transaction-level advisory lock (hashtext('exchange.trade_markets')) makes
-- refreshes of trade_markets take turns; only DBA changes take it, never a trade.
-- check_asset_scale reads the asset's entries (a full scan of entries: a rare change).
-- Errors: check_violation (23514) with a message naming the market or asset.
--
-- Trigger functions set their own search_path: a DBA's change fires them from a session
-- whose search_path may not name the schema.
--
-- Runs as it stands: psql -1 -f sql/functions/markets.sql.

-- Every asset has its three house accounts, including an asset a DBA adds later.
CREATE OR REPLACE FUNCTION create_house_accounts()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = exchange
AS $$
BEGIN
    INSERT INTO accounts (asset, kind)
    SELECT NEW.code, k.kind
    FROM (VALUES ('external'), ('market'), ('fees')) AS k (kind);
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER assets_house_accounts
AFTER INSERT ON assets
FOR EACH ROW EXECUTE FUNCTION create_house_accounts();

-- A market's quantities must fit its base asset's scale: a step finer than a unit
-- would make "a multiple of the step" a quantity no wallet can hold.
CREATE OR REPLACE FUNCTION check_market_scale()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = exchange
AS $$
DECLARE
    v_scale  smallint;
BEGIN
    SELECT a.scale INTO v_scale
    FROM assets AS a
    WHERE a.code = NEW.base;
    IF NEW.qty_step <> round(NEW.qty_step, v_scale) OR NEW.min_qty <> round(NEW.min_qty, v_scale) THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = format('market %s: qty_step and min_qty must have at most %s decimals (%s''s scale)',
                             NEW.symbol, v_scale, NEW.base);
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER markets_scale
BEFORE INSERT OR UPDATE ON markets
FOR EACH ROW EXECUTE FUNCTION check_market_scale();

-- A smaller scale must still hold every market parameter and every amount written in
-- the asset. Reads the asset's entries (a full scan of entries: a DBA's rare change).
CREATE OR REPLACE FUNCTION check_asset_scale()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = exchange
AS $$
DECLARE
    v_symbol  text;
BEGIN
    SELECT m.symbol INTO v_symbol
    FROM markets AS m
    WHERE m.base = NEW.code
      AND (m.qty_step <> round(m.qty_step, NEW.scale) OR m.min_qty <> round(m.min_qty, NEW.scale))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = format('asset %s: market %s has a qty_step or min_qty with more than %s decimals',
                             NEW.code, v_symbol, NEW.scale);
    END IF;
    IF EXISTS (SELECT 1 FROM entries AS e
               WHERE e.asset = NEW.code AND e.amount <> round(e.amount, NEW.scale)) THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = format('asset %s: the ledger holds amounts with more than %s decimals',
                             NEW.code, NEW.scale);
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER assets_scale
BEFORE UPDATE OF scale ON assets
FOR EACH ROW
WHEN (NEW.scale < OLD.scale)
EXECUTE FUNCTION check_asset_scale();

-- Refreshes run one at a time, and each reads its sources after taking its turn. Two
-- changes committed at once (a market inserted while its asset's scale changes, say)
-- would otherwise each compute the row without the other's change, under READ
-- COMMITTED, and leave it stale. A transaction-level advisory lock, held until commit:
-- only DBA changes take it, never a trade.
CREATE OR REPLACE FUNCTION lock_trade_markets()
RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtext('exchange.trade_markets'))
$$;

-- Rebuild one market's row from markets, assets and accounts.
CREATE OR REPLACE FUNCTION refresh_trade_market(p_symbol text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lock_trade_markets();
    -- The statements below see every refresh committed before the turn came.
    DELETE FROM trade_markets WHERE symbol = p_symbol;
    INSERT INTO trade_markets
    SELECT m.symbol, m.base, m.quote, b.scale, q.scale, m.qty_step, m.min_qty, m.max_qty,
           m.min_notional, m.fee_rate, m.active,
           house_account('market', m.base), house_account('market', m.quote),
           house_account('fees', m.base), house_account('fees', m.quote)
    FROM markets AS m
    JOIN assets AS b ON b.code = m.base
    JOIN assets AS q ON q.code = m.quote
    WHERE m.symbol = p_symbol;
END;
$$;

CREATE OR REPLACE FUNCTION markets_refresh_trade_market()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = exchange
AS $$
BEGIN
    PERFORM refresh_trade_market(NEW.symbol);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER markets_trade_market
AFTER INSERT OR UPDATE ON markets
FOR EACH ROW EXECUTE FUNCTION markets_refresh_trade_market();

-- An asset's scale changed: every market it is part of, those committed while this
-- waited for its turn included.
CREATE OR REPLACE FUNCTION asset_refresh_trade_markets()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = exchange
AS $$
BEGIN
    PERFORM lock_trade_markets();
    PERFORM refresh_trade_market(m.symbol)
    FROM markets AS m
    WHERE NEW.code IN (m.base, m.quote);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER assets_trade_markets
AFTER UPDATE OF scale ON assets
FOR EACH ROW EXECUTE FUNCTION asset_refresh_trade_markets();
