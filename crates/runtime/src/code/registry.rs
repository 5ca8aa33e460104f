//! The code server: module name → current version, plus the old versions that
//! something still runs on.
//!
//! The call path reads the registry without taking a lock: the name → slot map and
//! each slot's current version sit behind [`ArcSwap`]s. A call holds its version
//! (an `Arc`) for as long as it runs, so a swap never disturbs it.
//!
//! The registry keeps old versions only as [`Weak`] references: an old version is
//! freed the moment the last call running on it returns, whether or not a reload is
//! waiting for it (*architecture invariant*: an old version lives only while
//! something runs on it).

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use std::cell::Cell;

use arc_swap::{ArcSwap, ArcSwapOption};

use super::host::{CallCtx, Callee};
use super::life::Life;
use super::version::{Version, VersionInfo};
use crate::error::CallError;

#[derive(Debug, Default)]
pub(crate) struct Registry {
    slots: ArcSwap<FxHashMap<Box<str>, Arc<Slot>>>,
    /// Serialises changes to the map itself (adding a module); never taken by calls.
    edit: Mutex<()>,
}

/// One module: its current version, a canary beside it, and the old ones
/// still draining.
#[derive(Debug)]
pub(crate) struct Slot {
    current: ArcSwap<Version>,
    canary: ArcSwapOption<Canary>,
    old: Mutex<Vec<Old>>,
}

/// A build running beside the current one for `percent` of calls and of the
/// module's processes (CONTRACT.md §11).
#[derive(Debug)]
pub(crate) struct Canary {
    pub(crate) version: Arc<Version>,
    pub(crate) percent: u32,
}

/// Whether this call goes to a canary of `percent`. Each thread counts its
/// own calls, so over every hundred calls of a thread exactly `percent` do —
/// no shared counter written per call, no lock, no clock. They are spread
/// evenly over the hundred (call `n` goes when `⌊(n+1)·p/100⌋` passes
/// `⌊n·p/100⌋`: every fourth at 25 %), so a quiet service's first calls do not
/// all land on the canary.
///
/// A thread's count starts where the node's count of calling threads stands
/// (once per thread): a server that makes each call on a different thread, a
/// few calls each, would otherwise start every count at 0 and never reach the
/// canary. Started that way, forty threads calling once each send exactly ten
/// calls to a 25 % canary, as one thread calling forty times does.
fn to_canary(percent: u32) -> bool {
    static THREADS: AtomicU32 = AtomicU32::new(0);
    thread_local! {
        static CALLS: Cell<Option<u32>> = const { Cell::new(None) };
    }
    CALLS.with(|calls| takes_share(calls, &THREADS, percent))
}

/// [`to_canary`], given the calling thread's count `calls` and the node's
/// count of calling threads `threads`.
fn takes_share(calls: &Cell<Option<u32>>, threads: &AtomicU32, percent: u32) -> bool {
    let n = calls.get().unwrap_or_else(|| threads.fetch_add(1, Ordering::Relaxed) % 100);
    calls.set(Some(if n >= 99 { 0 } else { n + 1 }));
    (n + 1) * percent / 100 > n * percent / 100
}

/// Whether process `name` belongs to a canary of `percent`: a stable hash of
/// its name (FNV-1a), the same on every node and across restarts.
pub(crate) fn process_to_canary(name: &str, percent: u32) -> bool {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    hash % 100 < percent
}

#[derive(Debug)]
struct Old {
    version: Weak<Version>,
    life: Arc<Life>,
}

/// Nested guest calls (`call` of the `"zest"` imports) reach the registry
/// through the host layer's trait.
impl Callee for Registry {
    fn call(&self, module: &str, function: &str, args: &str, ctx: CallCtx) -> Result<String, CallError> {
        Registry::call(self, module, function, args, ctx)
    }
}

impl Registry {
    pub(crate) fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots.load().get(name).cloned()
    }

    /// Calls `module.function` on the module's current version.
    pub(crate) fn call(&self, module: &str, function: &str, args: &str, ctx: CallCtx) -> Result<String, CallError> {
        self.with_version(module, |version| version.call(function, args, ctx))
    }

    /// Runs `call` on the version a call of `module` goes to now: its canary
    /// for the canary's share of calls, else its current version.
    pub(crate) fn with_version<T>(
        &self,
        module: &str,
        call: impl FnOnce(&Version) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        let slots = self.slots.load();
        let Some(slot) = slots.get(module) else {
            return Err(CallError::ModuleNotFound { module: module.to_string() });
        };
        if let Some(canary) = &*slot.canary.load() {
            if to_canary(canary.percent) {
                return call(&canary.version);
            }
        }
        let version = slot.current.load();
        call(&version)
    }

    /// Makes `version` the current version of `name`, adding the module if it is
    /// new; the version it replaces becomes old.
    pub(crate) fn install(&self, name: &str, version: Arc<Version>) -> Arc<Slot> {
        if let Some(slot) = self.slot(name) {
            slot.replace(version);
            return slot;
        }
        let _edit = self.edit.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = self.slot(name) {
            slot.replace(version);
            return slot;
        }
        let slot = Arc::new(Slot {
            current: ArcSwap::new(version),
            canary: ArcSwapOption::empty(),
            old: Mutex::new(Vec::new()),
        });
        let mut slots = FxHashMap::clone(&self.slots.load());
        slots.insert(name.into(), Arc::clone(&slot));
        self.slots.store(Arc::new(slots));
        slot
    }

    /// Removes module `name` (undoing the first load of a module in an atomic
    /// request that failed, or an unload): new calls get `ModuleNotFound`;
    /// calls in flight keep their version. Returns its slot, if it had one.
    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Slot>> {
        let _edit = self.edit.lock().unwrap_or_else(PoisonError::into_inner);
        let mut slots = FxHashMap::clone(&self.slots.load());
        let removed = slots.remove(name);
        self.slots.store(Arc::new(slots));
        removed
    }

    /// Every module, sorted by name.
    pub(crate) fn modules(&self) -> Vec<(String, Arc<Slot>)> {
        let mut modules: Vec<_> =
            self.slots.load().iter().map(|(name, slot)| (name.to_string(), Arc::clone(slot))).collect();
        modules.sort_by(|a, b| a.0.cmp(&b.0));
        modules
    }
}

impl Slot {
    pub(crate) fn current(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// The canary running beside the current version, if any.
    pub(crate) fn canary(&self) -> Option<Arc<Canary>> {
        self.canary.load_full()
    }

    /// Runs `version` beside the current one for `percent` of calls.
    pub(crate) fn set_canary(&self, version: Arc<Version>, percent: u32) {
        self.canary.store(Some(Arc::new(Canary { version, percent })));
    }

    /// Stops the canary without making its version old (a promotion, which
    /// makes it current).
    pub(crate) fn take_canary(&self) -> Option<Arc<Canary>> {
        self.canary.swap(None)
    }

    /// Stops the canary; its version becomes old (it drains like any other).
    pub(crate) fn clear_canary(&self) -> Option<Arc<Canary>> {
        let canary = self.canary.swap(None)?;
        self.make_old(&canary.version);
        Some(canary)
    }

    /// Makes `version` current again (undoing a swap); the version it replaces
    /// becomes old.
    pub(crate) fn restore(&self, version: Arc<Version>) {
        let life = version.life();
        self.replace(version);
        self.old.lock().unwrap_or_else(PoisonError::into_inner).retain(|entry| !Arc::ptr_eq(&entry.life, &life));
    }

    fn replace(&self, version: Arc<Version>) {
        let previous = self.current.swap(version);
        self.make_old(&previous);
        // Dropping our reference here frees the version at once when no call runs on it.
        drop(previous);
    }

    /// Lists `version` among the old ones, and forgets those gone: a `Weak`
    /// keeps its version's allocation, so a list only ever added to grew by
    /// about 1 KB a reload (`docs/benchmarks.md`, "Resident memory").
    fn make_old(&self, version: &Arc<Version>) {
        let mut old = self.old.lock().unwrap_or_else(PoisonError::into_inner);
        old.retain(|entry| !entry.life.is_gone());
        old.push(Old { version: Arc::downgrade(version), life: version.life() });
    }

    /// Whether [`Slot::purge`] would wait for nothing now: every old version
    /// is gone or runs a process, but `previous`, which is gone once the
    /// caller lets go of it (it holds the only reference).
    pub(crate) fn drained_but(&self, previous: Option<&Arc<Version>>) -> bool {
        let last = previous.filter(|previous| Arc::strong_count(previous) == 1).map(|previous| previous.life());
        let old = self.old.lock().unwrap_or_else(PoisonError::into_inner);
        old.iter().all(|entry| {
            entry.life.is_gone()
                || entry.life.is_pinned()
                || last.as_ref().is_some_and(|last| Arc::ptr_eq(last, &entry.life))
        })
    }

    /// Old versions that are still alive (something runs on them).
    pub(crate) fn old_versions(&self) -> Vec<VersionInfo> {
        let mut old = self.old.lock().unwrap_or_else(PoisonError::into_inner);
        old.retain(|entry| !entry.life.is_gone());
        old.iter().filter_map(|entry| entry.version.upgrade()).map(|v| v.info()).collect()
    }

    /// The lives of every version of the slot — current, canary, and the old
    /// ones still alive — for a drain that waits for them all (an unload).
    pub(crate) fn lives(&self) -> Vec<Arc<Life>> {
        let mut lives = vec![self.current().life()];
        lives.extend(self.canary().map(|canary| canary.version.life()));
        let mut old = self.old.lock().unwrap_or_else(PoisonError::into_inner);
        old.retain(|entry| !entry.life.is_gone());
        lives.extend(old.iter().map(|entry| Arc::clone(&entry.life)));
        lives
    }

    /// Waits until every old version is gone or `deadline` passes; with `hard`, first
    /// interrupts whatever runs on them. Returns the versions still alive.
    pub(crate) fn purge(&self, deadline: Instant, hard: bool) -> Vec<VersionInfo> {
        let lives: Vec<Arc<Life>> = {
            let old = self.old.lock().unwrap_or_else(PoisonError::into_inner);
            old.iter().map(|entry| Arc::clone(&entry.life)).collect()
        };
        for life in &lives {
            if hard {
                life.kill();
            }
            // A version a process runs on stays until the process moves on;
            // waiting for it would only delay the report.
            if !life.is_pinned() {
                life.wait_gone(deadline);
            }
        }
        self.old_versions()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::atomic::AtomicU32;

    use super::takes_share;

    /// The choices of `threads` threads (each its own count) making `calls`
    /// calls each, one after another, on a fresh node.
    fn choices(percent: u32, threads: usize, calls: usize) -> Vec<bool> {
        let started = AtomicU32::new(0);
        let mut all = Vec::new();
        for _ in 0..threads {
            let count = Cell::new(None);
            all.extend((0..calls).map(|_| takes_share(&count, &started, percent)));
        }
        all
    }

    #[test]
    fn a_canary_gets_its_exact_share_spread_over_every_hundred_calls() {
        for percent in [1, 10, 25, 50, 99] {
            let calls = choices(percent, 1, 300);
            for window in calls.chunks(100) {
                assert_eq!(window.iter().filter(|c| **c).count(), percent as usize, "{percent}%");
            }
        }
        // Spread, not bunched at the start: every fourth call at 25 %.
        assert_eq!(choices(25, 1, 8), [false, false, false, true, false, false, false, true]);
        assert_eq!(choices(50, 1, 4), [false, true, false, true]);
    }

    #[test]
    fn calls_made_on_many_threads_a_few_each_still_give_the_canary_its_share() {
        // Forty calls on forty threads, as a server's pool may make them: a
        // count per thread starting at 0 gave the canary none.
        let taken = |threads, calls| choices(25, threads, calls).iter().filter(|c| **c).count();
        assert_eq!(taken(40, 1), 10);
        assert_eq!(taken(20, 2), 10);
        assert_eq!(taken(200, 1), 50);
    }
}
