//! Calls and failures per version (`zest_calls_total{module,vsn,outcome}`, the
//! figures trials and canaries judge a build by, status's `calls` and
//! `failures`).
//!
//! Each version counts into a [`CallCounts`] it got from the node's
//! [`Ledger`], which keeps one per (module, vsn) for the node's life: a build
//! rolled back to and forward again keeps counting where it left off, and the
//! exported counters never go backwards. Counting is one relaxed atomic add when
//! a call ends, in the calling thread's shard (no lock, no clock, no shared
//! cache line); a failure of a version on trial also
//! wakes the trial's watcher.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crossbeam_utils::CachePadded;

use crate::version::SHARDS;

/// Calls that answered and calls that failed, counted when each call ends,
/// per shard of calling threads ([`crate::version::home_shard`]), each shard
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

/// The node's counts, and the bell a failing version on trial rings.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    counts: Mutex<BTreeMap<(String, String), Arc<CallCounts>>>,
    pub(crate) alarm: Alarm,
}

impl Ledger {
    /// The counts of `module` at `vsn`.
    pub(crate) fn counts(&self, module: &str, vsn: &str) -> Arc<CallCounts> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(counts.entry((module.to_string(), vsn.to_string())).or_default())
    }

    /// Every (module, vsn) with its calls that answered and that failed.
    pub(crate) fn all(&self) -> Vec<(String, String, u64, u64)> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts
            .iter()
            .map(|((module, vsn), counts)| {
                let (ok, failed) = counts.outcomes();
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
