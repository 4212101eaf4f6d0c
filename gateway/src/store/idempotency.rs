//! Idempotency keys in the store database, so every gateway of a database
//! agrees on what a key already did.

use base64::Engine;
use sqlx::Row;

use super::db::{Db, Result, StoreError};
use crate::throttle::now_ms;

/// A stored answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a key holds when it was not free.
#[derive(Debug, PartialEq, Eq)]
pub enum Existing {
    /// Used for another request (another fingerprint).
    Mismatch,
    /// The first request is still in flight.
    InFlight,
    Done(StoredResponse),
}

impl Db {
    /// Claims `key` in `scope` for a request with `fingerprint` until
    /// `expires_ms` (the in-flight lease), as `claim` (an id of the request,
    /// unguessable): Ok(None) when this request owns it now, else what the
    /// key already holds.
    pub async fn claim_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        expires_ms: i64,
        claim: &str,
    ) -> Result<Option<Existing>> {
        let now = now_ms() as i64;
        if crate::store::keys::random_bytes::<1>()[0] < 4 {
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_ms < $1").bind(now).execute(&self.pool).await?;
        }
        sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND idem_key = $2 AND expires_ms < $3")
            .bind(scope)
            .bind(key)
            .bind(now)
            .execute(&self.pool)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (scope, idem_key, fingerprint, created_ms, expires_ms, claim) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(scope)
        .bind(key)
        .bind(fingerprint)
        .bind(now)
        .bind(expires_ms)
        .bind(claim)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from);
        match inserted {
            Ok(_) => return Ok(None),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        let Some(row) = sqlx::query(
            "SELECT fingerprint, status, headers, body FROM idempotency_keys WHERE scope = $1 AND idem_key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?
        else {
            // Released between the insert and the read: in flight again soon.
            return Ok(Some(Existing::InFlight));
        };
        let stored: String = row.try_get("fingerprint")?;
        if stored != fingerprint {
            return Ok(Some(Existing::Mismatch));
        }
        let status: Option<i32> = row.try_get("status")?;
        let Some(status) = status else { return Ok(Some(Existing::InFlight)) };
        let headers: Option<String> = row.try_get("headers")?;
        let body: Option<String> = row.try_get("body")?;
        Ok(Some(Existing::Done(StoredResponse {
            status: status as u16,
            headers: headers.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default(),
            body: body.and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()).unwrap_or_default(),
        })))
    }

    /// Stores the answer of the request that owns the key (`claim`), kept
    /// until `expires_ms`; a claim that lost the key changes nothing.
    pub async fn complete_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        claim: &str,
        response: &StoredResponse,
        expires_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $1, headers = $2, body = $3, expires_ms = $4 \
             WHERE scope = $5 AND idem_key = $6 AND status IS NULL AND claim = $7",
        )
        .bind(response.status as i32)
        .bind(serde_json::to_string(&response.headers).unwrap_or_default())
        .bind(base64::engine::general_purpose::STANDARD.encode(&response.body))
        .bind(expires_ms)
        .bind(scope)
        .bind(key)
        .bind(claim)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Frees a key whose request got no answer worth keeping (the backend
    /// failed): the client may try again.
    pub async fn release_idempotency_key(&self, scope: &str, key: &str, claim: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND idem_key = $2 AND status IS NULL AND claim = $3",
        )
        .bind(scope)
        .bind(key)
        .bind(claim)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_claim_whose_lease_ran_out_can_neither_store_nor_free_the_new_owners_key() {
        let (_tmp, db) = super::super::db::test_db().await;
        let now = now_ms() as i64;
        // A slow first request: its lease is already over.
        assert_eq!(db.claim_idempotency_key("c", "k", "fp", now - 1, "first").await.unwrap(), None);
        // A second request takes the key over.
        assert_eq!(db.claim_idempotency_key("c", "k", "fp", now + 60_000, "second").await.unwrap(), None);
        let late = StoredResponse { status: 201, headers: Vec::new(), body: b"first".to_vec() };
        db.complete_idempotency_key("c", "k", "first", &late, now + 60_000).await.unwrap();
        db.release_idempotency_key("c", "k", "first").await.unwrap();
        assert_eq!(
            db.claim_idempotency_key("c", "k", "fp", now + 60_000, "third").await.unwrap(),
            Some(Existing::InFlight),
            "still the second request's, unanswered"
        );
        let answer = StoredResponse { status: 201, headers: Vec::new(), body: b"second".to_vec() };
        db.complete_idempotency_key("c", "k", "second", &answer, now + 60_000).await.unwrap();
        assert_eq!(
            db.claim_idempotency_key("c", "k", "fp", now + 60_000, "fourth").await.unwrap(),
            Some(Existing::Done(answer))
        );
    }
}
