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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::error::CallError;
use crate::instance::CallCtx;
use crate::version::{Life, Version, VersionInfo};

#[derive(Debug, Default)]
pub(crate) struct Registry {
    slots: ArcSwap<HashMap<Box<str>, Arc<Slot>>>,
    /// Serialises changes to the map itself (adding a module); never taken by calls.
    edit: Mutex<()>,
}

/// One module: its current version and the old ones still draining.
#[derive(Debug)]
pub(crate) struct Slot {
    current: ArcSwap<Version>,
    old: Mutex<Vec<Old>>,
}

#[derive(Debug)]
struct Old {
    version: Weak<Version>,
    life: Arc<Life>,
}

impl Registry {
    pub(crate) fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots.load().get(name).cloned()
    }

    /// Calls `module.function` on the module's current version.
    pub(crate) fn call(&self, module: &str, function: &str, args: &str, ctx: CallCtx) -> Result<String, CallError> {
        let slots = self.slots.load();
        let Some(slot) = slots.get(module) else {
            return Err(CallError::ModuleNotFound { module: module.to_string() });
        };
        let version = slot.current.load();
        version.call(function, args, ctx)
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
        let slot = Arc::new(Slot { current: ArcSwap::new(version), old: Mutex::new(Vec::new()) });
        let mut slots = HashMap::clone(&self.slots.load());
        slots.insert(name.into(), Arc::clone(&slot));
        self.slots.store(Arc::new(slots));
        slot
    }

    /// Removes module `name` (undoing the first load of a module in an atomic
    /// request that failed).
    pub(crate) fn remove(&self, name: &str) {
        let _edit = self.edit.lock().unwrap_or_else(PoisonError::into_inner);
        let mut slots = HashMap::clone(&self.slots.load());
        slots.remove(name);
        self.slots.store(Arc::new(slots));
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

    /// Makes `version` current again (undoing a swap); the version it replaces
    /// becomes old.
    pub(crate) fn restore(&self, version: Arc<Version>) {
        let life = version.life();
        self.replace(version);
        self.old.lock().unwrap_or_else(PoisonError::into_inner).retain(|entry| !Arc::ptr_eq(&entry.life, &life));
    }

    fn replace(&self, version: Arc<Version>) {
        let previous = self.current.swap(version);
        let old = Old { version: Arc::downgrade(&previous), life: previous.life() };
        self.old.lock().unwrap_or_else(PoisonError::into_inner).push(old);
        // Dropping our reference here frees the version at once when no call runs on it.
        drop(previous);
    }

    /// Old versions that are still alive (something runs on them).
    pub(crate) fn old_versions(&self) -> Vec<VersionInfo> {
        let mut old = self.old.lock().unwrap_or_else(PoisonError::into_inner);
        old.retain(|entry| !entry.life.is_gone());
        old.iter().filter_map(|entry| entry.version.upgrade()).map(|v| v.info()).collect()
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
