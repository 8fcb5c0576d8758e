-- The user to log in, whatever the case of the email. Served by users_email_key.
SELECT id, email, password_hash, role, disabled
FROM users
WHERE lower(email) = lower($1);
