-- Every account's id and email, by id: what `exchange check-emails` reads. A full scan
-- of users, run by an admin, not by the API.
SELECT id, email
FROM users
ORDER BY id;
