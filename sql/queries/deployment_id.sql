-- This deployment's id (one row, made by migration 014). Served by deployment_only_row_key.
SELECT id::text AS id
FROM deployment;
