//! Developer-portal records: developers, their sessions, failed sign-ins,
//! and applications owned by a developer.
//!
//! Passwords are stored as argon2id PHC strings (hashed by the portal off
//! the async workers); session cookies only as SHA-256 hashes, like API
//! keys.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::db::{Application, Db, Result, StoreError};
use super::keys;
use crate::throttle::now_ms;

/// A developer account.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Developer {
    pub id: String,
    pub email: String,
    pub created_at_ms: i64,
    pub disabled_at_ms: Option<i64>,
}

/// A signed-in browser: a developer, or an administrator (admin token).
#[derive(Clone, Debug)]
pub struct Session {
    pub developer: Option<Developer>,
    pub is_admin: bool,
    /// The token every form of this session carries.
    pub csrf: String,
}

/// What a new session gives the browser.
pub struct NewSession {
    /// The cookie value (stored only as a hash).
    pub cookie: String,
    pub csrf: String,
}

fn developer(r: &AnyRow) -> Result<Developer> {
    Ok(Developer {
        id: r.try_get("id")?,
        email: r.try_get("email")?,
        created_at_ms: r.try_get("created_ms")?,
        disabled_at_ms: r.try_get("disabled_ms")?,
    })
}

impl Db {
    /// A new developer; Conflict when the e-mail address is taken.
    pub async fn create_developer(&self, email: &str, password_hash: &str) -> Result<Developer> {
        let d = Developer {
            id: keys::new_id(),
            email: email.to_string(),
            created_at_ms: now_ms() as i64,
            disabled_at_ms: None,
        };
        sqlx::query("INSERT INTO developers (id, email, password_hash, created_ms) VALUES ($1, $2, $3, $4)")
            .bind(&d.id)
            .bind(&d.email)
            .bind(password_hash)
            .bind(d.created_at_ms)
            .execute(&self.pool)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => StoreError::Conflict("an account with this e-mail address exists".into()),
                other => other,
            })?;
        Ok(d)
    }

    /// A developer and its password hash, by e-mail address.
    pub async fn developer_by_email(&self, email: &str) -> Result<Option<(Developer, String)>> {
        let Some(row) =
            sqlx::query("SELECT id, email, created_ms, disabled_ms, password_hash FROM developers WHERE email = $1")
                .bind(email)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        Ok(Some((developer(&row)?, row.try_get("password_hash")?)))
    }

    pub async fn developers(&self) -> Result<Vec<Developer>> {
        sqlx::query("SELECT id, email, created_ms, disabled_ms FROM developers ORDER BY email")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(developer)
            .collect()
    }

    /// Disables (ends its sessions) or enables a developer; returns the
    /// ids of its applications (their credentials change with it).
    pub async fn set_developer_disabled(&self, id: &str, disabled: bool) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("UPDATE developers SET disabled_ms = $1 WHERE id = $2")
            .bind(disabled.then_some(now_ms() as i64))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if n.rows_affected() == 0 {
            return Err(StoreError::NotFound("developer"));
        }
        if disabled {
            sqlx::query("DELETE FROM portal_sessions WHERE developer_id = $1").bind(id).execute(&mut *tx).await?;
        }
        let apps = sqlx::query("SELECT id FROM applications WHERE owner = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok(apps)
    }

    /// Whether the application's owner is disabled (its credentials stop working).
    pub(super) async fn owner_disabled(&self, application_id: &str) -> Result<bool> {
        let row =
            sqlx::query("SELECT d.disabled_ms FROM applications a JOIN developers d ON d.id = a.owner WHERE a.id = $1")
                .bind(application_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<i64>, _>("disabled_ms")?.is_some(),
            None => false,
        })
    }

    /// A new session for a developer (or an administrator when None).
    pub async fn create_session(&self, developer_id: Option<&str>, ttl_ms: i64) -> Result<NewSession> {
        let cookie = base64_url(&keys::random_bytes::<32>());
        let csrf = base64_url(&keys::random_bytes::<32>());
        let now = now_ms() as i64;
        sqlx::query(concat!(
            "INSERT INTO portal_sessions (id_hash, developer_id, is_admin, csrf, created_ms, expires_ms) ",
            "VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(keys::hash(&cookie))
        .bind(developer_id)
        .bind(i32::from(developer_id.is_none()))
        .bind(&csrf)
        .bind(now)
        .bind(now + ttl_ms)
        .execute(&self.pool)
        .await?;
        // Expired sessions go now and then.
        sqlx::query("DELETE FROM portal_sessions WHERE expires_ms < $1").bind(now).execute(&self.pool).await?;
        Ok(NewSession { cookie, csrf })
    }

    /// The live session of a cookie value (None when unknown, expired or
    /// its developer is disabled).
    pub async fn session(&self, cookie: &str) -> Result<Option<Session>> {
        let Some(row) = sqlx::query(concat!(
            "SELECT s.is_admin, s.csrf, s.expires_ms, d.id, d.email, d.created_ms, d.disabled_ms ",
            "FROM portal_sessions s LEFT JOIN developers d ON d.id = s.developer_id WHERE s.id_hash = $1"
        ))
        .bind(keys::hash(cookie))
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let expires: i64 = row.try_get("expires_ms")?;
        if expires <= now_ms() as i64 {
            return Ok(None);
        }
        let is_admin = row.try_get::<i32, _>("is_admin")? != 0;
        let developer = match row.try_get::<Option<String>, _>("id")? {
            Some(_) => Some(developer(&row)?),
            None => None,
        };
        if developer.as_ref().is_some_and(|d| d.disabled_at_ms.is_some()) || (developer.is_none() && !is_admin) {
            return Ok(None);
        }
        Ok(Some(Session { developer, is_admin, csrf: row.try_get("csrf")? }))
    }

    pub async fn delete_session(&self, cookie: &str) -> Result<()> {
        sqlx::query("DELETE FROM portal_sessions WHERE id_hash = $1")
            .bind(keys::hash(cookie))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Failed sign-ins for an address since a time.
    pub async fn sign_in_failures(&self, email: &str, since_ms: i64) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM portal_sign_in_failures WHERE email = $1 AND at_ms >= $2")
            .bind(email)
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    pub async fn record_sign_in_failure(&self, email: &str, forget_before_ms: i64) -> Result<()> {
        sqlx::query("INSERT INTO portal_sign_in_failures (email, at_ms) VALUES ($1, $2)")
            .bind(email)
            .bind(now_ms() as i64)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM portal_sign_in_failures WHERE at_ms < $1")
            .bind(forget_before_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn clear_sign_in_failures(&self, email: &str) -> Result<()> {
        sqlx::query("DELETE FROM portal_sign_in_failures WHERE email = $1").bind(email).execute(&self.pool).await?;
        Ok(())
    }

    /// A developer's own application (Conflict when the name is taken).
    pub async fn create_owned_application(&self, name: &str, owner: &str) -> Result<Application> {
        let app = self.create_application(name).await?;
        sqlx::query("UPDATE applications SET owner = $1 WHERE id = $2")
            .bind(owner)
            .bind(&app.id)
            .execute(&self.pool)
            .await?;
        Ok(Application { owner: Some(owner.to_string()), ..app })
    }

    /// The applications a developer owns.
    pub async fn applications_of(&self, owner: &str) -> Result<Vec<Application>> {
        let rows = sqlx::query(
            "SELECT id, name, created_ms, owner FROM applications WHERE owner = $1 ORDER BY created_ms, id",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Db::application_row).collect()
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
