//! A version's [`Life`]: what the version, the registry, its stores and its
//! processes share of it — the hard-purge flag, the pins of processes, and
//! the "gone" signal a purge waits on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

/// Shared between a version and the registry: the hard-purge flag that running
/// calls check at every epoch tick, and the "gone" signal a purge waits on.
#[derive(Debug, Default)]
pub(crate) struct Life {
    killed: AtomicBool,
    /// How many processes run on the version: a purge need not wait for it.
    pins: AtomicUsize,
    gone: Mutex<bool>,
    changed: Condvar,
}

impl Life {
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    pub(crate) fn pin(&self) {
        self.pins.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unpin(&self) {
        self.pins.fetch_sub(1, Ordering::Relaxed);
    }

    /// True while a process runs on the version (it stays until the process moves).
    pub(crate) fn is_pinned(&self) -> bool {
        self.pins.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn is_gone(&self) -> bool {
        *self.gone.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn mark_gone(&self) {
        *self.gone.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_all();
    }

    /// Blocks until the version is gone or `deadline` passes.
    pub(crate) fn wait_gone(&self, deadline: Instant) -> bool {
        let mut gone = self.gone.lock().unwrap_or_else(PoisonError::into_inner);
        while !*gone {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            gone = self.changed.wait_timeout(gone, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }
}
