-- Ids of every user whose tokens must not work: disabled, or deleted since. For the
-- workers' in-memory check (exchange/auth/denylist.py). Served by users_disabled_idx
-- (partial: disabled rows only) and a scan of users_deleted (deletions are rare).
SELECT id
FROM users
WHERE disabled
UNION ALL
SELECT id
FROM users_deleted;
