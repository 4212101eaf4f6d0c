//! API keys: 256 random bits, shown once, stored as a SHA-256 hash.

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Production or sandbox credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Production,
    Sandbox,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Sandbox => "sandbox",
        }
    }
    pub fn parse(s: &str) -> Option<Environment> {
        match s {
            "production" => Some(Environment::Production),
            "sandbox" => Some(Environment::Sandbox),
            _ => None,
        }
    }
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("the operating system's random source works");
    b
}

/// A random identifier (128 bits, hex).
pub fn new_id() -> String {
    hex::encode(random_bytes::<16>())
}

/// A new key: `tg_live_…` or `tg_test_…` followed by 256 random bits.
pub fn new_key(env: Environment) -> String {
    let tag = match env {
        Environment::Production => "live",
        Environment::Sandbox => "test",
    };
    format!("tg_{tag}_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// The stored form of a key.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The part of a key shown in listings (no secret bits beyond 4 characters).
pub fn prefix(key: &str) -> String {
    key.chars().take(12).collect()
}

/// Compares secrets without leaking where they differ: both are hashed
/// first (so the time does not depend on their lengths), then the digests
/// are compared with `subtle`'s constant-time equality.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    Sha256::digest(a).as_slice().ct_eq(Sha256::digest(b).as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_long_and_hashed() {
        let a = new_key(Environment::Production);
        let b = new_key(Environment::Sandbox);
        assert!(a.starts_with("tg_live_") && b.starts_with("tg_test_"));
        assert_ne!(a, new_key(Environment::Production));
        assert!(a.len() >= 8 + 43, "256 bits of base64: {a}");
        assert_eq!(hash(&a).len(), 64);
        // SHA-256 of "abc" (FIPS 180-2 test vector), lowercase hex.
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_ne!(hash(&a), hash(&b));
        assert!(!hash(&a).contains(&a[8..]));
        assert_eq!(new_id().len(), 32);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(constant_time_eq(b"", b""));
        // A difference anywhere (first byte, last byte, length) is found.
        assert!(!constant_time_eq(b"secret", b"Secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret-longer"));
        assert!(!constant_time_eq(b"secret", b""));
        // Inputs whose plain bytes share a prefix longer than a digest
        // differ after hashing too (no truncation to a common length).
        let long = [b'x'; 100];
        let mut other = long;
        other[99] = b'y';
        assert!(!constant_time_eq(&long, &other));
        assert!(!constant_time_eq(&long, &long[..64]));
    }
}
