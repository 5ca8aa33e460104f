//! Calls and failures per version (`zest_calls_total{module,vsn,outcome}`, the
//! figures trials and canaries judge a build by, status's `calls` and
//! `failures`).
//!
//! Each version counts into a [`CallCounts`] it got from the node's
//! [`Ledger`], which keeps one per (module, vsn) while any version holds it,
//! and then the [`RETIRED_KEPT`] most recently retired: a build rolled back to
//! and forward again keeps counting where it left off, and the exported
//! counters never go backwards while they are exported. Older ones are
//! forgotten, so that a node that sees a new vsn with every build (the default
//! vsn is the build's hash; watch mode reloads on every save) does not grow a
//! series per build for ever. Counting is one relaxed atomic add when
//! a call ends, in the calling thread's shard (no lock, no clock, no shared
//! cache line); a failure of a version on trial also
//! wakes the trial's watcher.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crossbeam_utils::CachePadded;

/// Calling threads are spread over this many shards (of a version's idle
/// instances, of its call counts), each thread using its own first, so that
/// callers on different cores do not contend for one lock or cache line.
pub(crate) const SHARDS: usize = 4;

/// The shard this thread uses first.
pub(crate) fn home_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HOME: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    HOME.with(|home| *home)
}

/// Calls that answered and calls that failed, counted when each call ends,
/// per shard of calling threads ([`home_shard`]), each shard
/// on its own cache line: callers on different cores never write the same
/// line, and a read sums the shards. Both counts only grow, so each read sum
/// does too (what a Prometheus counter needs).
#[derive(Debug, Default)]
pub(crate) struct CallCounts {
    shards: [CachePadded<Shard>; SHARDS],
}

#[derive(Debug, Default)]
struct Shard {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl CallCounts {
    pub(crate) fn ok(&self, shard: usize) {
        self.shards[shard].ok.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failure(&self, shard: usize) {
        self.shards[shard].failed.fetch_add(1, Ordering::Relaxed);
    }

    /// `(ok, failed)` so far.
    pub(crate) fn outcomes(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(ok, failed), shard| {
            (ok + shard.ok.load(Ordering::Relaxed), failed + shard.failed.load(Ordering::Relaxed))
        })
    }

    /// `(calls, failures)` so far, calls counting those that ended.
    pub(crate) fn read(&self) -> (u64, u64) {
        let (ok, failed) = self.outcomes();
        (ok + failed, failed)
    }
}

/// How many counts of (module, vsn) that no version holds any more the ledger
/// keeps, the most recently retired first.
pub(crate) const RETIRED_KEPT: usize = 256;

/// The node's counts, and the bell a failing version on trial rings.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    books: Mutex<Books>,
    pub(crate) alarm: Alarm,
}

#[derive(Debug, Default)]
struct Books {
    counts: BTreeMap<(String, String), Kept>,
    /// Counts up each time counts are found retired, to order them.
    retirements: u64,
}

#[derive(Debug, Default)]
struct Kept {
    counts: Arc<CallCounts>,
    /// When no version held them any more, if none does now.
    retired: Option<u64>,
}

impl Books {
    /// Notes which counts no version holds any more (and which are held
    /// again), and forgets the longest retired beyond [`RETIRED_KEPT`].
    fn tidy(&mut self) {
        let mut retired = 0;
        for kept in self.counts.values_mut() {
            if Arc::strong_count(&kept.counts) > 1 {
                kept.retired = None;
            } else {
                if kept.retired.is_none() {
                    self.retirements += 1;
                    kept.retired = Some(self.retirements);
                }
                retired += 1;
            }
        }
        if retired > RETIRED_KEPT {
            let mut order: Vec<u64> = self.counts.values().filter_map(|kept| kept.retired).collect();
            order.sort_unstable();
            let cutoff = order[retired - RETIRED_KEPT];
            self.counts.retain(|_, kept| kept.retired.is_none_or(|at| at >= cutoff));
        }
    }
}

impl Ledger {
    /// The counts of `module` at `vsn`.
    pub(crate) fn counts(&self, module: &str, vsn: &str) -> Arc<CallCounts> {
        let mut books = self.books.lock().unwrap_or_else(PoisonError::into_inner);
        books.tidy();
        Arc::clone(&books.counts.entry((module.to_string(), vsn.to_string())).or_default().counts)
    }

    /// Forgets every count of `module` (an unload): its series leave
    /// `zest_calls_total`. A version still draining counts on into counts no
    /// longer listed; a module loaded again starts from zero.
    pub(crate) fn forget(&self, module: &str) {
        let mut books = self.books.lock().unwrap_or_else(PoisonError::into_inner);
        books.counts.retain(|(name, _), _| name != module);
    }

    /// Every (module, vsn) kept, with its calls that answered and that failed.
    pub(crate) fn all(&self) -> Vec<(String, String, u64, u64)> {
        let mut books = self.books.lock().unwrap_or_else(PoisonError::into_inner);
        books.tidy();
        books
            .counts
            .iter()
            .map(|((module, vsn), kept)| {
                let (ok, failed) = kept.counts.outcomes();
                (module.clone(), vsn.clone(), ok, failed)
            })
            .collect()
    }
}

/// Rung when a version on trial fails; its watcher waits on it.
#[derive(Debug, Default)]
pub(crate) struct Alarm {
    rung: Mutex<bool>,
    bell: Condvar,
    /// Set while any trial runs, so failures outside one ring nothing.
    pub(crate) armed: AtomicBool,
}

impl Alarm {
    pub(crate) fn ring(&self) {
        if self.armed.load(Ordering::Relaxed) {
            *self.rung.lock().unwrap_or_else(PoisonError::into_inner) = true;
            self.bell.notify_all();
        }
    }

    /// Waits until rung or `timeout`; true if rung.
    pub(crate) fn wait(&self, timeout: std::time::Duration) -> bool {
        let mut rung = self.rung.lock().unwrap_or_else(PoisonError::into_inner);
        if !*rung {
            rung = self.bell.wait_timeout(rung, timeout).unwrap_or_else(PoisonError::into_inner).0;
        }
        std::mem::replace(&mut *rung, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(ledger: &Ledger) -> Vec<String> {
        ledger.all().into_iter().map(|(module, vsn, _, _)| format!("{module}@{vsn}")).collect()
    }

    #[test]
    fn held_counts_stay_and_only_the_most_recently_retired_are_kept() {
        let ledger = Ledger::default();
        let live = ledger.counts("clock", "live");
        live.ok(0);
        // A build flipped away from and back to keeps counting where it was.
        let first = ledger.counts("clock", "flipped");
        first.ok(0);
        drop(first);
        ledger.all();
        let again = ledger.counts("clock", "flipped");
        again.ok(0);
        assert_eq!(again.read(), (2, 0));
        // Many builds, each retired at once (watch mode's new vsn per save).
        for n in 0..RETIRED_KEPT + 10 {
            ledger.counts("clock", &format!("v{n}")).failure(0);
        }
        let names = kept(&ledger);
        assert_eq!(names.len(), 2 + RETIRED_KEPT, "held ones and the last {RETIRED_KEPT} retired");
        assert!(names.contains(&"clock@live".to_string()) && names.contains(&"clock@flipped".to_string()));
        assert!(!names.contains(&"clock@v0".to_string()) && !names.contains(&"clock@v9".to_string()));
        assert!(names.contains(&"clock@v10".to_string()) && names.contains(&format!("clock@v{}", RETIRED_KEPT + 9)));
        assert_eq!(live.read(), (1, 0), "held counts are the same counts");
    }

    #[test]
    fn a_forgotten_module_leaves_no_series_and_starts_afresh() {
        let ledger = Ledger::default();
        let gone = ledger.counts("gone", "1");
        gone.ok(0);
        ledger.counts("stays", "1").ok(0);
        ledger.forget("gone");
        assert!(kept(&ledger).iter().all(|name| !name.starts_with("gone@")), "{:?}", kept(&ledger));
        assert_eq!(ledger.counts("gone", "1").read(), (0, 0), "loaded again, it counts from zero");
    }
}
