-- pgbench: a market buy of 0.0001 BTC at 50,000 USDT by one of setup.sql's users.
\set user random(1, 256)
\set key random(1, 1000000000000)
SELECT * FROM buy(:user, 'BTCUSDT', 0.0001, NULL, NULL, 50000.00, now(), NULL, 'buy-' || :key);
