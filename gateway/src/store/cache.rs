//! API-key checks off the database on the hot path, in two moka caches:
//!
//! - `answers`: what the database said about a key hash, for the TTL
//!   (default 5 s); "no such key" only briefly (at most 2 s), so a key
//!   created on another node works soon and a flood of made-up keys still
//!   costs at most one query per key per interval. Concurrent checks of one
//!   key share a single query (moka's `or_try_insert_with`). Size-bounded
//!   with TinyLFU eviction: a flood of distinct keys never empties it.
//! - `last_known`: the last grant read for each key, size-bounded and without
//!   a TTL, used only while the database is unreachable, so known keys keep
//!   working through an outage however long.
//!
//! A revocation on this node invalidates at once; other nodes see it within
//! the TTL.
//!
//! Keys this node has never seen valid are looked up by at most
//! [`UNSEEN_LOOKUPS`] queries at a time (more answer "unavailable" at once):
//! a flood of made-up keys cannot take every connection of the pool, so the
//! lookups of known keys still reach the database instead of falling back to
//! their last known (possibly revoked since) grant.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use super::db::{Db, KeyGrant};

/// Longest time an "unknown key" answer is reused.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// Keys held in each cache.
const MAX_KEYS: u64 = 200_000;
/// Concurrent database lookups of keys without a last known grant (half the
/// smallest pool).
pub const UNSEEN_LOOKUPS: usize = 2;

/// Result of checking a key.
#[derive(Clone, Debug)]
pub enum KeyCheck {
    Valid(Arc<KeyGrant>),
    Unknown,
    Revoked,
    /// The database is unreachable and the key is not cached.
    Unavailable,
}

type Answer = Option<Arc<KeyGrant>>;

/// Known keys live for the TTL, unknown ones at most NEGATIVE_TTL.
struct AnswerExpiry {
    ttl: Duration,
}

impl Expiry<String, Answer> for AnswerExpiry {
    fn expire_after_create(&self, _key: &String, value: &Answer, _created_at: Instant) -> Option<Duration> {
        Some(if value.is_some() { self.ttl } else { self.ttl.min(NEGATIVE_TTL) })
    }
}

pub struct KeyCache {
    answers: moka::future::Cache<String, Answer>,
    last_known: moka::future::Cache<String, Arc<KeyGrant>>,
    /// Whether a built-in key manager's token (by jti) is revoked, for the TTL.
    revoked: moka::future::Cache<String, bool>,
    /// The last answer per jti, used only while the database is unreachable.
    revoked_last_known: moka::future::Cache<String, bool>,
    /// Bumped whenever a client changes or goes on this node: caches of
    /// clients' details held elsewhere (their keys) start again.
    clients_changed: std::sync::atomic::AtomicU64,
    /// Permits for lookups of keys never seen valid here.
    unseen_lookups: tokio::sync::Semaphore,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> KeyCache {
        Self::with_capacity(ttl, MAX_KEYS)
    }

    /// A cache holding at most about `max_keys` keys in each tier.
    pub fn with_capacity(ttl: Duration, max_keys: u64) -> KeyCache {
        KeyCache {
            answers: moka::future::Cache::builder()
                .max_capacity(max_keys)
                .expire_after(AnswerExpiry { ttl })
                .support_invalidation_closures()
                .build(),
            last_known: moka::future::Cache::builder().max_capacity(max_keys).support_invalidation_closures().build(),
            revoked: moka::future::Cache::builder().max_capacity(max_keys).time_to_live(ttl).build(),
            revoked_last_known: moka::future::Cache::builder().max_capacity(max_keys).build(),
            clients_changed: std::sync::atomic::AtomicU64::new(0),
            unseen_lookups: tokio::sync::Semaphore::new(UNSEEN_LOOKUPS),
        }
    }

    /// Whether the access token with this jti is revoked: Some(answer), or
    /// None when the database is unreachable and the jti was never checked.
    /// Concurrent checks of one jti share one query.
    pub async fn check_revoked(&self, db: &Db, jti: &str) -> Option<bool> {
        let loaded = self.revoked.entry_by_ref(jti).or_try_insert_with(db.token_revoked(jti)).await;
        match loaded {
            Ok(entry) => {
                let revoked = *entry.value();
                if entry.is_fresh() {
                    self.revoked_last_known.insert(jti.to_string(), revoked).await;
                }
                Some(revoked)
            }
            Err(_) => self.revoked_last_known.get(jti).await,
        }
    }

    /// A token was revoked on this node: seen at once.
    pub async fn invalidate_revocation(&self, jti: &str) {
        self.revoked.insert(jti.to_string(), true).await;
        self.revoked_last_known.insert(jti.to_string(), true).await;
    }

    /// Checks a key by its hash.
    pub async fn check(&self, db: &Db, key_hash: &str) -> KeyCheck {
        self.check_with(key_hash, db.grant(key_hash)).await
    }

    /// Checks an OAuth2 client of a KeyManager (`namespace/name`): the
    /// application it is mapped to, through the same caches as API keys.
    pub async fn check_client(&self, db: &Db, key_manager: &str, client_id: &str) -> KeyCheck {
        let key = client_key(key_manager, client_id);
        self.check_with(&key, db.client_grant(key_manager, client_id)).await
    }

    async fn check_with(
        &self,
        key: &str,
        load: impl std::future::Future<Output = Result<Option<KeyGrant>, super::db::StoreError>>,
    ) -> KeyCheck {
        let unseen = !self.last_known.contains_key(key);
        let loaded = self
            .answers
            .entry_by_ref(key)
            .or_try_insert_with(async {
                // A key never seen valid here waits for no connection: with
                // every permit taken its lookup is refused at once.
                let _permit = match unseen {
                    true => Some(self.unseen_lookups.try_acquire().map_err(|_| {
                        super::db::StoreError::Unavailable("too many lookups of unknown keys at once".into())
                    })?),
                    false => None,
                };
                load.await.map(|g| g.map(Arc::new))
            })
            .await;
        match loaded {
            Ok(entry) => {
                if entry.is_fresh()
                    && let Some(grant) = entry.value()
                {
                    self.last_known.insert(key.to_string(), grant.clone()).await;
                }
                verdict(entry.into_value())
            }
            // Unreachable database: the last grant read, however old.
            Err(_) => match self.last_known.get(key).await {
                Some(grant) => verdict(Some(grant)),
                None => KeyCheck::Unavailable,
            },
        }
    }

    /// Forgets a client mapping at once (changed or deleted on this node),
    /// and everything cached from clients' records ([`Self::clients_generation`]).
    pub async fn invalidate_client(&self, key_manager: &str, client_id: &str) {
        self.clients_changed.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.invalidate(&client_key(key_manager, client_id)).await;
    }

    /// Changes with every [`Self::invalidate_client`]: what was read from a
    /// client's record under another generation is read again.
    pub fn clients_generation(&self) -> u64 {
        self.clients_changed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Forgets a key at once (revocation or deletion on this node).
    pub async fn invalidate(&self, key_hash: &str) {
        self.answers.invalidate(key_hash).await;
        self.last_known.invalidate(key_hash).await;
    }

    /// Forgets every key of an application (its subscriptions changed).
    pub fn invalidate_application(&self, application_id: &str) {
        let app = application_id.to_string();
        let a = app.clone();
        // Only fails without support_invalidation_closures(), set above.
        let _ = self.answers.invalidate_entries_if(move |_, v| v.as_ref().is_some_and(|g| g.application_id == a));
        let _ = self.last_known.invalidate_entries_if(move |_, g| g.application_id == app);
    }

    /// Keys held now (both tiers; pending maintenance is run first).
    #[cfg(test)]
    async fn held_keys(&self) -> u64 {
        self.answers.run_pending_tasks().await;
        self.last_known.run_pending_tasks().await;
        self.answers.entry_count() + self.last_known.entry_count()
    }
}

/// Cache key of a client: NUL-separated, so it never equals a key hash (hex).
fn client_key(key_manager: &str, client_id: &str) -> String {
    format!("client\0{key_manager}\0{client_id}")
}

fn verdict(grant: Answer) -> KeyCheck {
    match grant {
        None => KeyCheck::Unknown,
        Some(g) if g.revoked => KeyCheck::Revoked,
        Some(g) => KeyCheck::Valid(g),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::{Environment, hash};

    use crate::store::db::test_db as sqlite;

    #[tokio::test]
    async fn concurrent_checks_of_an_unknown_key_share_one_query_and_the_answer_is_reused() {
        let (_t, db) = sqlite().await;
        let cache = Arc::new(KeyCache::new(Duration::from_secs(5)));
        let checks = (0..50).map(|_| {
            let (cache, db) = (cache.clone(), db.clone());
            tokio::spawn(async move { cache.check(&db, "made-up").await })
        });
        for c in futures::future::join_all(checks).await {
            assert!(matches!(c.unwrap(), KeyCheck::Unknown));
        }
        assert_eq!(db.key_lookups.get(), 1, "single flight");
        assert!(matches!(cache.check(&db, "made-up").await, KeyCheck::Unknown));
        assert_eq!(db.key_lookups.get(), 1, "negative answers are cached");
    }

    #[tokio::test]
    async fn a_flood_of_unknown_keys_never_costs_a_known_key_its_outage_fallback() {
        let (_t, db) = sqlite().await;
        let app = db.create_application("tpp").await.unwrap();
        let (_, key) = db.create_key(&app.id, Environment::Production).await.unwrap();
        let cache = KeyCache::with_capacity(Duration::from_millis(200), 100);
        assert!(matches!(cache.check(&db, &hash(&key)).await, KeyCheck::Valid(_)));
        for i in 0..2_000 {
            assert!(matches!(cache.check(&db, &format!("flood-{i}")).await, KeyCheck::Unknown));
        }
        assert!(cache.held_keys().await <= 2 * 100 + 16, "bounded: {}", cache.held_keys().await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The database goes away: the known key still works, unknown keys get Unavailable.
        let down =
            Db::connect_without_migrating("postgres://tollgate@127.0.0.1:1/none", Duration::from_millis(300)).unwrap();
        assert!(matches!(cache.check(&down, &hash(&key)).await, KeyCheck::Valid(_)));
        assert!(matches!(cache.check(&down, "flood-new").await, KeyCheck::Unavailable));
        // A revocation on this node is seen at once.
        cache.invalidate(&hash(&key)).await;
        assert!(matches!(cache.check(&down, &hash(&key)).await, KeyCheck::Unavailable));
    }

    #[tokio::test]
    async fn lookups_of_unseen_keys_are_bounded_and_known_keys_still_reach_the_database() {
        let (_t, db) = sqlite().await;
        let app = db.create_application("tpp").await.unwrap();
        let (info, key) = db.create_key(&app.id, Environment::Production).await.unwrap();
        let cache = KeyCache::new(Duration::from_millis(1));
        assert!(matches!(cache.check(&db, &hash(&key)).await, KeyCheck::Valid(_)));
        // Every permit taken (a flood of made-up keys in flight).
        let held = cache.unseen_lookups.acquire_many(UNSEEN_LOOKUPS as u32).await.unwrap();
        assert!(matches!(cache.check(&db, "made-up").await, KeyCheck::Unavailable));
        // The known key is looked up again (not answered from the last
        // grant): its revocation elsewhere is seen.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = db.key_lookups.get();
        db.revoke_key(&app.id, &info.id).await.unwrap();
        assert!(matches!(cache.check(&db, &hash(&key)).await, KeyCheck::Revoked));
        assert_eq!(db.key_lookups.get(), before + 1);
        drop(held);
        assert!(matches!(cache.check(&db, "made-up").await, KeyCheck::Unknown));
    }
}
