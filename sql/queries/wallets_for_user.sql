-- The user's balance in every asset ($2 NULL) or in one ($2 = asset code), at the
-- asset's scale (truncated: never more than the wallet holds); 0 where the user has no
-- wallet yet. `locked` is what resting limit orders reserve (sql/functions/orders.sql),
-- `available` = balance - locked. Smallest asset code first.
-- Served by assets_pkey and accounts_user_asset_key.
SELECT s.code AS asset,
       trunc(coalesce(w.balance, 0), s.scale) AS balance,
       trunc(coalesce(w.locked, 0), s.scale) AS locked,
       trunc(coalesce(w.balance - w.locked, 0), s.scale) AS available
FROM assets AS s
LEFT JOIN accounts AS w
    ON w.user_id = $1
   AND w.asset = s.code
WHERE ($2::text IS NULL OR s.code = $2::text)
ORDER BY s.code;
