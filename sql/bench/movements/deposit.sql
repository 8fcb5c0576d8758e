-- pgbench: a deposit by one of setup.sql's users (random keys: a replay is rare).
\set user random(1, 256)
\set key random(1, 1000000000000)
SELECT * FROM deposit(:user, 'USDT', 1.25, 'deposit-' || :key);
