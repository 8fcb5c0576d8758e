-- Disable ($2 true) or enable ($2 false) a user; no row if the id does not exist.
-- Served by users_pkey.
UPDATE users
SET disabled = $2
WHERE id = $1
RETURNING id, email, role, disabled, created_at;
