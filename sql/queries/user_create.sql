-- Register a user. $1: the email in its normal form (exchange/auth/emails.py); another
-- spelling of it, or a case of an older account's, fails on users_email_key.
-- $1 email, $2 bcrypt hash, $3 role ('user' or 'admin').
INSERT INTO users (email, password_hash, role)
VALUES ($1, $2, $3)
RETURNING id, email, role, disabled, created_at;
