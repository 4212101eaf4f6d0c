-- Analytics rollups: one row per gateway process (pod), minute and key
-- (API, operation, application, environment, status class, fault kind). A process
-- replaces its own rows while the minute is recent; queries sum the rows
-- of every pod. `latency` is a log-scale histogram (comma-separated counts).
CREATE TABLE analytics_minute (
    pod TEXT NOT NULL,
    minute_ms BIGINT NOT NULL,
    api TEXT NOT NULL,
    operation TEXT NOT NULL,
    application TEXT NOT NULL,
    environment TEXT NOT NULL,
    status_class TEXT NOT NULL,
    fault TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    throttled BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    latency TEXT NOT NULL,
    PRIMARY KEY (pod, minute_ms, api, operation, application, environment, status_class, fault)
);
CREATE INDEX analytics_minute_time ON analytics_minute (minute_ms);

-- Hourly and daily rollups, summed over pods and recomputed from the finer
-- table while their period is recent (so computing one twice is harmless).
CREATE TABLE analytics_hour (
    bucket_ms BIGINT NOT NULL,
    api TEXT NOT NULL,
    operation TEXT NOT NULL,
    application TEXT NOT NULL,
    environment TEXT NOT NULL,
    status_class TEXT NOT NULL,
    fault TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    throttled BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    latency TEXT NOT NULL,
    PRIMARY KEY (bucket_ms, api, operation, application, environment, status_class, fault)
);

CREATE TABLE analytics_day (
    bucket_ms BIGINT NOT NULL,
    api TEXT NOT NULL,
    operation TEXT NOT NULL,
    application TEXT NOT NULL,
    environment TEXT NOT NULL,
    status_class TEXT NOT NULL,
    fault TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    throttled BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    latency TEXT NOT NULL,
    PRIMARY KEY (bucket_ms, api, operation, application, environment, status_class, fault)
);
