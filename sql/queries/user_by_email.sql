-- The user to log in. $1: the email's normal form (exchange/auth/emails.py), as emails are
-- stored; lower() also finds an account stored, before emails were normalised, in
-- another case. Served by users_email_key.
SELECT id, email, password_hash, role, disabled
FROM users
WHERE lower(email) = lower($1);
