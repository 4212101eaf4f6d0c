-- Developer portal: developers (argon2id password hashes), their sessions
-- (only SHA-256 hashes of the cookie values are stored), failed sign-ins
-- (throttling across gateways) and the owner of an application (NULL for
-- applications made through the management API).
CREATE TABLE developers (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    disabled_ms BIGINT
);

CREATE TABLE portal_sessions (
    id_hash TEXT PRIMARY KEY,
    developer_id TEXT REFERENCES developers (id),
    is_admin INTEGER NOT NULL,
    csrf TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX portal_sessions_developer ON portal_sessions (developer_id);
CREATE INDEX portal_sessions_expiry ON portal_sessions (expires_ms);

CREATE TABLE portal_sign_in_failures (
    email TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX portal_sign_in_failures_email ON portal_sign_in_failures (email, at_ms);

ALTER TABLE applications ADD COLUMN owner TEXT REFERENCES developers (id);
CREATE INDEX applications_owner ON applications (owner);
