//! The bounded `jti` replay cache.
//!
//! An entry lives until its token can no longer be accepted anyway (`exp + skew`). When the
//! cache is full of live entries it refuses new tokens instead of forgetting live `jti`s:
//! forgetting one would let its token be replayed.

use std::collections::{BTreeSet, HashMap};

use ehr_ledger::tx::ParticipantId;

use super::AuthError;

/// Seen `(participant, jti)` pairs and when each may be forgotten.
#[derive(Debug, Default)]
pub(crate) struct ReplayCache {
    /// `(participant, jti)` to the first time at which the entry may be dropped.
    live: HashMap<(ParticipantId, Box<str>), u64>,
    /// The same entries ordered by that time, for purging.
    by_expiry: BTreeSet<(u64, ParticipantId, Box<str>)>,
}

impl ReplayCache {
    /// Drops every entry whose time has come (`forget_at <= now`).
    fn purge(&mut self, now: u64) {
        while let Some(first) = self.by_expiry.first() {
            if first.0 > now {
                break;
            }
            let (_, who, jti) = self
                .by_expiry
                .pop_first()
                .expect("invariant: first() just returned an entry");
            self.live.remove(&(who, jti));
        }
    }

    /// Records `jti` of `who` until `forget_at`, or refuses it if it is live already or the
    /// cache holds `capacity` live entries.
    pub(crate) fn insert(
        &mut self,
        who: ParticipantId,
        jti: &str,
        forget_at: u64,
        now: u64,
        capacity: usize,
    ) -> Result<(), AuthError> {
        self.purge(now);
        let key = (who, Box::<str>::from(jti));
        if self.live.contains_key(&key) {
            return Err(AuthError::Replayed);
        }
        if self.live.len() >= capacity {
            return Err(AuthError::ReplayCacheFull);
        }
        self.by_expiry.insert((forget_at, key.0, key.1.clone()));
        self.live.insert(key, forget_at);
        Ok(())
    }

    /// The number of live entries.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_refused_until_forgotten() {
        let mut c = ReplayCache::default();
        let a = ParticipantId([1; 32]);
        let b = ParticipantId([2; 32]);
        c.insert(a, "j1", 100, 10, 10).unwrap();
        assert_eq!(c.insert(a, "j1", 100, 50, 10), Err(AuthError::Replayed));
        // Another participant's jti is its own.
        c.insert(b, "j1", 100, 50, 10).unwrap();
        assert_eq!(c.insert(a, "j1", 100, 99, 10), Err(AuthError::Replayed));
        // At forget_at the entry goes.
        c.insert(a, "j1", 200, 100, 10).unwrap();
        // Both entries that expired at 100 were purged; only the new one is live.
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn full_cache_refuses_rather_than_forgets() {
        let mut c = ReplayCache::default();
        let a = ParticipantId([1; 32]);
        for i in 0..3 {
            c.insert(a, &format!("j{i}"), 100 + i, 0, 3).unwrap();
        }
        assert_eq!(
            c.insert(a, "j9", 100, 0, 3),
            Err(AuthError::ReplayCacheFull)
        );
        // Every live jti is still refused as a replay.
        for i in 0..3 {
            assert_eq!(
                c.insert(a, &format!("j{i}"), 100, 1, 3),
                Err(AuthError::Replayed)
            );
        }
        // Once the first entry may be forgotten there is room again.
        c.insert(a, "j9", 300, 100, 3).unwrap();
        assert_eq!(c.len(), 3);
    }
}
