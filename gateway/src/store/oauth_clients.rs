//! OAuth2 clients of applications. Two kinds share the table:
//!
//! - a client of a trusted KeyManager mapped to an application, so that the
//!   application's subscriptions, tiers and environment apply to the
//!   client's access tokens;
//! - a client of the built-in key manager (`key_manager` = `builtin`), with
//!   how it authenticates at the token endpoint and the scopes it may get.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::db::{Db, KeyGrant, Result, StoreError};
use super::keys::{self, Environment};
use crate::throttle::now_ms;

/// `key_manager` of the built-in key manager's clients.
pub const BUILTIN: &str = "builtin";

/// One client.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClient {
    pub id: String,
    pub application_id: String,
    /// `namespace/name` of the KeyManager that issues the client's tokens,
    /// or `builtin`.
    pub key_manager: String,
    pub client_id: String,
    pub environment: Environment,
    /// The client's public keys (JWK Set): its client assertions and request signatures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Built-in clients: private_key_jwt, tls_client_auth or client_secret_basic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_auth_subject_dn: Option<String>,
    /// Scopes the client may be granted (built-in clients).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Registered through /oauth2/register (RFC 7591).
    pub dynamically_registered: bool,
    /// Registered client metadata (dynamic registration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    pub created_at_ms: i64,
    #[serde(skip)]
    pub secret_hash: Option<String>,
    #[serde(skip)]
    pub registration_token_hash: Option<String>,
}

/// What a new client holds.
#[derive(Default)]
pub struct NewClient<'a> {
    pub key_manager: &'a str,
    pub client_id: &'a str,
    pub environment: Option<Environment>,
    pub jwks: Option<&'a serde_json::Value>,
    pub jwks_uri: Option<&'a str>,
    pub auth_method: Option<&'a str>,
    pub subject_dn: Option<&'a str>,
    pub secret_hash: Option<String>,
    pub scopes: &'a [String],
    pub registration_token_hash: Option<String>,
    pub metadata: Option<&'a serde_json::Value>,
}

fn client(r: &AnyRow) -> Result<OAuthClient> {
    let env: String = r.try_get("environment")?;
    let jwks: Option<String> = r.try_get("jwks")?;
    let scopes: Option<String> = r.try_get("scopes")?;
    let metadata: Option<String> = r.try_get("metadata")?;
    let registration_token_hash: Option<String> = r.try_get("registration_token_hash")?;
    Ok(OAuthClient {
        id: r.try_get("id")?,
        application_id: r.try_get("application_id")?,
        key_manager: r.try_get("key_manager")?,
        client_id: r.try_get("client_id")?,
        environment: Environment::parse(&env).unwrap_or(Environment::Production),
        jwks: jwks.and_then(|j| serde_json::from_str(&j).ok()),
        jwks_uri: r.try_get("jwks_uri")?,
        token_endpoint_auth_method: r.try_get("auth_method")?,
        tls_client_auth_subject_dn: r.try_get("subject_dn")?,
        scopes: scopes.map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default(),
        dynamically_registered: registration_token_hash.is_some(),
        metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
        created_at_ms: r.try_get("created_ms")?,
        secret_hash: r.try_get("secret_hash")?,
        registration_token_hash,
    })
}

/// The columns of a client, as a literal (sqlx takes only static SQL).
macro_rules! columns {
    () => {
        "id, application_id, key_manager, client_id, environment, jwks, jwks_uri, created_ms, auth_method, \
         subject_dn, secret_hash, scopes, registration_token_hash, metadata"
    };
}

impl Db {
    /// Adds a client to an application; 409 when the client exists already.
    pub async fn create_oauth_client(&self, application_id: &str, new: NewClient<'_>) -> Result<OAuthClient> {
        self.get_application(application_id).await?;
        let c = OAuthClient {
            id: keys::new_id(),
            application_id: application_id.to_string(),
            key_manager: new.key_manager.to_string(),
            client_id: new.client_id.to_string(),
            environment: new.environment.unwrap_or(Environment::Production),
            jwks: new.jwks.cloned(),
            jwks_uri: new.jwks_uri.map(str::to_string),
            token_endpoint_auth_method: new.auth_method.map(str::to_string),
            tls_client_auth_subject_dn: new.subject_dn.map(str::to_string),
            scopes: new.scopes.to_vec(),
            dynamically_registered: new.registration_token_hash.is_some(),
            metadata: new.metadata.cloned(),
            created_at_ms: now_ms() as i64,
            secret_hash: new.secret_hash,
            registration_token_hash: new.registration_token_hash,
        };
        sqlx::query(concat!(
            "INSERT INTO oauth_clients (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&c.id)
        .bind(&c.application_id)
        .bind(&c.key_manager)
        .bind(&c.client_id)
        .bind(c.environment.as_str())
        .bind(c.jwks.as_ref().map(|j| j.to_string()))
        .bind(&c.jwks_uri)
        .bind(c.created_at_ms)
        .bind(&c.token_endpoint_auth_method)
        .bind(&c.tls_client_auth_subject_dn)
        .bind(&c.secret_hash)
        .bind((!c.scopes.is_empty()).then(|| c.scopes.join(" ")))
        .bind(&c.registration_token_hash)
        .bind(c.metadata.as_ref().map(|m| m.to_string()))
        .execute(&self.pool)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!(
                "client {} of {} is already registered to an application",
                c.client_id, c.key_manager
            )),
            other => other,
        })?;
        Ok(c)
    }

    pub async fn oauth_clients(&self, application_id: &str) -> Result<Vec<OAuthClient>> {
        self.get_application(application_id).await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM oauth_clients WHERE application_id = $1 ORDER BY created_ms, id"
        ))
        .bind(application_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(client).collect()
    }

    /// A client by the issuer that knows it and its client id.
    pub async fn oauth_client(&self, key_manager: &str, client_id: &str) -> Result<Option<OAuthClient>> {
        sqlx::query(concat!("SELECT ", columns!(), " FROM oauth_clients WHERE key_manager = $1 AND client_id = $2"))
            .bind(key_manager)
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(client)
            .transpose()
    }

    /// Removes a client; returns it (for cache invalidation).
    pub async fn delete_oauth_client(&self, application_id: &str, id: &str) -> Result<OAuthClient> {
        let row =
            sqlx::query(concat!("SELECT ", columns!(), " FROM oauth_clients WHERE id = $1 AND application_id = $2"))
                .bind(id)
                .bind(application_id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound("OAuth client"))?;
        let c = client(&row)?;
        sqlx::query("DELETE FROM oauth_clients WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(c)
    }

    /// Replaces a dynamically registered client's keys, scopes and metadata
    /// (RFC 7592 PUT).
    pub async fn update_registered_client(&self, new: NewClient<'_>) -> Result<()> {
        let n = sqlx::query(
            "UPDATE oauth_clients SET jwks = $1, jwks_uri = $2, auth_method = $3, subject_dn = $4, scopes = $5, \
             metadata = $6 WHERE key_manager = 'builtin' AND client_id = $7 AND registration_token_hash IS NOT NULL",
        )
        .bind(new.jwks.map(|j| j.to_string()))
        .bind(new.jwks_uri)
        .bind(new.auth_method)
        .bind(new.subject_dn)
        .bind((!new.scopes.is_empty()).then(|| new.scopes.join(" ")))
        .bind(new.metadata.map(|m| m.to_string()))
        .bind(new.client_id)
        .execute(&self.pool)
        .await?;
        if n.rows_affected() == 0 {
            return Err(StoreError::NotFound("client"));
        }
        Ok(())
    }

    /// The grant of a client's tokens, None when the client is not mapped.
    pub async fn client_grant(&self, key_manager: &str, client_id: &str) -> Result<Option<KeyGrant>> {
        self.key_lookups.inc();
        let Some(row) = sqlx::query(
            "SELECT application_id, environment FROM oauth_clients WHERE key_manager = $1 AND client_id = $2",
        )
        .bind(key_manager)
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        self.grant_of(&row, false).await.map(Some)
    }

    /// Records a client assertion's jti; false when it was seen before
    /// (a replay). Expired records are pruned now and then.
    pub async fn use_assertion_jti(&self, client_id: &str, jti: &str, expires_ms: i64) -> Result<bool> {
        let now = now_ms() as i64;
        if keys::random_bytes::<1>()[0] < 4 {
            sqlx::query("DELETE FROM oauth_assertion_jtis WHERE expires_ms < $1").bind(now).execute(&self.pool).await?;
        }
        let id = format!("{client_id}\n{jti}");
        // A record left from an assertion that expired no longer counts.
        sqlx::query("DELETE FROM oauth_assertion_jtis WHERE id = $1 AND expires_ms < $2")
            .bind(&id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        match sqlx::query("INSERT INTO oauth_assertion_jtis (id, expires_ms) VALUES ($1, $2)")
            .bind(&id)
            .bind(expires_ms)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)
        {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Revokes an access token by its jti until it would have expired.
    pub async fn revoke_token(&self, jti: &str, client_id: &str, expires_ms: i64) -> Result<()> {
        let now = now_ms() as i64;
        sqlx::query("DELETE FROM oauth_revocations WHERE expires_ms < $1").bind(now).execute(&self.pool).await?;
        match sqlx::query(
            "INSERT INTO oauth_revocations (jti, client_id, expires_ms, revoked_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(jti)
        .bind(client_id)
        .bind(expires_ms)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from)
        {
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether an access token (by jti) is revoked.
    pub async fn token_revoked(&self, jti: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT jti FROM oauth_revocations WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }
}
