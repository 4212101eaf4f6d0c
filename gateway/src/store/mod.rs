//! The store and key manager roles: applications, API keys and
//! subscriptions in a SQL database (SQLite embedded, PostgreSQL for HA), the
//! search index over published APIs, and the key checks of the gateway. The
//! management REST API over it lives in `store_api.rs`; nothing here knows
//! the routing snapshot (it is handed the views it needs).

pub mod analytics;
pub mod cache;
pub mod db;
pub mod idempotency;
pub mod keys;
pub mod oauth_clients;
pub mod openapi;
pub mod portal;
pub mod search;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The store: its database, the key cache and the admin token.
/// How long /status waits for the database's answer.
pub const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Store {
    pub db: db::Db,
    pub cache: cache::KeyCache,
    pub admin_token: Option<Vec<u8>>,
    /// Search over published APIs (None if the index folder cannot be used).
    pub search: Option<search::SearchIndex>,
    migrated: AtomicBool,
    migrate_lock: tokio::sync::Mutex<()>,
}

impl Store {
    /// Opens the store. The database may be unreachable now: migrations then
    /// run on first use, and the management API answers 503 until they do.
    pub async fn open(
        data_dir: &Path,
        database_url: Option<&str>,
        admin_token_file: Option<&Path>,
        key_ttl: Duration,
        key_lookups: prometheus_client::metrics::counter::Counter,
    ) -> anyhow::Result<Store> {
        let admin_token = match admin_token_file {
            Some(p) => {
                let t = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("--admin-token-file {}: {e}", p.display()))?;
                let t = t.trim().to_string();
                anyhow::ensure!(
                    t.len() >= 16,
                    "--admin-token-file {}: the token must have at least 16 characters",
                    p.display()
                );
                Some(t.into_bytes())
            }
            None => None,
        };
        let url = db::database_url(data_dir, database_url).map_err(|e| anyhow::anyhow!(e))?;
        let timeout = Duration::from_secs(2);
        sqlx::any::install_default_drivers();
        let pool_db = match db::Db::connect(&url, timeout).await {
            Ok(db) => (db, true),
            Err(db::StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "the database is unreachable; the store answers 503 until it is back");
                (db::Db::connect_without_migrating(&url, timeout)?, false)
            }
            Err(e) => anyhow::bail!("opening the database {}: {e}", db::redacted(&url)),
        };
        let mut pool_db = pool_db;
        pool_db.0.key_lookups = key_lookups;
        tracing::info!(kind = pool_db.0.kind, "store database opened");
        let index_dir = data_dir.join("search-index");
        let search = match crate::writable::ensure_writable(&index_dir, "the search index folder")
            .map_err(|e| anyhow::anyhow!(e))
            .and_then(|()| search::SearchIndex::open(&index_dir))
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "the search index cannot be opened; ?q= searches fall back to substring matching");
                None
            }
        };
        Ok(Store {
            search,
            db: pool_db.0,
            cache: cache::KeyCache::new(key_ttl),
            admin_token,
            migrated: AtomicBool::new(pool_db.1),
            migrate_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Brings the search index up to the published APIs of snapshot
    /// `revision` (blocking; call off the async threads).
    pub fn sync_search(&self, revision: &str, apis: &[search::IndexedApi]) {
        if let Some(index) = &self.search {
            match index.sync(revision, apis) {
                Ok(Some(changed)) => {
                    tracing::info!(revision = %revision, apis = apis.len(), changed, "search index brought up to date")
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "updating the search index failed"),
            }
        }
    }

    /// Whether the database answers (`SELECT 1` within [`HEALTH_TIMEOUT`]),
    /// for /status and /status/dependencies: `{"state": "ok"}` or
    /// `{"state": "unreachable", "error": ...}`.
    pub async fn health(&self) -> serde_json::Value {
        match tokio::time::timeout(HEALTH_TIMEOUT, self.db.ping()).await {
            Ok(Ok(())) => serde_json::json!({"state": "ok"}),
            Ok(Err(e)) => serde_json::json!({"state": "unreachable", "error": e.to_string()}),
            Err(_) => serde_json::json!({"state": "unreachable",
                "error": format!("no answer within {} s", HEALTH_TIMEOUT.as_secs())}),
        }
    }

    /// Runs the migrations if they have not run yet (the database was down at start).
    pub async fn ensure_migrated(&self) -> Result<(), db::StoreError> {
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let _g = self.migrate_lock.lock().await;
        if !self.migrated.load(Ordering::Acquire) {
            self.db.migrate().await?;
            self.migrated.store(true, Ordering::Release);
        }
        Ok(())
    }
}
