//! Expiring keys (dedupe claims, locks, caches: [`Store::claim_key`](crate::store::Store) and
//! its siblings). They sit behind their own lock, apart from the rest of the state, so the
//! gateway's dedupe claim for each message never waits for a router's routing step.

use std::time::{Duration, Instant};

use super::FastMap;

/// Sweep expired keys every this many claims.
const SWEEP_EVERY: u64 = 4096;

/// Keys with values and expiry times, as Redis `SET … PX` keeps them.
#[derive(Default)]
pub(super) struct ExpiringKeys {
    entries: FastMap<String, (String, Instant)>,
    claims: u64,
}

impl ExpiringKeys {
    /// Claims `key` for `value` unless it is held: `None` when the claim is ours, else the
    /// holder's value. Every [`SWEEP_EVERY`]th claim first drops the expired keys.
    pub(super) fn claim(&mut self, key: &str, value: &str, ttl: Duration) -> Option<String> {
        let now = Instant::now();
        self.claims += 1;
        if self.claims.is_multiple_of(SWEEP_EVERY) {
            self.entries.retain(|_, (_, expiry)| *expiry > now);
        }
        match self.entries.get(key) {
            Some((held, expiry)) if *expiry > now => Some(held.clone()),
            _ => {
                self.entries
                    .insert(key.to_owned(), (value.to_owned(), now + ttl));
                None
            }
        }
    }

    /// Sets `key` to `value` for `ttl`, whether or not it is held.
    pub(super) fn set(&mut self, key: &str, value: String, ttl: Duration) {
        self.entries
            .insert(key.to_owned(), (value, Instant::now() + ttl));
    }

    /// The value of `key`, if set and not expired.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .get(key)
            .filter(|(_, expiry)| *expiry > Instant::now())
            .map(|(v, _)| v.as_str())
    }

    /// Deletes `key`.
    pub(super) fn delete(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Deletes `key` if it holds `value`; whether it did.
    pub(super) fn release(&mut self, key: &str, value: &str) -> bool {
        if self.get(key) != Some(value) {
            return false;
        }
        self.entries.remove(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn a_claim_is_held_until_it_expires_or_is_released() {
        let mut keys = ExpiringKeys::default();
        assert_eq!(keys.claim("k", "a", TTL), None);
        assert_eq!(keys.claim("k", "b", TTL).as_deref(), Some("a"));
        assert!(!keys.release("k", "b"), "only the holder releases");
        assert!(keys.release("k", "a"));
        assert_eq!(keys.claim("k", "b", Duration::ZERO), None);
        assert_eq!(keys.get("k"), None, "a claim for no time has expired");
        assert_eq!(keys.claim("k", "c", TTL), None, "an expired claim is free");
    }

    #[test]
    fn set_overwrites_and_delete_removes() {
        let mut keys = ExpiringKeys::default();
        keys.set("k", "a".to_owned(), TTL);
        keys.set("k", "b".to_owned(), TTL);
        assert_eq!(keys.get("k"), Some("b"));
        keys.delete("k");
        assert_eq!(keys.get("k"), None);
    }

    #[test]
    fn sweeps_drop_expired_keys() {
        let mut keys = ExpiringKeys::default();
        keys.set("old", "x".to_owned(), Duration::ZERO);
        for i in 0..SWEEP_EVERY {
            keys.claim(&format!("k{i}"), "v", TTL);
        }
        assert!(!keys.entries.contains_key("old"));
        assert_eq!(keys.entries.len() as u64, SWEEP_EVERY);
    }
}
