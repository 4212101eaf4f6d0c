-- The built-in key manager. Its clients are rows of oauth_clients with
-- key_manager = 'builtin': how they authenticate at the token endpoint
-- (private_key_jwt, tls_client_auth, client_secret_basic), the subject DN
-- of tls_client_auth, the SHA-256 of a client_secret_basic secret, the
-- scopes they may get (space separated), and for dynamically registered
-- clients the SHA-256 of the registration access token and the registered
-- metadata (JSON).
ALTER TABLE oauth_clients ADD COLUMN auth_method TEXT;
ALTER TABLE oauth_clients ADD COLUMN subject_dn TEXT;
ALTER TABLE oauth_clients ADD COLUMN secret_hash TEXT;
ALTER TABLE oauth_clients ADD COLUMN scopes TEXT;
ALTER TABLE oauth_clients ADD COLUMN registration_token_hash TEXT;
ALTER TABLE oauth_clients ADD COLUMN metadata TEXT;

-- Client assertions seen (RFC 7523 3: a jti is used once), kept until the
-- assertion expires; `id` is the client id and the jti. Every gateway of a
-- database agrees on what was seen.
CREATE TABLE oauth_assertion_jtis (
    id TEXT PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX oauth_assertion_jtis_expiry ON oauth_assertion_jtis (expires_ms);

-- Revoked access tokens of the built-in key manager (RFC 7009), by jti,
-- kept until the token would have expired.
CREATE TABLE oauth_revocations (
    jti TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT NOT NULL
);
CREATE INDEX oauth_revocations_expiry ON oauth_revocations (expires_ms);
