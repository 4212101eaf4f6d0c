-- Payment idempotency (openBanking.idempotency): one row per (scope, key),
-- scope = API and calling client. `status` is NULL while the first request
-- is in flight; then the answer (status, headers as JSON, body base64) is
-- replayed to repeats with the same fingerprint until `expires_ms`.
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER,
    headers TEXT,
    body TEXT,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_ms);
