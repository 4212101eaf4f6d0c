-- Sign-in throttling reserves an attempt before the password is checked:
-- each row is an attempt in progress or a failure; `attempt` names the
-- reservation so a refused or successful one can be taken back.
ALTER TABLE portal_sign_in_failures ADD COLUMN attempt TEXT;
CREATE INDEX portal_sign_in_failures_attempt ON portal_sign_in_failures (attempt);

-- An administrator's session holds the SHA-256 of the admin token it was
-- opened with, and ends when the gateway's token is another (rotated).
ALTER TABLE portal_sessions ADD COLUMN admin_token_hash TEXT;

-- The request that claimed an idempotency key: only it may store the
-- answer or free the key (a late one whose lease ran out touches nothing).
ALTER TABLE idempotency_keys ADD COLUMN claim TEXT;
