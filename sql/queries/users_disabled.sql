-- Ids of every disabled user, for the workers' in-memory check (exchange/denylist.py).
-- Served by users_disabled_idx (partial: disabled rows only).
SELECT id
FROM users
WHERE disabled;
