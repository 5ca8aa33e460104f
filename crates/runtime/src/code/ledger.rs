//! Calls and failures per version (the figures trials and canaries judge a
//! build by, status's `calls` and `failures`), and per module by the place the
//! build held (`zest_calls_total{module,version,outcome}`).
//!
//! Each version counts into a [`CallCounts`] it got from the node's
//! [`Ledger`], which keeps one per (module, vsn) while any version holds it,
//! and then the [`RETIRED_KEPT`] most recently retired: a build rolled back to
//! and forward again keeps counting where it left off, and the exported
//! counters never go backwards while they are exported. Older ones are
//! forgotten, so that a node that sees a new vsn with every build (the default
//! vsn is the build's hash; watch mode reloads on every save) does not grow a
//! series per build for ever.
//!
//! The exported counters are per module and place ([`Serving`]: current,
//! canary, old), never per build, so a reload starts no series and `rate()`
//! loses nothing: [`Ledger::module_calls`] hands each build's calls since the
//! last look to the place the build holds then (the node looks before every
//! change of places, at each commit and settle, too), and counts forgotten
//! builds under `old`, so each sum only grows. Counting is one relaxed atomic add when
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

/// The place a build holds in its module: `version` of `zest_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// The build new calls go to.
    Current,
    /// The canary beside it (CONTRACT.md §11).
    Canary,
    /// Any other: a build replaced while calls ran on it, a process left on
    /// it by a failed migration, a build gone.
    Old,
}

impl Serving {
    pub const ALL: [Serving; 3] = [Serving::Current, Serving::Canary, Serving::Old];

    pub fn as_str(self) -> &'static str {
        match self {
            Serving::Current => "current",
            Serving::Canary => "canary",
            Serving::Old => "old",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A module's calls since the node started, by place and outcome, and the
/// builds in each place now (`zest_calls_total`, `zest_module_version_info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleCalls {
    pub module: String,
    /// `(answered, failed)` of the calls each place ran, in [`Serving::ALL`]'s
    /// order. Each only grows.
    pub counts: [(u64, u64); 3],
    /// The vsn of each build the module runs now, by place.
    pub versions: Vec<(Serving, String)>,
}

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
    /// Per module, the calls handed to each place so far (see [`Serving`]).
    placed: BTreeMap<String, [(u64, u64); 3]>,
}

#[derive(Debug, Default)]
struct Kept {
    counts: Arc<CallCounts>,
    /// When no version held them any more, if none does now.
    retired: Option<u64>,
    /// How much of `counts` was handed to a place already.
    placed: (u64, u64),
}

impl Kept {
    /// What `counts` gained since it was last handed to a place.
    fn take_new(&mut self) -> (u64, u64) {
        let (ok, failed) = self.counts.outcomes();
        let new = (ok - self.placed.0, failed - self.placed.1);
        self.placed = (ok, failed);
        new
    }
}

fn add(placed: &mut BTreeMap<String, [(u64, u64); 3]>, module: &str, place: Serving, (ok, failed): (u64, u64)) {
    if ok == 0 && failed == 0 {
        return;
    }
    let counts = placed.entry(module.to_string()).or_default();
    counts[place.index()].0 += ok;
    counts[place.index()].1 += failed;
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
            let placed = &mut self.placed;
            self.counts.retain(|(module, _), kept| {
                let keep = kept.retired.is_none_or(|at| at >= cutoff);
                if !keep {
                    // A build forgotten: what it ran last stays counted, as old.
                    add(placed, module, Serving::Old, kept.take_new());
                }
                keep
            });
        }
    }

    /// Hands every build's new calls to the place `place_of` says it holds
    /// (`None`, or no version holding the counts: old).
    fn place(&mut self, place_of: &dyn Fn(&str, &str) -> Option<Serving>) {
        for ((module, vsn), kept) in &mut self.counts {
            let new = kept.take_new();
            let place = match kept.retired {
                Some(_) => Serving::Old,
                None => place_of(module, vsn).unwrap_or(Serving::Old),
            };
            add(&mut self.placed, module, place, new);
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

    /// Hands the calls made so far to the places their builds hold now
    /// (`place_of(module, vsn)`): the node does so before it changes places.
    pub(crate) fn place(&self, place_of: &dyn Fn(&str, &str) -> Option<Serving>) {
        let mut books = self.books.lock().unwrap_or_else(PoisonError::into_inner);
        books.tidy();
        books.place(place_of);
    }

    /// The calls of each module of `loaded` (its builds by place), each place
    /// at 0 until it runs a call, and of each module no longer loaded whose
    /// counts are kept, after handing new calls to their places.
    pub(crate) fn module_calls(
        &self,
        loaded: Vec<(String, Vec<(Serving, String)>)>,
        place_of: &dyn Fn(&str, &str) -> Option<Serving>,
    ) -> Vec<ModuleCalls> {
        let mut books = self.books.lock().unwrap_or_else(PoisonError::into_inner);
        books.tidy();
        books.place(place_of);
        // A module unloaded keeps its series while any of its counts are kept.
        let Books { counts, placed, .. } = &mut *books;
        placed.retain(|module, _| {
            loaded.iter().any(|(name, _)| name == module) || counts.keys().any(|(name, _)| name == module)
        });
        for (module, _) in &loaded {
            placed.entry(module.clone()).or_default();
        }
        placed
            .iter()
            .map(|(module, counts)| ModuleCalls {
                module: module.clone(),
                counts: *counts,
                versions: loaded
                    .iter()
                    .find(|(name, _)| name == module)
                    .map(|(_, versions)| versions.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Forgets every count of `module` (an unload): its series leave
    /// `zest_calls_total`. A version still draining counts on into counts no
    /// longer listed; a module loaded again starts from zero.
    pub(crate) fn forget(&self, module: &str) {
        let mut books = self.books.lock().unwrap_or_else(PoisonError::into_inner);
        books.counts.retain(|(name, _), _| name != module);
        books.placed.remove(module);
    }

    /// Every (module, vsn) kept, with its calls that answered and that failed.
    #[cfg(test)]
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
    fn calls_are_counted_per_module_under_the_place_their_build_held_and_never_go_back() {
        let ledger = Ledger::default();
        let loaded = |vsn: &str| vec![("clock".to_string(), vec![(Serving::Current, vsn.to_string())])];
        let current = std::cell::RefCell::new("v1".to_string());
        let place_of = |_: &str, vsn: &str| (*current.borrow() == vsn).then_some(Serving::Current);
        let first = ledger.counts("clock", "v1");
        // Loaded, never called: every place exists at 0.
        let calls = ledger.module_calls(loaded("v1"), &place_of);
        assert_eq!(
            calls,
            [ModuleCalls { module: "clock".into(), counts: [(0, 0); 3], versions: loaded("v1")[0].1.clone() }]
        );
        first.ok(0);
        first.ok(1);
        first.failure(2);
        // A reload: the node hands out the calls so far before the swap.
        ledger.place(&place_of);
        *current.borrow_mut() = "v2".into();
        let second = ledger.counts("clock", "v2");
        second.ok(0);
        first.ok(3); // a call in flight on the replaced build
        let calls = ledger.module_calls(loaded("v2"), &place_of);
        assert_eq!(calls[0].counts, [(3, 1), (0, 0), (1, 0)]);
        // The old build forgotten: what it ran stays counted, as old.
        drop(first);
        for n in 0..=RETIRED_KEPT {
            ledger.counts("clock", &format!("gone{n}"));
        }
        let calls = ledger.module_calls(loaded("v2"), &place_of);
        assert_eq!(calls[0].counts, [(3, 1), (0, 0), (1, 0)]);
        assert!(!kept(&ledger).contains(&"clock@v1".to_string()));
        // A module unloaded goes once none of its counts are kept.
        drop(second);
        for n in 0..=RETIRED_KEPT {
            ledger.counts("other", &format!("gone{n}"));
        }
        let calls = ledger.module_calls(Vec::new(), &place_of);
        assert!(calls.iter().all(|c| c.module != "clock"), "{calls:?}");
    }

    #[test]
    fn a_forgotten_module_leaves_no_series_and_starts_afresh() {
        let ledger = Ledger::default();
        let gone = ledger.counts("gone", "1");
        gone.ok(0);
        ledger.counts("stays", "1").ok(0);
        let place_of = |_: &str, _: &str| Some(Serving::Current);
        assert!(ledger.module_calls(Vec::new(), &place_of).iter().any(|c| c.module == "gone"));
        ledger.forget("gone");
        assert!(kept(&ledger).iter().all(|name| !name.starts_with("gone@")), "{:?}", kept(&ledger));
        let calls = ledger.module_calls(Vec::new(), &place_of);
        assert!(calls.iter().all(|c| c.module != "gone"), "{calls:?}");
        assert!(calls.iter().any(|c| c.module == "stays"), "{calls:?}");
        assert_eq!(ledger.counts("gone", "1").read(), (0, 0), "loaded again, it counts from zero");
    }
}
