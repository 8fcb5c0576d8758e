-- Every market's symbol, in order: the prices the feed polls and the API serves.
-- Served by markets_pkey.
SELECT symbol
FROM markets
ORDER BY symbol;
