//! The public keys of an OAuth2 client (its registered `jwks` or
//! `jwksUri`): its client assertions at the key manager and its request
//! signatures (`x-jws-signature`) at the gateway. Remote sets are fetched
//! off the request path by the shared [`JwksCache`].

use std::sync::Arc;
use std::time::Duration;

use super::jwks::{JwksCache, RemoteKeys};
use super::keys::KeySet;
use crate::store::Store;
use crate::store::db::StoreError;

/// Where a client's keys are.
pub enum Source {
    Inline(Arc<KeySet>),
    Remote(Arc<RemoteKeys>),
}

impl Source {
    /// The source of a registered `jwks` document or `jwksUri`; None when
    /// the client registered neither.
    pub fn of(
        jwks: Option<&serde_json::Value>,
        uri: Option<&str>,
        cache: &JwksCache,
    ) -> Result<Option<Source>, String> {
        match (jwks, uri) {
            (Some(doc), _) => KeySet::parse(doc.to_string().as_bytes()).map(|k| Some(Source::Inline(Arc::new(k)))),
            (None, Some(uri)) => Ok(Some(Source::Remote(cache.source(uri)))),
            (None, None) => Ok(None),
        }
    }

    /// The keys now; a remote set that lacks `kid` (or was never fetched)
    /// is fetched again first (rate-limited by the cache).
    pub async fn keys(&self, kid: Option<&str>, cache: &JwksCache) -> Option<Arc<KeySet>> {
        match self {
            Source::Inline(k) => Some(k.clone()),
            Source::Remote(src) => match src.current() {
                Some(set) if kid.is_none_or(|k| set.has_kid(k)) => Some(set),
                _ => {
                    cache.refresh_for_unknown_kid(src).await;
                    src.current()
                }
            },
        }
    }
}

/// Clients' key sources by (issuer, client id), for the key-cache TTL or
/// until a client changes on this node (the store's clients generation).
pub struct ClientKeys {
    cache: moka::future::Cache<(String, String), Read>,
}

/// A client's key source as read under a clients generation.
type Read = (u64, Option<Arc<Source>>);

impl ClientKeys {
    pub fn new(ttl: Duration) -> ClientKeys {
        ClientKeys { cache: moka::future::Cache::builder().max_capacity(100_000).time_to_live(ttl).build() }
    }

    /// The key source of a client of `issuer` (`builtin` or a KeyManager's
    /// `namespace/name`); None when the client is unknown or has no keys.
    pub async fn get(
        &self,
        store: &Store,
        jwks: &JwksCache,
        issuer: &str,
        client_id: &str,
    ) -> Result<Option<Arc<Source>>, StoreError> {
        let key = (issuer.to_string(), client_id.to_string());
        // Read before loading: a change during the load leaves the entry stale.
        let generation = store.cache.clients_generation();
        if let Some((seen, _)) = self.cache.get(&key).await
            && seen != generation
        {
            self.cache.invalidate(&key).await;
        }
        let db = &store.db;
        self.cache
            .try_get_with(key, async {
                let Some(c) = db.oauth_client(issuer, client_id).await? else { return Ok((generation, None)) };
                let source = Source::of(c.jwks.as_ref(), c.jwks_uri.as_deref(), jwks).ok().flatten().map(Arc::new);
                Ok((generation, source))
            })
            .await
            .map(|(_, source)| source)
            .map_err(|e: Arc<StoreError>| StoreError::Unavailable(e.to_string()))
    }
}
