//! The store and key manager roles: applications, API keys and
//! subscriptions in a SQL database (SQLite embedded, PostgreSQL for HA), the
//! management REST API over them, and the key checks of the gateway.

pub mod api;
pub mod cache;
pub mod db;
pub mod keys;
pub mod openapi;
pub mod search;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::policy::Policy;
use crate::snapshot::{Api, Snapshot};

/// The store: its database, the key cache and the admin token.
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
        let url = db::database_url(data_dir, database_url)?;
        let timeout = Duration::from_secs(2);
        sqlx::any::install_default_drivers();
        let pool_db = match db::Db::connect(&url, timeout).await {
            Ok(db) => (db, true),
            Err(db::StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "the database is unreachable; the store answers 503 until it is back");
                (db::Db::connect_without_migrating(&url, timeout)?, false)
            }
            Err(e) => anyhow::bail!("opening the database: {e}"),
        };
        let mut pool_db = pool_db;
        pool_db.0.key_lookups = key_lookups;
        tracing::info!(kind = pool_db.0.kind, "store database opened");
        let search = match search::SearchIndex::open(&data_dir.join("search-index")) {
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

    /// Brings the search index up to `snap` (blocking; call off the async threads).
    pub fn sync_search(&self, snap: &Snapshot) {
        if let Some(index) = &self.search {
            match index.sync(snap) {
                Ok(true) => tracing::info!(revision = %snap.revision, apis = snap.apis.len(), "search index rebuilt"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "updating the search index failed"),
            }
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

/// The ThrottlePolicy a subscription tier names, for an API: in the API's
/// namespace, else its ApiManager's.
pub fn tier_policy(snap: &Snapshot, api: &Api, tier: &str) -> Option<Arc<Policy>> {
    let ns = &api.object.namespace;
    let mgr_ns = api.spec.api_manager_ref.namespace.as_deref().unwrap_or(ns);
    snap.policies.get(&format!("{ns}/{tier}")).or_else(|| snap.policies.get(&format!("{mgr_ns}/{tier}"))).cloned()
}

/// The words an API is found by.
pub fn search_text(a: &Api) -> String {
    let s = &a.spec;
    let mut parts = vec![a.id.clone(), s.context.clone(), s.version.clone()];
    parts.extend(s.display_name.clone());
    parts.extend(s.description.clone());
    parts.extend(s.tags.iter().cloned());
    parts.extend(s.operations.iter().map(|o| format!("{} {}", o.method.as_str(), o.path)));
    parts.join(" ")
}
