-- One user, without the password hash. Served by users_pkey.
SELECT id, email, role, disabled, created_at
FROM users
WHERE id = $1;
