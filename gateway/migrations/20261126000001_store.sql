-- Applications, API keys and subscriptions (portable SQL: SQLite and PostgreSQL).
-- Times are Unix milliseconds; keys are stored only as SHA-256 hashes.
CREATE TABLE applications (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ms BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    application_id TEXT NOT NULL REFERENCES applications (id),
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    environment TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX api_keys_application ON api_keys (application_id);

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    application_id TEXT NOT NULL REFERENCES applications (id),
    api TEXT NOT NULL,
    policy TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (application_id, api)
);
