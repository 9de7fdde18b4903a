//! Group commit: many writers, one fsync.
//!
//! Uploads make two small durable writes each (the label counters and the owner key store).
//! Made one at a time, each waited for its own fsync under a lock, so concurrent uploads
//! queued behind one another's fsyncs, on the async worker threads. Now a writer writes
//! without syncing, takes a ticket, and waits until its ticket is durable: the first waiter
//! syncs everything written so far, and the writers that queued meanwhile find their tickets
//! covered when they get the lock. Nothing is handed out before it is durable.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Tracks which writes are durable.
#[derive(Debug, Default)]
pub struct GroupSync {
    /// Tickets handed out (each after its write completed).
    written: AtomicU64,
    /// The highest ticket known durable; held while syncing.
    durable: Mutex<u64>,
}

impl GroupSync {
    /// A tracker with nothing written.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ticket of a write that has just completed (not yet durable).
    pub fn ticket(&self) -> u64 {
        self.written.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Blocks until the write of `ticket` is durable, calling `sync` (which must make every
    /// completed write durable) if no other caller already did. An error of `sync` is this
    /// caller's; a later caller tries again.
    pub fn wait<E>(&self, ticket: u64, sync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut durable = self.durable.lock().unwrap_or_else(|e| e.into_inner());
        if *durable >= ticket {
            return Ok(());
        }
        // Every ticket up to `target` was taken after its write completed.
        let target = self.written.load(Ordering::SeqCst);
        sync()?;
        *durable = (*durable).max(target);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn one_sync_covers_the_writes_before_it() {
        let g = GroupSync::new();
        let syncs = AtomicUsize::new(0);
        let sync = || -> Result<(), ()> {
            syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        let (a, b) = (g.ticket(), g.ticket());
        g.wait(a, sync).unwrap();
        // b was written before a's sync: covered.
        g.wait(b, sync).unwrap();
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        // A later write needs another sync.
        let c = g.ticket();
        g.wait(c, sync).unwrap();
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_failed_sync_is_retried_by_the_next_waiter() {
        let g = GroupSync::new();
        let t = g.ticket();
        assert_eq!(g.wait(t, || Err("disk full")), Err("disk full"));
        let mut ran = false;
        g.wait(t, || -> Result<(), ()> {
            ran = true;
            Ok(())
        })
        .unwrap();
        assert!(ran, "not durable after a failed sync");
    }

    #[test]
    fn group_counters_hand_out_each_counter_once_across_threads_and_restarts() {
        use ehr_search::sse::{FileCounters, Keyword, SearchKeyOwner};
        use rand::SeedableRng;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters");
        let ek =
            SearchKeyOwner::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(3)).epoch_key();
        let ka = ek.keyword_key(&Keyword::text("alpha").unwrap());
        let kb = ek.keyword_key(&Keyword::text("beta").unwrap());
        let mut seen_a = Vec::new();
        {
            let g = GroupCounters::new(FileCounters::open(&path).unwrap()).unwrap();
            let got: Vec<Vec<u64>> = std::thread::scope(|scope| {
                let hs: Vec<_> = (0..8)
                    .map(|_| {
                        scope.spawn(|| {
                            (0..50)
                                .map(|_| g.reserve(&[&ka, &kb]).unwrap()[0])
                                .collect::<Vec<u64>>()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            seen_a.extend(got.into_iter().flatten());
        }
        seen_a.sort_unstable();
        assert_eq!(
            seen_a,
            (0..400).collect::<Vec<u64>>(),
            "each counter once, none skipped"
        );
        // Reopened, the chains continue where they stopped.
        let g = GroupCounters::new(FileCounters::open(&path).unwrap()).unwrap();
        assert_eq!(g.reserve(&[&ka, &kb]).unwrap(), vec![400, 400]);
    }

    #[test]
    fn concurrent_writers_all_return_durable() {
        let g = Arc::new(GroupSync::new());
        // What the "disk" holds: the highest ticket synced.
        let disk = Arc::new(AtomicU64::new(0));
        let syncs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (g, disk, syncs) = (g.clone(), disk.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let t = g.ticket();
                        g.wait(t, || -> Result<(), ()> {
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            disk.fetch_max(g.written.load(Ordering::SeqCst), Ordering::SeqCst);
                            syncs.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        })
                        .unwrap();
                        assert!(disk.load(Ordering::SeqCst) >= t, "returned before durable");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(syncs.load(Ordering::SeqCst) >= 1);
    }
}

/// The node's label counters with group commit: reservations are appended under a lock and
/// synced together.
pub struct GroupCounters {
    counters: Mutex<ehr_search::sse::FileCounters>,
    file: std::fs::File,
    sync: GroupSync,
}

impl std::fmt::Debug for GroupCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCounters").finish_non_exhaustive()
    }
}

impl GroupCounters {
    /// Wraps opened counters.
    pub fn new(
        counters: ehr_search::sse::FileCounters,
    ) -> Result<Self, ehr_search::error::SseError> {
        Ok(Self {
            file: counters.sync_handle()?,
            counters: Mutex::new(counters),
            sync: GroupSync::new(),
        })
    }

    /// Reserves the next counter of each chain in `keys`; durable when this returns. Blocks
    /// (call it through [`crate::blocking`]).
    pub fn reserve(
        &self,
        keys: &[&ehr_search::sse::KeywordKey],
    ) -> Result<Vec<u64>, ehr_search::error::SseError> {
        let (out, ticket) = {
            let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            let out = c.reserve_unsynced(keys)?;
            (out, self.sync.ticket())
        };
        self.sync.wait(ticket, || self.file.sync_data())?;
        Ok(out)
    }

    /// A [`ehr_search::sse::LabelCounter`] view for `labels_for`.
    pub fn counter(&self) -> CounterRef<'_> {
        CounterRef(self)
    }
}

/// [`GroupCounters`] as a [`ehr_search::sse::LabelCounter`].
#[derive(Debug)]
pub struct CounterRef<'a>(&'a GroupCounters);

impl ehr_search::sse::LabelCounter for CounterRef<'_> {
    fn reserve(
        &mut self,
        keys: &[&ehr_search::sse::KeywordKey],
    ) -> Result<Vec<u64>, ehr_search::error::SseError> {
        self.0.reserve(keys)
    }
}
