//! Trials (CONTRACT.md §11; OTP's install, then make permanent): a reload with
//! `trial` is watched for `window`. If its new builds' failed calls (process
//! crashes included) over their calls pass `max_failure_rate`, with at least
//! `min_calls` calls, the node puts the replaced builds back at once — a
//! rollback with history action `revert` and event `zest.reload.reverted`.
//! When the window ends without that, the builds are permanent
//! (`zest.reload.permanent`). A canary on trial is promoted at the window's end,
//! or dropped on failure.
//!
//! A plan records its trial in the node's book (`state.rs`), which starts
//! this file's watcher once: one thread per node that sleeps until the
//! nearest window ends, or until a failing version on trial rings the
//! ledger's alarm. It holds the node only weakly, so a node going away ends
//! it, and it reverts and promotes through sessions it acquires itself, as
//! any driver of the phases does.

use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::module::Mode;
use super::plan::Session;
use crate::report::{Kind, ReloadResult};
use crate::request::{Blueprint, BlueprintUnit, BuildRef, Direction, ReloadOptions, RollbackTarget};
use crate::state::{Shared, Trial, Watched};
use crate::store::history::Action;
use crate::telemetry::EventBody;

/// How long a revert waits for the reload lock.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The watcher's body (see the module documentation); the node's trial book
/// runs it on a thread of its own.
pub(crate) fn watch(node: Weak<Shared>) {
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
    let request_id = format!("revert-{}", trial.request_id);
    let session = match Session::acquire(shared, LOCK_WAIT, Some(&request_id)) {
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
                    unloads: Vec::new(),
                }],
                code_change: Vec::new(),
                force: false,
                atomic: true,
                allow_breaking: true,
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
    let options = ReloadOptions { lock_timeout: LOCK_WAIT, ..ReloadOptions::default() };
    match Session::acquire(shared, options.lock_timeout, None)
        .map(|session| session.promote_step(&canary_target(trial), &options))
    {
        Ok(result) => tracing::info!(request_id = %trial.request_id, status = result.status().as_str(),
            "trial ended: canary promoted"),
        Err(err) => tracing::error!(%err, request_id = %trial.request_id, "cannot promote a healthy canary"),
    }
}
