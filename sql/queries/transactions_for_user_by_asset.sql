-- One page of a user's history that moved asset $4 (either side of a trade), newest
-- first, of one kind ($3) or of every kind ($3 NULL); $2 the last id of the previous
-- page (NULL for the first), $5 page size. For each kind and side, an ordered index
-- scan stopped after $5 rows (transactions_user_asset_idx, and
-- transactions_user_quote_asset_idx for trades), then the newest $5 of those: a page
-- reads at most 6 x $5 rows, however long the history. A row is never on both sides
-- (a market's base and quote differ), so UNION ALL. The kinds: transaction_kind's.
SELECT page.*
FROM unnest(CASE WHEN $3::text IS NULL THEN ARRAY['deposit', 'withdrawal', 'buy', 'sell']
                 ELSE ARRAY[$3::text] END) AS k (kind)
CROSS JOIN LATERAL (
    (SELECT t.id, t.kind, t.asset, t.amount, t.balance_after, t.symbol, t.quote_asset,
            t.price, t.quote_qty, t.fee, t.fee_asset, t.price_at, t.created_at, t.quote_balance_after
     FROM transactions AS t
     WHERE t.user_id = $1
       AND t.asset = $4::text
       AND t.kind = k.kind
       AND t.id < coalesce($2::bigint, 9223372036854775807)
     ORDER BY t.id DESC
     LIMIT $5)
    UNION ALL
    (SELECT t.id, t.kind, t.asset, t.amount, t.balance_after, t.symbol, t.quote_asset,
            t.price, t.quote_qty, t.fee, t.fee_asset, t.price_at, t.created_at, t.quote_balance_after
     FROM transactions AS t
     WHERE t.user_id = $1
       AND t.quote_asset = $4::text
       AND t.kind = k.kind
       AND k.kind IN ('buy', 'sell')
       AND t.id < coalesce($2::bigint, 9223372036854775807)
     ORDER BY t.id DESC
     LIMIT $5)
) AS page
ORDER BY page.id DESC
LIMIT $5;
