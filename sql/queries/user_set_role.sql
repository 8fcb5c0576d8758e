-- Give an existing user a role ('user' or 'admin'); $1: the email's normal form, as
-- user_by_email finds it. Making one admin also enables the account (exchange
-- create-admin recovers a disabled admin). Served by users_email_key.
-- The last active admin cannot be demoted (trigger users_keep_an_active_admin, EX014).
UPDATE users
SET role = $2,
    disabled = disabled AND $2 <> 'admin'
WHERE lower(email) = lower($1)
RETURNING id, email, role, disabled, created_at;
