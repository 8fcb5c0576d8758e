-- Every asset with the user's balance in it, at the asset's scale; 0 where the user
-- has no wallet yet. Smallest asset code first. Served by accounts_user_asset_key.
SELECT s.code AS asset,
       round(coalesce(w.balance, 0), s.scale) AS balance
FROM assets AS s
LEFT JOIN accounts AS w
    ON w.user_id = $1
   AND w.asset = s.code
ORDER BY s.code;
