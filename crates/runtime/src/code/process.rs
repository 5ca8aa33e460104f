//! Processes: named, stateful instances of a module that handle one message at a
//! time (CONTRACT.md §1, §2, §5.2).
//!
//! A process owns one instance of one version (which it pins: an old version stays
//! while a process runs on it). There is no thread per process: the caller whose
//! turn it is runs the handler on its own thread. Turns are tickets handed out in
//! arrival order, so messages are handled strictly first come, first served; a
//! caller that gives up waiting cancels its ticket and its message is never run.
//!
//! A migration *suspends* the process: it waits for the message in progress to
//! finish, takes the instance out (new messages queue behind the suspension), and
//! hands back a `Suspended` that resumes the process on whichever instance the
//! reload settles on — the migrated one, or the old one when the migration failed
//! or an atomic request rolled back. Nothing in the mailbox moves, so no message is
//! lost, duplicated or reordered across a migration.
//!
//! A handler that fails crashes the process: it is restarted on the same version
//! with its init args after a backoff, and given up on (state `down`) after too
//! many crashes in a window ([`RestartPolicy`]); the next reload of its module
//! starts it again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::instance::{check_json, Instance};
use super::ledger::home_shard;
use super::life::Life;
use super::version::Version;
pub use crate::config::RestartPolicy;
use crate::error::{CallError, ProcessError};
use crate::reason::{Failure, Reason};
pub use crate::request::Direction;

/// Running, suspended (a migration holds it), or down (given up on after crashes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    Suspended,
    Down,
}

impl ProcessState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Running => "running",
            ProcessState::Suspended => "suspended",
            ProcessState::Down => "down",
        }
    }
}

/// One process in `NodeStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStatus {
    pub name: String,
    pub module: String,
    /// The version it runs; `None` when it is down.
    pub vsn: Option<String>,
    pub state: ProcessState,
    /// Messages waiting for their turn.
    pub queued: u64,
    /// Messages handled since it started.
    pub handled: u64,
    /// Crashes within the restart window.
    pub restarts: usize,
}

/// A process's instance and the version it belongs to.
pub(crate) struct Body {
    version: Arc<Version>,
    instance: Instance,
    _pin: Pin,
}

/// Counts a process on a version's [`Life`] while the body exists.
struct Pin(Arc<Life>);

impl Pin {
    fn new(life: Arc<Life>) -> Pin {
        life.pin();
        Pin(life)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.unpin();
    }
}

impl Body {
    /// A fresh instance of `version`, with nothing called yet.
    fn fresh(version: &Arc<Version>, step: &str) -> Result<Body, CallError> {
        let instance = version.instantiate(step)?;
        Ok(Body { version: Arc::clone(version), instance, _pin: Pin::new(version.life()) })
    }

    /// A fresh instance of `version` given `init` through `zest_init`.
    fn start(version: &Arc<Version>, init: &str) -> Result<Body, ProcessError> {
        let fail = |message: String| ProcessError::Start { module: version.info.module.clone(), message };
        let exports = version.exports();
        for (has, export) in [(exports.init, "zest_init"), (exports.handle, "zest_handle")] {
            if !has {
                return Err(fail(format!("version {} does not export `{export}`", version.info.vsn)));
            }
        }
        let mut body = Body::fresh(version, "zest_init").map_err(|err| fail(err.to_string()))?;
        body.instance.invoke_reserved("zest_init", Some(init.as_bytes())).map_err(|err| fail(err.to_string()))?;
        Ok(body)
    }

    pub(crate) fn vsn(&self) -> &str {
        &self.version.info.vsn
    }
}

pub(crate) struct Process {
    pub(crate) name: String,
    pub(crate) module: String,
    /// `zest_init`'s input (JSON text), for restarts.
    init: String,
    policy: RestartPolicy,
    inner: Mutex<Inner>,
    /// Signalled whenever a turn ends, a suspension ends, or a ticket is cancelled.
    turn: Condvar,
}

struct Inner {
    next_ticket: u64,
    /// The ticket whose turn it is (once nothing is busy and nothing suspends).
    serving: u64,
    /// Tickets whose callers gave up before their turn.
    cancelled: BTreeSet<u64>,
    /// A handler or a migration has the body out.
    busy: bool,
    suspended: bool,
    /// `None` while busy, or when down.
    body: Option<Body>,
    /// The version it runs (also while busy); `None` when down.
    on: Option<Arc<Version>>,
    /// Why it is down (given up on after crashes, or stopped).
    down: Option<String>,
    /// Stopped for good: nothing resumes it.
    stopped: bool,
    /// Retired with its module (an unload): messages still queued, and any
    /// sent since, are answered `NotFound`, as for a process that never was.
    retired: bool,
    handled: u64,
    crashes: VecDeque<Instant>,
}

impl Inner {
    /// Ends the current turn: the next ticket not cancelled is served.
    fn advance(&mut self) {
        self.serving += 1;
        while self.cancelled.remove(&self.serving) {
            self.serving += 1;
        }
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("name", &self.name).field("module", &self.module).finish_non_exhaustive()
    }
}

impl Process {
    /// Starts process `name` on `version` with `init` (JSON text).
    pub(crate) fn start(
        name: &str,
        version: &Arc<Version>,
        init: &str,
        policy: RestartPolicy,
    ) -> Result<Process, ProcessError> {
        check_json(init).map_err(|message| ProcessError::InvalidJson { process: name.to_string(), message })?;
        let body = Body::start(version, init)?;
        let inner = Inner {
            next_ticket: 0,
            serving: 0,
            cancelled: BTreeSet::new(),
            busy: false,
            suspended: false,
            on: Some(Arc::clone(version)),
            body: Some(body),
            down: None,
            stopped: false,
            retired: false,
            handled: 0,
            crashes: VecDeque::new(),
        };
        Ok(Process {
            name: name.to_string(),
            module: version.info.module.clone(),
            init: init.to_string(),
            policy,
            inner: Mutex::new(inner),
            turn: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `message` (JSON text) and waits up to `timeout` for the reply, its
    /// turn in the mailbox included. A message whose turn does not come in time is
    /// withdrawn, never handled.
    pub(crate) fn call(&self, message: &str, timeout: Duration) -> Result<String, ProcessError> {
        check_json(message).map_err(|message| ProcessError::InvalidJson { process: self.name.clone(), message })?;
        // A timeout too long to add to now means no deadline at all.
        let deadline = Instant::now().checked_add(timeout);
        let mut inner = self.lock();
        let ticket = inner.next_ticket;
        inner.next_ticket += 1;
        loop {
            if inner.retired {
                self.withdraw(&mut inner, ticket);
                return Err(ProcessError::NotFound { process: self.name.clone() });
            }
            if let Some(cause) = &inner.down {
                let err = ProcessError::Down { process: self.name.clone(), cause: cause.clone() };
                self.withdraw(&mut inner, ticket);
                return Err(err);
            }
            if inner.serving == ticket && !inner.busy && !inner.suspended {
                break;
            }
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                self.withdraw(&mut inner, ticket);
                return Err(ProcessError::Timeout {
                    process: self.name.clone(),
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            inner = match deadline {
                Some(deadline) => {
                    self.turn.wait_timeout(inner, deadline - now).unwrap_or_else(PoisonError::into_inner).0
                }
                None => self.turn.wait(inner).unwrap_or_else(PoisonError::into_inner),
            };
        }
        let mut body = inner.body.take().expect("a running process that is not busy has its body");
        inner.busy = true;
        drop(inner);

        let reply = body.instance.invoke_reserved("zest_handle", Some(message.as_bytes()));
        let body = match &reply {
            Ok(_) => {
                body.version.counts.ok(home_shard());
                Ok(body)
            }
            Err(err) => {
                // A crash counts against the version, as a failed call does.
                body.version.failed();
                self.recover(body.version, err.to_string())
            }
        };

        let mut inner = self.lock();
        inner.handled += 1;
        // Retired meanwhile: the instance goes, and with it the pin on its
        // version, so the unload's drain sees the version gone.
        let body = body.map(|body| (!inner.retired).then_some(body));
        match body {
            Ok(Some(body)) => inner.body = Some(body),
            Ok(None) => {}
            Err(_) if inner.retired => {}
            Err(cause) => {
                inner.on = None;
                inner.down = Some(format!("gave up after {} crashes; the last: {cause}", inner.crashes.len()));
            }
        }
        inner.busy = false;
        inner.advance();
        drop(inner);
        self.turn.notify_all();
        reply.map_err(|err| ProcessError::Crashed { process: self.name.clone(), cause: err })
    }

    /// Gives up ticket `ticket`: its message will not be handled.
    fn withdraw(&self, inner: &mut Inner, ticket: u64) {
        if inner.serving == ticket {
            inner.advance();
            self.turn.notify_all();
        } else if ticket > inner.serving {
            inner.cancelled.insert(ticket);
        }
    }

    /// After a crash: restarts on `version` with the init args, after a backoff,
    /// until the restart policy gives up (the last cause).
    fn recover(&self, version: Arc<Version>, mut cause: String) -> Result<Body, String> {
        loop {
            tracing::error!(process = %self.name, module = %self.module, %cause, "process crashed");
            let crashes = {
                let mut inner = self.lock();
                let now = Instant::now();
                inner.crashes.push_back(now);
                while inner.crashes.front().is_some_and(|at| now.duration_since(*at) > self.policy.window) {
                    inner.crashes.pop_front();
                }
                inner.crashes.len()
            };
            if crashes > self.policy.max_restarts {
                tracing::error!(process = %self.name, crashes, "process given up on: too many crashes");
                return Err(cause);
            }
            std::thread::sleep(self.policy.backoff_after(crashes));
            match Body::start(&version, &self.init) {
                Ok(body) => {
                    tracing::info!(process = %self.name, vsn = %version.info.vsn, "process restarted");
                    return Ok(body);
                }
                Err(err) => cause = err.to_string(),
            }
        }
    }

    /// Suspends the process: waits for the message in progress, then holds the
    /// process (new messages queue) until the returned [`Suspended`] resumes it.
    pub(crate) fn suspend(self: &Arc<Process>) -> Suspended {
        let mut inner = self.lock();
        inner.suspended = true;
        while inner.busy {
            inner = self.turn.wait(inner).unwrap_or_else(PoisonError::into_inner);
        }
        inner.busy = true;
        let old = inner.body.take();
        Suspended { process: Arc::clone(self), old }
    }

    pub(crate) fn status(&self) -> ProcessStatus {
        let inner = self.lock();
        let state = if inner.down.is_some() {
            ProcessState::Down
        } else if inner.suspended {
            ProcessState::Suspended
        } else {
            ProcessState::Running
        };
        let waiting = inner.next_ticket - inner.serving - inner.cancelled.len() as u64;
        ProcessStatus {
            name: self.name.clone(),
            module: self.module.clone(),
            vsn: inner.on.as_ref().map(|version| version.info.vsn.clone()),
            state,
            queued: waiting,
            handled: inner.handled,
            restarts: inner.crashes.len(),
        }
    }

    /// Whether a migration onto `target` could work: the version it runs saves
    /// its state and `target` takes it (`zest_code_change`) and handles messages;
    /// a process that is down would start afresh (`zest_init`).
    pub(crate) fn can_migrate_to(&self, target: &Version) -> bool {
        let new = target.exports();
        match &self.lock().on {
            Some(old) => old.exports().state_save && new.code_change && new.handle,
            None => new.init && new.handle,
        }
    }

    /// True when it runs on `version` (false when down).
    pub(crate) fn runs_on(&self, version: &Arc<Version>) -> bool {
        self.lock().on.as_ref().is_some_and(|on| Arc::ptr_eq(on, version))
    }

    /// Retires the process with its module (an unload): the message in
    /// progress, if any, finishes and is answered; its instance is then
    /// dropped (the version's pin with it). Queued messages, and any sent
    /// later by a caller still holding the process, get `NotFound`. Returns
    /// at once: the unload's drain waits for the message in progress.
    pub(crate) fn retire(&self) {
        let mut inner = self.lock();
        inner.retired = true;
        inner.stopped = true;
        inner.down = Some("unloaded".to_string());
        inner.on = None;
        let body = inner.body.take();
        drop(inner);
        self.turn.notify_all();
        drop(body);
    }

    /// Stops the process: waits for the message in progress; queued callers get
    /// `Down`.
    pub(crate) fn stop(self: &Arc<Process>) {
        let suspended = self.suspend();
        let mut inner = self.lock();
        inner.down = Some("stopped".to_string());
        inner.stopped = true;
        inner.on = None;
        drop(inner);
        drop(suspended);
    }
}

/// A suspended process, holding the instance it had; resumes it on that instance
/// when dropped (or on another one, through [`Suspended::resume_on`]).
pub(crate) struct Suspended {
    process: Arc<Process>,
    /// `None` when the process was down.
    old: Option<Body>,
}

impl std::fmt::Debug for Suspended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suspended").field("process", &self.process.name).finish_non_exhaustive()
    }
}

impl Suspended {
    pub(crate) fn name(&self) -> &str {
        &self.process.name
    }

    /// The `vsn` it ran before the migration, if it was running.
    pub(crate) fn old_vsn(&self) -> Option<&str> {
        self.old.as_ref().map(Body::vsn)
    }

    /// Moves the state onto a fresh instance of `target`: `zest_state_save` on the
    /// old instance, `zest_code_change` with `{old_vsn, state, extra, direction}`
    /// on the new one. The old instance is untouched but for `zest_state_save`,
    /// so a failed migration can resume on it. A process that was down starts
    /// afresh.
    pub(crate) fn migrate(
        &mut self,
        target: &Arc<Version>,
        old_vsn: Option<&str>,
        extra: &serde_json::Value,
        direction: Direction,
    ) -> Result<Body, Failure> {
        let target_name = format!("process:{}", self.process.name);
        let fail = |reason, message: String| Failure::new(&target_name, reason, message);
        let Some(old) = self.old.as_mut() else {
            return Body::start(target, &self.process.init)
                .map_err(|err| fail(Reason::CodeChangeFailed, err.to_string()));
        };
        let new_exports = target.exports();
        let missing = [
            (old.version.exports().state_save, &old.version, "zest_state_save"),
            (new_exports.code_change, target, "zest_code_change"),
            (new_exports.handle, target, "zest_handle"),
        ];
        if let Some((_, version, export)) = missing.iter().find(|(has, ..)| !has) {
            let message =
                format!("version {} of `{}` does not export `{export}`", version.info.vsn, version.info.module);
            return Err(fail(Reason::MissingExport, message));
        }
        let old_vsn = old_vsn.unwrap_or(&old.version.info.vsn).to_string();
        let state = old
            .instance
            .invoke_reserved("zest_state_save", None)
            .map_err(|err| fail(Reason::CodeChangeFailed, err.to_string()))?;
        let mut new =
            Body::fresh(target, "zest_code_change").map_err(|err| fail(Reason::CodeChangeFailed, err.to_string()))?;
        new.instance
            .code_change(&old_vsn, direction, &state, extra)
            .map_err(|err| fail(Reason::CodeChangeFailed, err.to_string()))?;
        Ok(new)
    }

    /// Restarts on `target` with the init args (`force`, after a failed migration).
    pub(crate) fn restart_on(&self, target: &Arc<Version>) -> Result<Body, Failure> {
        Body::start(target, &self.process.init).map_err(|err| {
            Failure::new(format!("process:{}", self.process.name), Reason::CodeChangeFailed, err.to_string())
        })
    }

    /// Resumes on `body` (the migrated or restarted instance), which clears a
    /// `down` state and the crash history; `None` resumes on the old instance.
    pub(crate) fn resume_on(mut self, body: Option<Body>) {
        if let Some(body) = body {
            self.old = Some(body);
            let mut inner = self.process.lock();
            if !inner.stopped {
                inner.down = None;
                inner.crashes.clear();
            }
        }
    }
}

impl Drop for Suspended {
    fn drop(&mut self) {
        let mut inner = self.process.lock();
        if let Some(body) = self.old.take().filter(|_| !inner.stopped) {
            inner.on = Some(Arc::clone(&body.version));
            inner.body = Some(body);
        }
        inner.busy = false;
        inner.suspended = false;
        drop(inner);
        self.process.turn.notify_all();
    }
}

/// Every process of the node, by name.
#[derive(Debug, Default)]
pub(crate) struct ProcessTable {
    map: RwLock<BTreeMap<String, Arc<Process>>>,
}

impl ProcessTable {
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Process>> {
        self.map.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    /// Adds `process`; refuses a name already taken.
    pub(crate) fn insert(&self, process: Process) -> Result<Arc<Process>, ProcessError> {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if map.contains_key(&process.name) {
            return Err(ProcessError::AlreadyExists { process: process.name });
        }
        let process = Arc::new(process);
        map.insert(process.name.clone(), Arc::clone(&process));
        Ok(process)
    }

    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Process>> {
        self.map.write().unwrap_or_else(PoisonError::into_inner).remove(name)
    }

    /// Every process, sorted by name.
    pub(crate) fn all(&self) -> Vec<Arc<Process>> {
        self.map.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// The processes of module `module`.
    pub(crate) fn of_module(&self, module: &str) -> Vec<Arc<Process>> {
        self.all().into_iter().filter(|process| process.module == module).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_crash_up_to_the_cap() {
        let policy = RestartPolicy {
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..RestartPolicy::default()
        };
        let waits: Vec<u64> = (1..=5).map(|n| policy.backoff_after(n).as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50]);
    }
}
