//! The store database through sqlx's Any driver: one code path for the
//! embedded SQLite database (`<data-dir>/database/tollgate.db`, the default)
//! and PostgreSQL (`--database-url postgres://...`, the HA patterns).
//! Migrations are embedded and run at start.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::keys::{self, Environment};
use crate::throttle::now_ms;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Store errors; `Unavailable` means the database could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Other(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            // PostgreSQL connection exceptions (08) and operator intervention (57: shutting down, starting up).
            sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57")) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(d.message().to_string()),
            _ => StoreError::Other(e.to_string()),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    /// The developer (portal account) that owns it; absent when made
    /// through the management API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub id: String,
    pub application_id: String,
    pub prefix: String,
    pub environment: Environment,
    pub created_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub application_id: String,
    pub api: String,
    pub policy: String,
    pub created_at_ms: i64,
}

/// What the gateway needs to know about a presented key.
#[derive(Clone, Debug)]
pub struct KeyGrant {
    pub application_id: String,
    pub environment: Environment,
    pub revoked: bool,
    /// API (`namespace/name`) -> subscription tier (ThrottlePolicy name).
    pub subscriptions: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct Db {
    pub(super) pool: AnyPool,
    pub kind: &'static str,
    /// API-key lookups that reached the database (`tollgate_store_key_lookups_total`).
    pub key_lookups: prometheus_client::metrics::counter::Counter,
}

/// The database URL: the given one, else SQLite under `<data-dir>/database`.
/// `url` safe to print: SQLite URLs as they are, others without their user
/// and password.
pub fn redacted(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return url.to_string();
    }
    match url.parse::<http::Uri>() {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme_str().unwrap_or("?"),
            u.host().unwrap_or("?"),
            u.port_u16().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path()
        ),
        Err(_) => "(the database URL)".to_string(),
    }
}

/// The database URL: `url`, or SQLite in `<data-dir>/database` (created,
/// and checked to be writable so a wrong volume owner is reported by path,
/// OS error and owner rather than as SQLite's "unable to open database file").
pub fn database_url(data_dir: &Path, url: Option<&str>) -> std::result::Result<String, String> {
    match url {
        Some(u) => Ok(u.to_string()),
        None => {
            let dir = data_dir.join("database");
            crate::writable::ensure_writable(&dir, "the database folder")?;
            Ok(format!("sqlite://{}?mode=rwc", dir.join("tollgate.db").display()))
        }
    }
}

impl Db {
    /// Connects (lazily: the database may come up later) and migrates when reachable.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let db = Self::connect_without_migrating(url, timeout)?;
        db.migrate().await?;
        Ok(db)
    }

    /// A pool without running the migrations (the database is down now).
    pub fn connect_without_migrating(url: &str, timeout: Duration) -> Result<Db> {
        let kind = if url.starts_with("postgres") { "postgres" } else { "sqlite" };
        let pool = AnyPoolOptions::new()
            .max_connections(if kind == "sqlite" { 4 } else { 8 })
            .acquire_timeout(timeout)
            .connect_lazy(url)
            .map_err(|e| StoreError::Other(format!("database URL: {e}")))?;
        Ok(Db { pool, kind, key_lookups: Default::default() })
    }

    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(inner) => StoreError::from(inner),
            other => StoreError::Other(other.to_string()),
        })
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn create_application(&self, name: &str) -> Result<Application> {
        let app =
            Application { id: keys::new_id(), name: name.to_string(), created_at_ms: now_ms() as i64, owner: None };
        sqlx::query("INSERT INTO applications (id, name, created_ms) VALUES ($1, $2, $3)")
            .bind(&app.id)
            .bind(&app.name)
            .bind(app.created_at_ms)
            .execute(&self.pool)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!("an application named {name:?} exists")),
                other => other,
            })?;
        Ok(app)
    }

    pub(super) fn application_row(r: &AnyRow) -> Result<Application> {
        Ok(Application {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            created_at_ms: r.try_get("created_ms")?,
            owner: r.try_get("owner")?,
        })
    }

    pub async fn applications(&self) -> Result<Vec<Application>> {
        let rows = sqlx::query("SELECT id, name, created_ms, owner FROM applications ORDER BY created_ms, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::application_row).collect()
    }

    pub async fn get_application(&self, id: &str) -> Result<Application> {
        let row = sqlx::query("SELECT id, name, created_ms, owner FROM applications WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("application"))?;
        Self::application_row(&row)
    }

    /// Deletes an application with its keys and subscriptions; returns the
    /// key hashes that stop working.
    pub async fn delete_application(&self, id: &str) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let hashes: Vec<String> = sqlx::query("SELECT key_hash FROM api_keys WHERE application_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("key_hash"))
            .collect::<Result<_, _>>()?;
        sqlx::query("DELETE FROM subscriptions WHERE application_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM oauth_clients WHERE application_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM api_keys WHERE application_id = $1").bind(id).execute(&mut *tx).await?;
        let n = sqlx::query("DELETE FROM applications WHERE id = $1").bind(id).execute(&mut *tx).await?;
        if n.rows_affected() == 0 {
            return Err(StoreError::NotFound("application"));
        }
        tx.commit().await?;
        Ok(hashes)
    }

    /// Creates a key; returns its record and the key itself (shown once).
    pub async fn create_key(&self, application_id: &str, env: Environment) -> Result<(KeyInfo, String)> {
        self.get_application(application_id).await?;
        let key = keys::new_key(env);
        let info = KeyInfo {
            id: keys::new_id(),
            application_id: application_id.to_string(),
            prefix: keys::prefix(&key),
            environment: env,
            created_at_ms: now_ms() as i64,
            revoked_at_ms: None,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, application_id, key_hash, prefix, environment, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&info.id)
        .bind(&info.application_id)
        .bind(keys::hash(&key))
        .bind(&info.prefix)
        .bind(env.as_str())
        .bind(info.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok((info, key))
    }

    pub async fn keys(&self, application_id: &str) -> Result<Vec<KeyInfo>> {
        self.get_application(application_id).await?;
        let rows = sqlx::query(
            "SELECT id, application_id, prefix, environment, created_ms, revoked_ms FROM api_keys \
             WHERE application_id = $1 ORDER BY created_ms, id",
        )
        .bind(application_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let env: String = r.try_get("environment")?;
                Ok(KeyInfo {
                    id: r.try_get("id")?,
                    application_id: r.try_get("application_id")?,
                    prefix: r.try_get("prefix")?,
                    environment: Environment::parse(&env).unwrap_or(Environment::Production),
                    created_at_ms: r.try_get("created_ms")?,
                    revoked_at_ms: r.try_get("revoked_ms")?,
                })
            })
            .collect()
    }

    /// Revokes a key; returns its hash (for cache invalidation).
    pub async fn revoke_key(&self, application_id: &str, key_id: &str) -> Result<String> {
        let row = sqlx::query("SELECT key_hash FROM api_keys WHERE id = $1 AND application_id = $2")
            .bind(key_id)
            .bind(application_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("key"))?;
        let hash: String = row.try_get("key_hash")?;
        sqlx::query("UPDATE api_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
            .bind(now_ms() as i64)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(hash)
    }

    pub async fn create_subscription(&self, application_id: &str, api: &str, policy: &str) -> Result<Subscription> {
        self.get_application(application_id).await?;
        let sub = Subscription {
            id: keys::new_id(),
            application_id: application_id.to_string(),
            api: api.to_string(),
            policy: policy.to_string(),
            created_at_ms: now_ms() as i64,
        };
        sqlx::query(
            "INSERT INTO subscriptions (id, application_id, api, policy, created_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&sub.id)
        .bind(&sub.application_id)
        .bind(&sub.api)
        .bind(&sub.policy)
        .bind(sub.created_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("the application is already subscribed to {api}")),
            other => other,
        })?;
        Ok(sub)
    }

    pub async fn subscriptions(&self, application_id: Option<&str>) -> Result<Vec<Subscription>> {
        let rows = match application_id {
            Some(a) => {
                sqlx::query(
                    "SELECT id, application_id, api, policy, created_ms FROM subscriptions \
                     WHERE application_id = $1 ORDER BY created_ms, id",
                )
                .bind(a)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, application_id, api, policy, created_ms FROM subscriptions ORDER BY created_ms, id",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(Subscription {
                    id: r.try_get("id")?,
                    application_id: r.try_get("application_id")?,
                    api: r.try_get("api")?,
                    policy: r.try_get("policy")?,
                    created_at_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// Deletes a subscription; returns its application id.
    pub async fn delete_subscription(&self, id: &str) -> Result<String> {
        let row = sqlx::query("SELECT application_id FROM subscriptions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound("subscription"))?;
        let app: String = row.try_get("application_id")?;
        sqlx::query("DELETE FROM subscriptions WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(app)
    }

    /// The grant of a presented key (by hash), None when unknown.
    pub async fn grant(&self, key_hash: &str) -> Result<Option<KeyGrant>> {
        self.key_lookups.inc();
        let Some(row) = sqlx::query("SELECT application_id, environment, revoked_ms FROM api_keys WHERE key_hash = $1")
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let revoked: Option<i64> = row.try_get("revoked_ms")?;
        self.grant_of(&row, revoked.is_some()).await.map(Some)
    }

    /// The grant of a credential row (`application_id`, `environment`),
    /// with the application's subscriptions.
    pub(super) async fn grant_of(&self, row: &AnyRow, revoked: bool) -> Result<KeyGrant> {
        let application_id: String = row.try_get("application_id")?;
        let env: String = row.try_get("environment")?;
        let subscriptions = self.subscribed(&application_id).await?;
        // A disabled developer's applications stop working with it.
        let revoked = revoked || self.owner_disabled(&application_id).await?;
        Ok(KeyGrant {
            application_id,
            environment: Environment::parse(&env).unwrap_or(Environment::Production),
            revoked,
            subscriptions,
        })
    }

    /// (API, tier) of every subscription of an application.
    pub(super) async fn subscribed(&self, application_id: &str) -> Result<Vec<(String, String)>> {
        sqlx::query("SELECT api, policy FROM subscriptions WHERE application_id = $1")
            .bind(application_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("api")?, r.try_get("policy")?)))
            .collect()
    }
}

/// A migrated SQLite database in a temporary folder (unit tests).
#[cfg(test)]
pub(crate) async fn test_db() -> (tempfile::TempDir, Db) {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", tmp.path().join("t.db").display());
    sqlx::any::install_default_drivers();
    let db = Db::connect(&url, Duration::from_secs(2)).await.unwrap();
    (tmp, db)
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn printed_urls_carry_no_credentials() {
        assert_eq!(
            redacted("postgres://tollgate:s3cret@db.bank.svc:5432/tollgate?sslmode=require"),
            "postgres://db.bank.svc:5432/tollgate"
        );
        assert_eq!(
            redacted("sqlite:///var/lib/tollgate/database/tollgate.db?mode=rwc"),
            "sqlite:///var/lib/tollgate/database/tollgate.db?mode=rwc"
        );
        assert!(!redacted("postgres://u:p@@").contains("u:p"), "{}", redacted("postgres://u:p@@"));
    }

    #[test]
    fn the_sqlite_folder_is_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("database"), b"a file, not a folder").unwrap();
        let e = database_url(dir.path(), None).unwrap_err();
        assert!(e.starts_with(&format!("the database folder {}", dir.path().join("database").display())), "{e}");
        assert_eq!(database_url(dir.path(), Some("postgres://h/db")).unwrap(), "postgres://h/db");
    }
}
