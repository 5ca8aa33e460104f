//! Trials (CONTRACT.md §11; OTP's install, then make permanent): a reload with
//! `trial` is watched for `window`. If its new builds' failed calls (process
//! crashes included) over their calls pass `max_failure_rate`, with at least
//! `min_calls` calls, the node puts the replaced builds back at once — a
//! rollback with history action `revert` and event `zest.reload.reverted`.
//! When the window ends without that, the builds are permanent
//! (`zest.reload.permanent`). A canary on trial is promoted at the window's end,
//! or dropped on failure.
//!
//! One watcher thread per node sleeps until the nearest window ends, or until a
//! failing version on trial rings the ledger's alarm; it holds the node only
//! weakly, so a node going away ends it.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::blueprint::{Blueprint, BlueprintUnit, BuildRef};
use super::module::Mode;
use super::{Kind, ReloadOptions, ReloadResult, RollbackTarget, TrialSpec};
use crate::history::Action;
use crate::node::Shared;
use crate::process::Direction;
use crate::telemetry::EventBody;
use crate::version::Version;

/// How long a revert waits for the reload lock.
const LOCK_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct Trials {
    running: Mutex<Vec<Trial>>,
    watcher: Mutex<bool>,
}

#[derive(Debug)]
struct Trial {
    request_id: String,
    kind: Kind,
    target: String,
    spec: TrialSpec,
    until: Instant,
    until_wall: SystemTime,
    watched: Vec<Watched>,
    /// A canary: promoted at the end, dropped on failure.
    canary: bool,
}

#[derive(Debug)]
struct Watched {
    module: String,
    /// Weak: a newer reload of the module ends the trial (superseded).
    version: Weak<Version>,
    /// `(calls, failures)` when the trial started.
    baseline: (u64, u64),
    /// The build it replaced (`None` for a module new in this reload, which a
    /// revert leaves alone) .
    revert_to: Option<BuildRef>,
}

impl Trials {
    /// When the trial watching `module` ends, if one does.
    pub(crate) fn until(&self, module: &str) -> Option<SystemTime> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.iter().find(|t| t.watched.iter().any(|w| w.module == module)).map(|t| t.until_wall)
    }
}

/// Starts watching what `result` (of a reload with `spec`) swapped in.
pub(crate) fn start(shared: &Arc<Shared>, spec: &TrialSpec, canary: bool, request_id: &str, result: &ReloadResult) {
    let mut watched = Vec::new();
    for swap in &result.metadata.swaps {
        let Some(slot) = shared.registry.slot(&swap.module) else { continue };
        let version = if canary { slot.canary().map(|c| Arc::clone(&c.version)) } else { Some(slot.current()) };
        let Some(version) = version.filter(|v| v.info.sha256 == swap.sha256) else { continue };
        version.on_trial.store(true, std::sync::atomic::Ordering::Relaxed);
        let revert_to = swap.from.as_ref().map(|from| BuildRef {
            module: swap.module.clone(),
            sha256: from.sha256.clone(),
            vsn: from.vsn.clone(),
            source: from.source.clone(),
        });
        let baseline = version.counts.read();
        watched.push(Watched { module: swap.module.clone(), baseline, version: Arc::downgrade(&version), revert_to });
    }
    if watched.is_empty() {
        return;
    }
    let trial = Trial {
        request_id: request_id.to_string(),
        kind: result.kind,
        target: result.target.clone(),
        spec: spec.clone(),
        until: Instant::now() + spec.window,
        until_wall: SystemTime::now() + spec.window,
        watched,
        canary,
    };
    shared.trials.running.lock().unwrap_or_else(PoisonError::into_inner).push(trial);
    shared.env.ledger.alarm.armed.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut started = shared.trials.watcher.lock().unwrap_or_else(PoisonError::into_inner);
    if !*started {
        let node = Arc::downgrade(shared);
        if std::thread::Builder::new().name("zest-trials".into()).spawn(move || watch(node)).is_ok() {
            *started = true;
        }
    }
    drop(started);
    shared.env.ledger.alarm.ring();
}

fn watch(node: Weak<Shared>) {
    loop {
        let wait = {
            let Some(shared) = node.upgrade() else { return };
            let running = shared.trials.running.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            running.iter().map(|t| t.until.saturating_duration_since(now)).min().unwrap_or(Duration::from_secs(1))
        };
        let Some(ledger) = node.upgrade().map(|shared| Arc::clone(&shared.env.ledger)) else { return };
        // Holds the ledger, not the node: a node dropped meanwhile is noticed
        // within a second.
        ledger.alarm.wait(wait.min(Duration::from_secs(1)));
        drop(ledger);
        let Some(shared) = node.upgrade() else { return };
        judge(&shared);
    }
}

/// Reverts every trial past its threshold, and ends those past their window.
fn judge(shared: &Arc<Shared>) {
    let now = Instant::now();
    let decided: Vec<(Trial, bool, u64, u64)> = {
        let mut running = shared.trials.running.lock().unwrap_or_else(PoisonError::into_inner);
        let mut decided = Vec::new();
        let mut index = 0;
        while index < running.len() {
            let trial = &running[index];
            if trial.watched.iter().any(|w| !serving(shared, w)) {
                // A newer reload replaced what was on trial: nothing to decide.
                running.remove(index);
                continue;
            }
            let (calls, failures) = trial.watched.iter().filter_map(|w| w.version.upgrade().map(|v| (v, w))).fold(
                (0, 0),
                |(c, f), (version, w)| {
                    let (calls, failures) = version.counts.read();
                    (c + calls.saturating_sub(w.baseline.0), f + failures.saturating_sub(w.baseline.1))
                },
            );
            let failing =
                calls >= trial.spec.min_calls.max(1) && failures as f64 / calls as f64 > trial.spec.max_failure_rate;
            if failing || now >= trial.until {
                decided.push((running.remove(index), failing, calls, failures));
            } else {
                index += 1;
            }
        }
        if running.is_empty() {
            shared.env.ledger.alarm.armed.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        decided
    };
    for (trial, failing, calls, failures) in decided {
        for version in trial.watched.iter().filter_map(|w| w.version.upgrade()) {
            version.on_trial.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let telemetry = &shared.telemetry;
        if failing {
            tracing::warn!(request_id = %trial.request_id, calls, failures, "trial failed: reverting");
            let result = revert(shared, &trial);
            let body = EventBody::Reverted { calls, failures, status: result.status() };
            telemetry.emit(trial.kind, &trial.target, &trial.request_id, body);
        } else {
            if trial.canary {
                promote(shared, &trial);
            }
            let body = EventBody::Permanent { calls, failures };
            telemetry.emit(trial.kind, &trial.target, &trial.request_id, body);
        }
    }
}

/// Whether the module still serves the watched version (as current, or as its
/// canary).
fn serving(shared: &Shared, watched: &Watched) -> bool {
    let (Some(version), Some(slot)) = (watched.version.upgrade(), shared.registry.slot(&watched.module)) else {
        return false;
    };
    Arc::ptr_eq(&slot.current(), &version) || slot.canary().is_some_and(|c| Arc::ptr_eq(&c.version, &version))
}

fn canary_target(trial: &Trial) -> RollbackTarget {
    match trial.kind {
        Kind::App => RollbackTarget::App(trial.target.clone()),
        _ => RollbackTarget::Module(trial.target.clone()),
    }
}

/// Puts the replaced builds back (or drops the canary), as a rollback does.
fn revert(shared: &Arc<Shared>, trial: &Trial) -> ReloadResult {
    let node = crate::Node::from_shared(shared);
    let request_id = format!("revert-{}", trial.request_id);
    let session = match node.session(LOCK_WAIT, Some(&request_id)) {
        Ok(session) => session,
        Err(err) => {
            tracing::error!(%err, request_id = %trial.request_id, "cannot revert a failing trial: the lock is held");
            return ReloadResult::new(trial.kind, &trial.target);
        }
    };
    let options = ReloadOptions { direction: Direction::Down, ..ReloadOptions::default() };
    shared.telemetry.step(trial.kind, &trial.target, &request_id, || {
        let plan = if trial.canary {
            session.canary_plan(&canary_target(trial), Mode::DropCanary, &options).map_err(|r| *r)
        } else {
            let builds: Vec<BuildRef> = trial.watched.iter().filter_map(|w| w.revert_to.clone()).collect();
            let blueprint = Blueprint {
                kind: trial.kind,
                target: trial.target.clone(),
                units: vec![BlueprintUnit {
                    kind: if trial.kind == Kind::App { Kind::App } else { Kind::Module },
                    target: trial.target.clone(),
                    builds,
                    app: None,
                    extension: None,
                }],
                code_change: Vec::new(),
                force: false,
                atomic: true,
            };
            Ok(session.plan_blueprint(&blueprint))
        };
        match plan {
            Ok(mut plan) => {
                plan.set_direction(Direction::Down);
                plan.set_action(Action::Revert);
                plan.run()
            }
            Err(result) => result,
        }
    })
}

/// A healthy canary at the end of its trial becomes current for everyone.
fn promote(shared: &Arc<Shared>, trial: &Trial) {
    let node = crate::Node::from_shared(shared);
    let options = ReloadOptions { lock_timeout: LOCK_WAIT, ..ReloadOptions::default() };
    match node.promote(&canary_target(trial), &options) {
        Ok(result) => tracing::info!(request_id = %trial.request_id, status = result.status().as_str(),
            "trial ended: canary promoted"),
        Err(err) => tracing::error!(%err, request_id = %trial.request_id, "cannot promote a healthy canary"),
    }
}
