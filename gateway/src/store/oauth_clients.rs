//! OAuth2 clients of applications: a client of a trusted KeyManager mapped
//! to an application, so that the application's subscriptions, tiers and
//! environment apply to the client's access tokens.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::db::{Db, KeyGrant, Result, StoreError};
use super::keys::{self, Environment};
use crate::throttle::now_ms;

/// One mapped client.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClient {
    pub id: String,
    pub application_id: String,
    /// `namespace/name` of the KeyManager that issues the client's tokens.
    pub key_manager: String,
    pub client_id: String,
    pub environment: Environment,
    /// The client's public keys (JWK Set), for its request signatures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    pub created_at_ms: i64,
}

/// What a new mapping holds.
pub struct NewClient<'a> {
    pub key_manager: &'a str,
    pub client_id: &'a str,
    pub environment: Environment,
    pub jwks: Option<&'a serde_json::Value>,
    pub jwks_uri: Option<&'a str>,
}

fn client(r: &AnyRow) -> Result<OAuthClient> {
    let env: String = r.try_get("environment")?;
    let jwks: Option<String> = r.try_get("jwks")?;
    Ok(OAuthClient {
        id: r.try_get("id")?,
        application_id: r.try_get("application_id")?,
        key_manager: r.try_get("key_manager")?,
        client_id: r.try_get("client_id")?,
        environment: Environment::parse(&env).unwrap_or(Environment::Production),
        jwks: jwks.and_then(|j| serde_json::from_str(&j).ok()),
        jwks_uri: r.try_get("jwks_uri")?,
        created_at_ms: r.try_get("created_ms")?,
    })
}

/// The columns of a client, as a literal (sqlx takes only static SQL).
macro_rules! columns {
    () => {
        "id, application_id, key_manager, client_id, environment, jwks, jwks_uri, created_ms"
    };
}

impl Db {
    /// Maps a client to an application; 409 when the client is mapped already.
    pub async fn create_oauth_client(&self, application_id: &str, new: NewClient<'_>) -> Result<OAuthClient> {
        self.get_application(application_id).await?;
        let c = OAuthClient {
            id: keys::new_id(),
            application_id: application_id.to_string(),
            key_manager: new.key_manager.to_string(),
            client_id: new.client_id.to_string(),
            environment: new.environment,
            jwks: new.jwks.cloned(),
            jwks_uri: new.jwks_uri.map(str::to_string),
            created_at_ms: now_ms() as i64,
        };
        sqlx::query(
            "INSERT INTO oauth_clients (id, application_id, key_manager, client_id, environment, jwks, jwks_uri, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&c.id)
        .bind(&c.application_id)
        .bind(&c.key_manager)
        .bind(&c.client_id)
        .bind(c.environment.as_str())
        .bind(c.jwks.as_ref().map(|j| j.to_string()))
        .bind(&c.jwks_uri)
        .bind(c.created_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!(
                "client {} of {} is already mapped to an application",
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

    /// Removes a mapping; returns it (for cache invalidation).
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
}
