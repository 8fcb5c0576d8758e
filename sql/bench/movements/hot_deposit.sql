-- pgbench: a deposit to user 1, every client on the same wallet (the `hot` scenario
-- without HTTP; with -c 2, as many at once as `exchange serve` has workers).
\set key random(1, 1000000000000)
SELECT * FROM deposit(1, 'USDT', 1.25, 'hot-' || :key);
