-- One asset's balance for a user, at the asset's scale (0 without a wallet yet); no
-- row if the asset does not exist. Served by assets_pkey and accounts_user_asset_key.
SELECT s.code AS asset,
       round(coalesce(w.balance, 0), s.scale) AS balance
FROM assets AS s
LEFT JOIN accounts AS w
    ON w.user_id = $1
   AND w.asset = s.code
WHERE s.code = $2;
