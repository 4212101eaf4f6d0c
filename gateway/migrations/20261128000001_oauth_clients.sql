-- OAuth2 clients of applications. A client of an external issuer (a
-- KeyManager, `<namespace>/<name>`) is mapped to an application so that its
-- subscriptions and tiers apply to the client's access tokens. `jwks` /
-- `jwks_uri` are the client's own keys (request signatures).
CREATE TABLE oauth_clients (
    id TEXT PRIMARY KEY,
    application_id TEXT NOT NULL REFERENCES applications (id),
    key_manager TEXT NOT NULL,
    client_id TEXT NOT NULL,
    environment TEXT NOT NULL,
    jwks TEXT,
    jwks_uri TEXT,
    created_ms BIGINT NOT NULL,
    UNIQUE (key_manager, client_id)
);
CREATE INDEX oauth_clients_application ON oauth_clients (application_id);
