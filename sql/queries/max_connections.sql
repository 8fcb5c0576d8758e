-- PostgreSQL's max_connections, which `exchange serve` compares with its workers' pools.
SELECT current_setting('max_connections')::int;
