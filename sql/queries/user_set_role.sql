-- Give an existing user a role ('user' or 'admin'); $1: the email's normal form, as
-- user_by_email finds it. Served by users_email_key.
UPDATE users
SET role = $2
WHERE lower(email) = lower($1)
RETURNING id, email, role, disabled, created_at;
