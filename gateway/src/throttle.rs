//! In-process throttling: exact fixed-window counters.
//!
//! A limit of N requests per period P admits at most N requests in each
//! window `[k*P, (k+1)*P)` (windows aligned to the Unix epoch), so any
//! concurrent burst sees exactly N admissions. Counters live in sharded maps
//! keyed by a 64-bit hash of (policy, counter kind, key); entries of past
//! windows are evicted, and each table holds at most a configured number of
//! keys, so memory stays bounded however many distinct keys arrive.
//!
//! When a shard is full of live windows, keys still below their limit are
//! evicted (fewest requests first); a key at or over its limit is never
//! forgotten, so a throttled client stays throttled however many new keys an
//! attacker mints. Only when every key is at its limit is a new key refused
//! (its request is treated as over the limit), counted in
//! `tollgate_throttle_keys_refused_total`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;

const SHARDS: usize = 64;

/// A limit: `requests` per `period_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub requests: u64,
    pub period_secs: u64,
}

/// Result of counting one request against one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the window resets.
    pub reset_ms: u64,
}

impl Decision {
    /// Whole seconds until reset, rounded up (at least 1).
    pub fn reset_secs(&self) -> u64 {
        self.reset_ms.div_ceil(1000).max(1)
    }
}

#[derive(Clone, Copy)]
struct Slot {
    window_end_ms: u64,
    count: u64,
    /// The limit the key was last counted against.
    limit: u64,
}

impl Slot {
    fn below_limit(&self) -> bool {
        self.count < self.limit
    }
}

/// A table of fixed-window counters.
pub struct CounterTable {
    shards: Box<[Mutex<HashMap<u64, Slot, NoHash>>]>,
    per_shard_cap: usize,
    /// New keys refused because the table was full of keys at their limit.
    refused: Counter,
}

/// Keys are already hashes; use them as they are.
#[derive(Clone, Copy, Default)]
pub struct NoHash;

impl BuildHasher for NoHash {
    type Hasher = NoHasher;
    fn build_hasher(&self) -> NoHasher {
        NoHasher(0)
    }
}

/// Identity hasher for u64 keys.
pub struct NoHasher(u64);

impl Hasher for NoHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl CounterTable {
    /// A table holding at most about `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        Self::with_refused_counter(max_keys, Counter::default())
    }

    /// A table that counts refused new keys in `refused`.
    pub fn with_refused_counter(max_keys: usize, refused: Counter) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::with_hasher(NoHash))).collect();
        CounterTable { shards, per_shard_cap: max_keys.div_ceil(SHARDS).max(1), refused }
    }

    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, Slot, NoHash>> {
        &self.shards[(key >> 58) as usize % SHARDS]
    }

    /// Adds `cost` to the counter of `key` for the window containing `now_ms`
    /// if that keeps it within `window.requests`; with `count_over`, counts
    /// even when over the limit (count-only policies).
    pub fn hit(&self, key: u64, window: Window, cost: u64, count_over: bool, now_ms: u64) -> Decision {
        let period_ms = window.period_secs.max(1) * 1000;
        let window_end_ms = (now_ms / period_ms + 1) * period_ms;
        let mut map = self.shard(key).lock();
        if map.len() >= self.per_shard_cap
            && !map.contains_key(&key)
            && !make_room(&mut map, now_ms, self.per_shard_cap)
        {
            self.refused.inc();
            return Decision { allowed: false, limit: window.requests, remaining: 0, reset_ms: window_end_ms - now_ms };
        }
        let slot = map.entry(key).or_insert(Slot { window_end_ms, count: 0, limit: window.requests });
        if slot.window_end_ms != window_end_ms {
            *slot = Slot { window_end_ms, count: 0, limit: window.requests };
        }
        slot.limit = window.requests;
        let allowed = slot.count + cost <= window.requests;
        if allowed || count_over {
            slot.count = slot.count.saturating_add(cost);
        }
        Decision {
            allowed,
            limit: window.requests,
            remaining: window.requests.saturating_sub(slot.count),
            reset_ms: window_end_ms - now_ms,
        }
    }

    /// Whether `key` has used up `window` (without counting anything).
    pub fn peek_exhausted(&self, key: u64, window: Window, now_ms: u64) -> Option<Decision> {
        let period_ms = window.period_secs.max(1) * 1000;
        let window_end_ms = (now_ms / period_ms + 1) * period_ms;
        let map = self.shard(key).lock();
        let slot = map.get(&key)?;
        (slot.window_end_ms == window_end_ms && slot.count >= window.requests).then(|| Decision {
            allowed: false,
            limit: window.requests,
            remaining: 0,
            reset_ms: window_end_ms - now_ms,
        })
    }

    /// Takes back `cost` counted for `key` in the window containing `now_ms`
    /// (a request that a later check refused consumes nothing).
    pub fn refund(&self, key: u64, window: Window, cost: u64, now_ms: u64) {
        let period_ms = window.period_secs.max(1) * 1000;
        let window_end_ms = (now_ms / period_ms + 1) * period_ms;
        if let Some(slot) = self.shard(key).lock().get_mut(&key)
            && slot.window_end_ms == window_end_ms
        {
            slot.count = slot.count.saturating_sub(cost);
        }
    }

    /// Removes counters of windows that have ended.
    pub fn sweep(&self, now_ms: u64) {
        for s in self.shards.iter() {
            s.lock().retain(|_, slot| slot.window_end_ms > now_ms);
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frees room in a full shard: drops ended windows, then keys below their
/// limit (fewest requests first, an eighth of the shard at a time so the scan
/// is amortised). False when every key is at or over its limit.
fn make_room(map: &mut HashMap<u64, Slot, NoHash>, now_ms: u64, cap: usize) -> bool {
    map.retain(|_, s| s.window_end_ms > now_ms);
    if map.len() < cap {
        return true;
    }
    let mut below: Vec<(u64, u64)> = map.iter().filter(|(_, s)| s.below_limit()).map(|(k, s)| (s.count, *k)).collect();
    if below.is_empty() {
        return false;
    }
    let n = (cap / 8).clamp(1, below.len());
    below.select_nth_unstable(n - 1);
    for (_, k) in &below[..n] {
        map.remove(k);
    }
    true
}

/// Counter tables by policy id, kept across configuration reloads so an
/// edited policy keeps its counts.
#[derive(Default)]
pub struct Registry {
    tables: Mutex<HashMap<String, Arc<CounterTable>>>,
    refused: Counter,
}

impl Registry {
    /// A registry whose tables count refused new keys in `refused`.
    pub fn new(refused: Counter) -> Self {
        Registry { tables: Mutex::default(), refused }
    }

    /// The table of a policy, created on first use.
    pub fn table(&self, policy_id: &str, max_keys: usize) -> Arc<CounterTable> {
        self.tables
            .lock()
            .entry(policy_id.to_string())
            .or_insert_with(|| Arc::new(CounterTable::with_refused_counter(max_keys, self.refused.clone())))
            .clone()
    }

    /// Forgets tables of policies no longer configured.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.tables.lock().retain(|k, _| live.contains(k));
    }

    /// Sweeps every table.
    pub fn sweep(&self, now_ms: u64) {
        let tables: Vec<_> = self.tables.lock().values().cloned().collect();
        for t in tables {
            t.sweep(now_ms);
        }
    }
}

/// 64-bit hash of a counter key.
pub fn key_hash(parts: &[&[u8]]) -> u64 {
    // FNV-1a then a final mix; stable across processes (shared counters later).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_n_per_window_then_reset() {
        let t = CounterTable::new(1000);
        let w = Window { requests: 5, period_secs: 60 };
        let base = 1_000_000 * 60_000;
        let admitted = (0..20).filter(|_| t.hit(7, w, 1, false, base).allowed).count();
        assert_eq!(admitted, 5);
        let d = t.hit(7, w, 1, false, base + 59_000);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset_secs(), 1);
        assert!(t.hit(7, w, 1, false, base + 60_000).allowed, "next window");
        assert!(t.hit(8, w, 1, false, base).allowed, "other key");
    }

    #[test]
    fn concurrent_burst_admits_exactly_n() {
        let t = Arc::new(CounterTable::new(1000));
        let w = Window { requests: 100, period_secs: 3600 };
        let now = now_ms();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || (0..100).filter(|_| t.hit(1, w, 1, false, now).allowed).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn memory_is_bounded_and_a_throttled_client_stays_throttled() {
        let t = CounterTable::new(6400);
        let tight = Window { requests: 1, period_secs: 60 };
        let roomy = Window { requests: 5, period_secs: 60 };
        let now = now_ms();
        let throttled = key_hash(&[b"throttled client"]);
        assert!(t.hit(throttled, tight, 1, false, now).allowed);
        assert!(!t.hit(throttled, tight, 1, false, now).allowed);
        // A flood of new keys, each below its limit.
        for k in 0..200_000u64 {
            assert!(t.hit(key_hash(&[&k.to_le_bytes()]), roomy, 1, false, now).allowed);
        }
        assert!(t.len() <= 6400, "{}", t.len());
        assert!(!t.hit(throttled, tight, 1, false, now).allowed, "still throttled after the flood");
        assert_eq!(t.refused.get(), 0, "room was made by evicting keys below their limit");
        t.sweep(now + 120_000);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn new_keys_are_refused_only_when_every_key_is_at_its_limit() {
        let t = CounterTable::new(64);
        let w = Window { requests: 1, period_secs: 60 };
        let now = now_ms();
        let keys: Vec<u64> = (0..10_000u64).map(|k| key_hash(&[&k.to_le_bytes()])).collect();
        let admitted: Vec<u64> = keys.iter().copied().filter(|k| t.hit(*k, w, 1, false, now).allowed).collect();
        assert!(t.len() <= 64);
        assert!(t.refused.get() > 0, "a full table of keys at their limit refuses new keys");
        assert_eq!(admitted.len() as u64 + t.refused.get(), keys.len() as u64);
        // Every admitted key that is still held is at its limit and stays throttled.
        let held = admitted.iter().filter(|k| !t.hit(**k, w, 1, false, now).allowed).count();
        assert_eq!(held, admitted.len(), "no admitted key was forgotten and readmitted");
    }

    #[test]
    fn a_refund_gives_back_what_was_counted() {
        let t = CounterTable::new(100);
        let w = Window { requests: 2, period_secs: 60 };
        let now = 1_000_000 * 60_000;
        assert!(t.hit(9, w, 1, false, now).allowed);
        assert!(t.hit(9, w, 1, false, now).allowed);
        t.refund(9, w, 1, now);
        assert!(t.hit(9, w, 1, false, now).allowed, "the refunded request is available again");
        assert!(!t.hit(9, w, 1, false, now).allowed);
        t.refund(9, w, 1, now + 60_000);
        assert!(!t.hit(9, w, 1, false, now).allowed, "a refund for another window changes nothing");
    }

    #[test]
    fn count_only_keeps_counting() {
        let t = CounterTable::new(10);
        let w = Window { requests: 1, period_secs: 60 };
        let now = now_ms();
        assert!(t.hit(1, w, 1, true, now).allowed);
        assert!(!t.hit(1, w, 1, true, now).allowed);
        assert!(t.peek_exhausted(1, w, now).is_some());
    }
}
