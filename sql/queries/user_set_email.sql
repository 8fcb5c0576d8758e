-- Store an account's email in its normal form (`exchange check-emails --normalize`),
-- if it is still the one read ($3); an email taken meanwhile fails on users_email_key.
-- $1 user id, $2 the new email, $3 the email read. Served by users_pkey.
UPDATE users
SET email = $2
WHERE id = $1
  AND email = $3;
