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

/// What an administrator's session keeps of the admin token.
fn admin_token_hash(token: Option<&[u8]>) -> Option<String> {
    token.map(|t| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(t)))
}

/// A reserved sign-in attempt ([`Db::reserve_sign_in`]).
#[derive(Debug)]
pub struct SignInAttempt(String);

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
    pub async fn owner_disabled(&self, application_id: &str) -> Result<bool> {
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

    /// A new session for a developer, or (`developer_id` None) for an
    /// administrator who signed in with `admin_token`.
    pub async fn create_session(
        &self,
        developer_id: Option<&str>,
        admin_token: Option<&[u8]>,
        ttl_ms: i64,
    ) -> Result<NewSession> {
        let cookie = base64_url(&keys::random_bytes::<32>());
        let csrf = base64_url(&keys::random_bytes::<32>());
        let now = now_ms() as i64;
        sqlx::query(concat!(
            "INSERT INTO portal_sessions (id_hash, developer_id, is_admin, csrf, created_ms, expires_ms, admin_token_hash) ",
            "VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(keys::hash(&cookie))
        .bind(developer_id)
        .bind(i32::from(developer_id.is_none()))
        .bind(&csrf)
        .bind(now)
        .bind(now + ttl_ms)
        .bind(developer_id.is_none().then(|| admin_token_hash(admin_token)).flatten())
        .execute(&self.pool)
        .await?;
        // Expired sessions go now and then.
        sqlx::query("DELETE FROM portal_sessions WHERE expires_ms < $1").bind(now).execute(&self.pool).await?;
        Ok(NewSession { cookie, csrf })
    }

    /// The live session of a cookie value (None when unknown, expired, its
    /// developer is disabled, or an administrator's opened with another
    /// admin token than the gateway's `admin_token`).
    pub async fn session(&self, cookie: &str, admin_token: Option<&[u8]>) -> Result<Option<Session>> {
        let Some(row) = sqlx::query(concat!(
            "SELECT s.is_admin, s.csrf, s.expires_ms, s.admin_token_hash, d.id, d.email, d.created_ms, d.disabled_ms ",
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
        if is_admin {
            let opened_with: Option<String> = row.try_get("admin_token_hash")?;
            let current = admin_token_hash(admin_token);
            let same = matches!((&opened_with, &current), (Some(a), Some(b)) if keys::constant_time_eq(a.as_bytes(), b.as_bytes()));
            if !same {
                return Ok(None);
            }
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

    /// Reserves a sign-in attempt for `key` (an address, or the admin
    /// sign-in) before its secret is checked: the attempt is recorded first
    /// and then counted with every failure and attempt since `since_ms`, so
    /// of any number of concurrent attempts, on any gateways sharing the
    /// database, at most `max` see a count within the limit. None (and the
    /// reservation taken back) when the limit is reached. A reservation that
    /// is neither released nor cleared stays as a failure.
    pub async fn reserve_sign_in(&self, key: &str, since_ms: i64, max: i64) -> Result<Option<SignInAttempt>> {
        let attempt = SignInAttempt(keys::new_id());
        sqlx::query("INSERT INTO portal_sign_in_failures (email, at_ms, attempt) VALUES ($1, $2, $3)")
            .bind(key)
            .bind(now_ms() as i64)
            .bind(&attempt.0)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM portal_sign_in_failures WHERE at_ms < $1").bind(since_ms).execute(&self.pool).await?;
        let row = sqlx::query("SELECT COUNT(*) AS n FROM portal_sign_in_failures WHERE email = $1 AND at_ms >= $2")
            .bind(key)
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await?;
        let n: i64 = row.try_get("n")?;
        if n > max {
            self.release_sign_in(&attempt).await?;
            return Ok(None);
        }
        Ok(Some(attempt))
    }

    /// Takes a reservation back: the attempt was not a failure.
    pub async fn release_sign_in(&self, attempt: &SignInAttempt) -> Result<()> {
        sqlx::query("DELETE FROM portal_sign_in_failures WHERE attempt = $1")
            .bind(&attempt.0)
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
