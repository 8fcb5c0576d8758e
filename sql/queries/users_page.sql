-- One page of users, newest first, without password hashes. Keyset pagination: $1 is
-- the last id of the previous page (NULL for the first page), $2 the page size.
-- Served by users_pkey.
SELECT id, email, role, disabled, created_at
FROM users
WHERE id < coalesce($1::bigint, 9223372036854775807)
ORDER BY id DESC
LIMIT $2;
