//! Moving processes onto a new version (CONTRACT.md §5.2), and the explicit
//! `code_change` targets of scope `all`.
//!
//! Every migration runs on a suspended process. Outside an atomic request the
//! process resumes as soon as its own migration is done; inside one it stays
//! suspended, holding both instances ([`Held`]), until the request settles.

use std::sync::Arc;
use std::time::Instant;

use crate::code::process::{Body, Process, Suspended};
use crate::code::version::Version;
use crate::reason::{Failure, Reason, Skip};
use crate::report::{Kind, ReloadResult};
use crate::request::{CodeChangeTarget, Direction};
use crate::state::Shared;
use crate::wasm::abi::check_name;

/// A migrated process kept suspended until the request settles.
pub(crate) struct Held {
    suspended: Suspended,
    new: Body,
}

impl Held {
    pub(crate) fn name(&self) -> &str {
        self.suspended.name()
    }

    pub(crate) fn commit(self) {
        self.suspended.resume_on(Some(self.new));
    }

    /// Back to the old instance and its state, as if nothing happened.
    pub(crate) fn roll_back(self) {
        drop(self.new);
        self.suspended.resume_on(None);
    }
}

/// Below this many processes, migrations run on the reloading thread alone.
const PARALLEL_FROM: usize = 64;

/// Migrates every process of `target`'s module that does not run on `target`
/// (of those `chosen`, when given: a canary's share),
/// spread over the machine's cores when there are many (each process is
/// independent: its own suspension, instances and state). Failures go into
/// `result`, naming `process:NAME`, in process-name order; with `force`, a
/// process that cannot migrate restarts on `target` with its init args.
pub(crate) fn processes(
    shared: &Arc<Shared>,
    target: &Arc<Version>,
    force: bool,
    hold: bool,
    direction: Direction,
    chosen: Option<&(dyn Fn(&str) -> bool + Sync)>,
    result: &mut ReloadResult,
) -> Vec<Held> {
    let processes: Vec<Arc<Process>> = shared
        .processes
        .of_module(&target.info.module)
        .into_iter()
        .filter(|p| !p.runs_on(target) && chosen.is_none_or(|chosen| chosen(&p.name)))
        .collect();
    // Asked only when it matters: the answer reads three files (cgroup quotas).
    let threads = match processes.len() {
        n if n < PARALLEL_FROM => 1,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if threads < 2 {
        let (held, failures) = migrate_all(&processes, target, force, hold, direction);
        result.errors.extend(failures);
        return held;
    }
    let chunk = processes.len().div_ceil(threads);
    let outcomes: Vec<(Vec<Held>, Vec<Failure>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = processes
            .chunks(chunk)
            .map(|part| scope.spawn(move || migrate_all(part, target, force, hold, direction)))
            .collect();
        workers.into_iter().map(|worker| worker.join().expect("a migration worker panicked")).collect()
    });
    let mut held = Vec::new();
    for (part_held, failures) in outcomes {
        held.extend(part_held);
        result.errors.extend(failures);
    }
    held
}

fn migrate_all(
    processes: &[Arc<Process>],
    target: &Arc<Version>,
    force: bool,
    hold: bool,
    direction: Direction,
) -> (Vec<Held>, Vec<Failure>) {
    let mut held = Vec::new();
    let mut failures = Vec::new();
    for process in processes {
        let mut suspended = process.suspend();
        let outcome = match suspended.migrate(target, None, &serde_json::Value::Null, direction) {
            Ok(body) => Ok(body),
            Err(failure) if force => {
                tracing::warn!(process = %process.name, reason = %failure.reason, message = %failure.message,
                    "migration failed; restarting on the new version (force)");
                suspended.restart_on(target)
            }
            Err(failure) => Err(failure),
        };
        match outcome {
            Ok(new) if hold => held.push(Held { suspended, new }),
            Ok(new) => suspended.resume_on(Some(new)),
            Err(failure) => {
                tracing::warn!(process = %process.name, reason = %failure.reason, message = %failure.message,
                    "migration failed; the process stays on its old version");
                suspended.resume_on(None);
                failures.push(failure);
            }
        }
    }
    (held, failures)
}

/// One explicit `code_change` target: `zest_code_change` of the module's current
/// version on the suspended process `server`.
pub(crate) fn code_change(shared: &Arc<Shared>, target: &CodeChangeTarget, hold: bool) -> (ReloadResult, Option<Held>) {
    let started = Instant::now();
    let name = format!("{}:{}", target.server, target.module);
    let mut result = ReloadResult::new(Kind::CodeChange, &name);
    let held = run_code_change(shared, target, hold, &mut result);
    result.duration = started.elapsed();
    (result, held)
}

fn run_code_change(
    shared: &Arc<Shared>,
    target: &CodeChangeTarget,
    hold: bool,
    result: &mut ReloadResult,
) -> Option<Held> {
    let name = result.target.clone();
    let invalid = |message: String| Failure::new(&name, Reason::InvalidCodeChangeTarget, message);
    if let Err(message) = check_name(&target.server).and_then(|()| check_name(&target.module)) {
        result.errors.push(invalid(message));
        return None;
    }
    let Some(process) = shared.processes.get(&target.server) else {
        result.skipped.push(Skip { target: name, reason: Reason::NotRunning });
        return None;
    };
    if process.module != target.module {
        let message = format!("process `{}` runs module `{}`, not `{}`", target.server, process.module, target.module);
        result.errors.push(invalid(message));
        return None;
    }
    let Some(slot) = shared.registry.slot(&target.module) else {
        result.errors.push(Failure::new(&name, Reason::NotFound, format!("module `{}` is not loaded", target.module)));
        return None;
    };
    let version = slot.current();
    let mut suspended = process.suspend();
    if suspended.old_vsn().is_none() {
        result.skipped.push(Skip { target: name, reason: Reason::NotRunning });
        return None;
    }
    match suspended.migrate(&version, target.old_vsn.as_deref(), &target.extra, Direction::Up) {
        Ok(new) => {
            result.reloaded.push(format!("process:{}", target.server));
            if hold {
                return Some(Held { suspended, new });
            }
            suspended.resume_on(Some(new));
        }
        Err(mut failure) => {
            failure.target = name;
            suspended.resume_on(None);
            result.errors.push(failure);
        }
    }
    None
}
