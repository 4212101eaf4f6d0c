//! API-key checks off the database on the hot path: grants are cached for a
//! short TTL (default 5 s), unknown keys too (so a flood of bad keys does
//! not reach the database). A revocation on this node invalidates at once;
//! other nodes see it within the TTL. While the database is unreachable,
//! cached grants keep working however old they are.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::db::{Db, KeyGrant, StoreError};

/// Result of checking a key.
#[derive(Clone, Debug)]
pub enum KeyCheck {
    Valid(Arc<KeyGrant>),
    Unknown,
    Revoked,
    /// The database is unreachable and the key is not cached.
    Unavailable,
}

struct Entry {
    grant: Option<Arc<KeyGrant>>,
    fetched: Instant,
}

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    max_entries: usize,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> KeyCache {
        KeyCache { ttl, entries: Mutex::new(HashMap::new()), max_entries: 100_000 }
    }

    /// Checks a key by its hash.
    pub async fn check(&self, db: &Db, key_hash: &str) -> KeyCheck {
        let cached = self.entries.lock().get(key_hash).map(|e| (e.grant.clone(), e.fetched.elapsed() < self.ttl));
        if let Some((grant, true)) = &cached {
            return verdict(grant.clone());
        }
        match db.grant(key_hash).await {
            Ok(grant) => {
                let grant = grant.map(Arc::new);
                let mut map = self.entries.lock();
                if map.len() >= self.max_entries {
                    let ttl = self.ttl;
                    map.retain(|_, e| e.fetched.elapsed() < ttl);
                    if map.len() >= self.max_entries {
                        map.clear();
                    }
                }
                map.insert(key_hash.to_string(), Entry { grant: grant.clone(), fetched: Instant::now() });
                verdict(grant)
            }
            Err(StoreError::Unavailable(_)) | Err(StoreError::Other(_)) => match cached {
                Some((grant, _)) => verdict(grant),
                None => KeyCheck::Unavailable,
            },
            Err(_) => KeyCheck::Unavailable,
        }
    }

    /// Forgets a key at once (revocation or deletion on this node).
    pub fn invalidate(&self, key_hash: &str) {
        self.entries.lock().remove(key_hash);
    }

    /// Forgets every key of an application (its subscriptions changed).
    pub fn invalidate_application(&self, application_id: &str) {
        self.entries.lock().retain(|_, e| e.grant.as_ref().is_none_or(|g| g.application_id != application_id));
    }
}

fn verdict(grant: Option<Arc<KeyGrant>>) -> KeyCheck {
    match grant {
        None => KeyCheck::Unknown,
        Some(g) if g.revoked => KeyCheck::Revoked,
        Some(g) => KeyCheck::Valid(g),
    }
}
