//! The phases of every reload, as an API.
//!
//! A reload is a [`Plan`] driven through four phases:
//!
//! 1. **stage** ([`Session::plan`], [`Session::plan_blueprint`]): manifests are
//!    read, builds run, every module is compiled (or taken from the compile
//!    cache), validated and instantiated once — all off the call path, while the
//!    current versions keep serving. Nothing is swapped.
//! 2. **commit** ([`Plan::commit`]): every staged build is swapped in (the next
//!    call gets it) and the processes of each module migrate to it; in an atomic
//!    plan they stay suspended, holding both their old and new instances.
//! 3. **settle** ([`Plan::settle`]): the plan's changes are kept — or, with
//!    `undo`, every swap and migration is put back — and old versions are purged.
//! 4. **finish** ([`Plan::finish`]): manifests and extension records are kept,
//!    declared processes started, and the one result is returned.
//!
//! [`Plan::abort`] replaces 2 and 3 when the plan must not be applied at all
//! (an atomic plan with a build that failed, a cluster that did not prepare):
//! every staged build is dropped and reports `rolled_back`.
//!
//! A standalone node runs the phases in a row ([`Plan::run`], behind
//! `Node::reload`). A cluster runs stage on the coordinator, stages the same
//! builds from a [`Blueprint`] on every member (its *prepare*), and commits and
//! settles on every member once etcd has recorded the decision.
//!
//! A [`Session`] is the node's reload lock, held. Each plan keeps a share of
//! it until the plan is finished or dropped, so holding a plan is holding the
//! right to change the registry; the session may keep the lock longer (until
//! the request's last event is out).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::app::{self, AppSource};
use super::blueprint;
use super::extension::{plan_extension, plan_unload_extension, plan_unload_extension_named};
use super::migrate::{self, Held};
use super::module::{self, Mode, ModuleStep};
use super::rollback;
use super::unit::{Record, Unit};
use super::unload;
use crate::lock::{LockError, LockGuard};
use crate::reason::{Failure, Reason};
use crate::report::{Counts, Kind, ReloadResult};
use crate::request::{
    AllScope, Blueprint, CodeChangeTarget, Direction, ReloadOptions, ReloadRequest, RollbackRequest, RollbackTarget,
    Scope, UnloadRequest, UnloadTarget,
};
use crate::state::{start_trial, Shared};
use crate::store::history::{Action, BuildId, Change};
use crate::telemetry::{EventBody, Role};

/// The node's reload lock, held: the right to stage and apply one plan.
#[derive(Debug)]
pub struct Session {
    shared: Arc<Shared>,
    guard: Arc<LockGuard>,
    request_id: String,
    /// The role its plans' events carry.
    role: Role,
}

/// What a session stages (the public entry points, and the embedding API's).
pub(crate) enum Work<'a> {
    /// A `system.reload` scope.
    Scope(&'a Scope),
    /// Loading an app from its directory (or reloading the app of that name).
    LoadApp(&'a std::path::Path),
    /// A module outside any app, from `source` or the file it was loaded from.
    Loose { name: &'a str, source: Option<&'a std::path::Path> },
    /// The extensions recorded in the data directory (a node starting).
    RecordedExtensions,
}

impl Session {
    /// Takes the node's reload lock, waiting up to `wait`. `request_id` is
    /// carried in every event; the node makes one up when `None`.
    pub(crate) fn acquire(
        shared: &Arc<Shared>,
        wait: Duration,
        request_id: Option<&str>,
    ) -> Result<Session, LockError> {
        let guard = shared.acquire(wait)?;
        let request_id = shared.request_id(request_id);
        Ok(Session { shared: Arc::clone(shared), guard: Arc::new(guard), request_id, role: Role::Coordinator })
    }

    /// Carried in every telemetry event of the plan.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The session of a cluster member running its part of another member's
    /// request: its plans' events carry `role` (default: coordinator).
    pub fn with_role(mut self, role: Role) -> Session {
        self.role = role;
        self
    }

    /// The fencing token of the lock held.
    pub fn token(&self) -> u64 {
        self.guard.token()
    }

    /// Stages `request`: reads, builds, compiles, validates; swaps nothing.
    pub fn plan(&self, request: &ReloadRequest) -> Plan {
        let mut plan = self.stage(Work::Scope(&request.scope), &request.options);
        plan.recording = Recording::Every;
        if let Some(percent) = request.options.canary {
            for step in plan.units.iter_mut().flat_map(|unit| unit.steps.iter_mut()) {
                step.mode = Mode::Canary(u32::from(percent));
            }
            plan.action = Action::Canary;
        }
        plan
    }

    /// Promotes the canary of a module, or of every module of an app that runs
    /// one (CONTRACT.md §11): it becomes current for everyone, and the other
    /// processes migrate to it. Every phase in a row.
    pub fn promote(&self, target: &RollbackTarget, options: &ReloadOptions) -> ReloadResult {
        match self.canary_plan(target, Mode::Promote, options) {
            Ok(mut plan) => {
                plan.set_action(Action::Promote);
                plan.run()
            }
            Err(result) => *result,
        }
    }

    /// [`Session::promote`] as one telemetry operation: `system.promote`, or
    /// a healthy canary at the end of its trial.
    pub(crate) fn promote_step(&self, target: &RollbackTarget, options: &ReloadOptions) -> ReloadResult {
        let (kind, name) = target.kind_and_name();
        self.shared.telemetry.step(kind, &name, &self.request_id, || self.promote(target, options))
    }

    /// The plan of a promotion or of dropping canaries: one step per module of
    /// `target` that runs a canary. An error result when none does.
    pub(crate) fn canary_plan(
        &self,
        target: &RollbackTarget,
        mode: Mode,
        options: &ReloadOptions,
    ) -> Result<Plan, Box<ReloadResult>> {
        let (kind, name) = target.kind_and_name();
        let modules: Vec<String> = match target {
            RollbackTarget::Module(module) => vec![module.clone()],
            RollbackTarget::App(app) => match self.shared.app(app) {
                Some(manifest) => manifest
                    .modules
                    .iter()
                    .map(|m| m.name.clone())
                    .filter(|m| self.shared.registry.slot(m).is_some_and(|slot| slot.canary().is_some()))
                    .collect(),
                None => {
                    let mut result = ReloadResult::new(kind, &name);
                    result.errors.push(Failure::new(app, Reason::AppNotFound, format!("app `{app}` is not loaded")));
                    return Err(Box::new(result));
                }
            },
        };
        if modules.is_empty() {
            let mut result = ReloadResult::new(kind, &name);
            result.errors.push(Failure::new(
                &name,
                Reason::NotFound,
                format!("no module of app `{name}` runs a canary"),
            ));
            return Err(Box::new(result));
        }
        let mut plan = Plan::new(self, kind, &name, options);
        plan.recording = Recording::Every;
        let mut unit = Unit::new(kind, &name);
        unit.steps = modules.iter().map(|module| ModuleStep::of_canary(&self.shared, module, mode)).collect();
        plan.units.push(unit);
        Ok(plan)
    }

    /// Stages the builds `blueprint` names (the prepare of a cluster member, or
    /// a member catching up with the cluster). Every build must be held by the
    /// node ([`crate::Node::add_build`]) unless the module already runs it.
    pub fn plan_blueprint(&self, blueprint: &Blueprint) -> Plan {
        let options = ReloadOptions {
            force: blueprint.force,
            atomic: blueprint.atomic,
            allow_breaking: blueprint.allow_breaking,
            ..ReloadOptions::default()
        };
        let mut plan = Plan::new(self, blueprint.kind, &blueprint.target, &options);
        plan.recording = Recording::Every;
        for unit in &blueprint.units {
            plan.emit_child(unit.kind, &unit.target, EventBody::Start { system_time: SystemTime::now() });
            plan.units.push(blueprint::stage_unit(&plan.shared, unit, module::Rules::of(&options)));
        }
        plan.code_change = blueprint.code_change.clone();
        plan
    }

    /// Rolls back as `request` says (`reload/rollback.rs`), every phase in a
    /// row; processes migrate `down`.
    pub fn rollback(&self, request: &RollbackRequest) -> ReloadResult {
        let (kind, target) = request.kind_and_target();
        if request.to.is_none() && rollback::runs_canary(&self.shared, &request.target) {
            // Rolling back a canary drops it: its processes come back down.
            let mut result = match self.canary_plan(&request.target, Mode::DropCanary, &request.options) {
                Ok(mut plan) => {
                    plan.set_direction(Direction::Down);
                    plan.set_action(Action::Rollback);
                    plan.run()
                }
                Err(result) => *result,
            };
            result.metadata.rollback = true;
            return result;
        }
        let _ = (kind, target);
        let mut result = match self.plan_rollback(request) {
            Ok(plan) => plan.run(),
            Err(result) => *result,
        };
        result.metadata.rollback = true;
        result
    }

    /// Unloads an extension or an app (CONTRACT.md §4, `system.unload`),
    /// every phase in a row: its modules leave the registry once their calls
    /// in flight finish, their processes are retired, the extension's record
    /// or the app goes, and the history records `unload`.
    pub fn unload(&self, request: &UnloadRequest) -> ReloadResult {
        self.plan_unload(request).run()
    }

    /// Stages an unload: finds what it takes out (an error result when
    /// there is nothing: `not_found`, `app_not_found`, `forbidden_path`,
    /// `empty_path`); takes nothing out yet.
    pub fn plan_unload(&self, request: &UnloadRequest) -> Plan {
        let (kind, target) = request.kind_and_target();
        let mut plan = Plan::new(self, kind, &target, &ReloadOptions::default());
        plan.recording = Recording::Every;
        plan.set_action(Action::Unload);
        let unit = match &request.target {
            UnloadTarget::Extension(path) => plan_unload_extension(&self.shared, path),
            UnloadTarget::App(name) => app::plan_unload_app(&self.shared, name),
        };
        plan.units.push(unit);
        plan
    }

    /// Stages the unload of the extension recorded under `name`, reported
    /// under `target` (the path its coordinator was given): a cluster member
    /// unloading what its coordinator unloads, whose record of the extension
    /// carries the coordinator's path. `not_found` when none is recorded.
    pub fn plan_unload_extension_named(&self, name: &str, target: &str) -> Plan {
        let mut plan = Plan::new(self, Kind::Extension, target, &ReloadOptions::default());
        plan.recording = Recording::Every;
        plan.set_action(Action::Unload);
        plan.units.push(plan_unload_extension_named(&self.shared, name, target));
        plan
    }

    /// Stages a rollback to the builds history names (not a canary's drop):
    /// processes will migrate `down`, the history records `rollback`. An error
    /// result when there is nothing to roll back to.
    pub fn plan_rollback(&self, request: &RollbackRequest) -> Result<Plan, Box<ReloadResult>> {
        let (kind, target) = request.kind_and_target();
        match rollback::blueprint(&self.shared, request) {
            Ok(blueprint) => {
                let mut plan = self.plan_blueprint(&blueprint);
                plan.set_direction(Direction::Down);
                plan.set_action(Action::Rollback);
                Ok(plan)
            }
            Err(failure) => {
                let mut result = ReloadResult::new(kind, target);
                result.errors.push(failure);
                result.metadata.rollback = true;
                Err(Box::new(result))
            }
        }
    }

    pub(crate) fn stage(&self, work: Work<'_>, options: &ReloadOptions) -> Plan {
        let (kind, target) = match &work {
            Work::Scope(Scope::Module(name)) => (Kind::Module, name.clone()),
            Work::Loose { name, .. } => (Kind::Module, name.to_string()),
            Work::Scope(Scope::App(name)) => (Kind::App, name.clone()),
            Work::Scope(Scope::Extension(path)) => (Kind::Extension, path.display().to_string()),
            Work::Scope(Scope::All(_)) | Work::RecordedExtensions => (Kind::System, "system".to_string()),
            Work::LoadApp(dir) => (Kind::App, dir.display().to_string()),
        };
        let mut plan = Plan::new(self, kind, &target, options);
        let (shared, request_id) = (Arc::clone(&plan.shared), plan.request_id.clone());
        let unit = match work {
            Work::Scope(Scope::Module(name)) => app::plan_module_scope(&shared, name, options, &request_id),
            Work::Scope(Scope::App(name)) => app::plan_app(&shared, AppSource::Name(name), options, &request_id),
            Work::Scope(Scope::Extension(path)) => plan_extension(&shared, path, options, &request_id),
            Work::LoadApp(dir) => app::plan_app(&shared, AppSource::Dir(dir), options, &request_id),
            Work::Loose { name, source } => {
                let mut unit = Unit::new(Kind::Module, name);
                unit.steps.push(module::plan(&shared, name, source, module::Rules::of(options)));
                unit
            }
            Work::Scope(Scope::All(all)) => {
                plan.stage_all(all);
                return plan;
            }
            Work::RecordedExtensions => {
                plan.stage_recorded_extensions();
                return plan;
            }
        };
        plan.units.push(unit);
        plan
    }
}

/// Which of a plan's swaps go into the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recording {
    /// Every one (a `system.reload`, a rollback, a cluster's commit).
    Every,
    /// Those that replace a build (the embedding API's loads, which at start
    /// load every module for the first time).
    Replacements,
}

/// A staged reload; see the module documentation for its phases.
pub struct Plan {
    shared: Arc<Shared>,
    kind: Kind,
    target: String,
    units: Vec<Unit>,
    /// Failures of the request as a whole (a records file that cannot be read).
    errors: Vec<Failure>,
    code_change: Vec<CodeChangeTarget>,
    /// The results of the `code_change` targets, once committed.
    changes: Vec<ReloadResult>,
    /// Processes of `code_change` targets held by an atomic plan, with the index
    /// of their result in `changes`.
    held: Vec<(usize, Held)>,
    options: ReloadOptions,
    request_id: String,
    role: Role,
    started: Instant,
    /// The node's reload lock (shared with the session): released once both
    /// are gone.
    _lock: Arc<LockGuard>,
    /// What its swaps are, in the history.
    action: Action,
    recording: Recording,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("kind", &self.kind)
            .field("target", &self.target)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl Plan {
    fn new(session: &Session, kind: Kind, target: &str, options: &ReloadOptions) -> Plan {
        Plan {
            shared: Arc::clone(&session.shared),
            kind,
            target: target.to_string(),
            units: Vec::new(),
            errors: Vec::new(),
            code_change: Vec::new(),
            changes: Vec::new(),
            held: Vec::new(),
            options: options.clone(),
            request_id: session.request_id.clone(),
            role: session.role,
            started: Instant::now(),
            _lock: Arc::clone(&session.guard),
            action: Action::Reload,
            recording: Recording::Replacements,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    pub fn options(&self) -> &ReloadOptions {
        &self.options
    }

    /// Which way this plan's processes migrate (`Down` for a rollback).
    pub fn set_direction(&mut self, direction: Direction) {
        self.options.direction = direction;
    }

    /// What the history calls this plan's swaps (default: `reload`).
    pub fn set_action(&mut self, action: Action) {
        self.action = action;
    }

    /// What other members need to stage exactly these builds: every module this
    /// plan staged or found unchanged, by sha256, with the manifests and records
    /// it applies. Modules whose stage failed are left out.
    pub fn blueprint(&self) -> Blueprint {
        blueprint::of_plan(&self.shared, self.kind, &self.target, &self.units, &self.code_change, &self.options)
    }

    /// What an unload plan takes out, as the desired state of a cluster
    /// names it: `(kind, name)` with kind `app`, `extension` or `module`
    /// (every app and extension record it removes, every module it unloads).
    pub fn unloading(&self) -> Vec<(Kind, String)> {
        let mut gone = Vec::new();
        for unit in &self.units {
            match &unit.record {
                Some(Record::AppGone(name)) => gone.push((Kind::App, name.clone())),
                Some(Record::ExtensionGone(name)) => gone.push((Kind::Extension, name.clone())),
                _ => {}
            }
            gone.extend(unit.unloads.iter().map(|unload| (Kind::Module, unload.result.target.clone())));
        }
        gone
    }

    /// Whether any module has a build staged (something to swap) or is to be
    /// unloaded.
    pub fn stages_anything(&self) -> bool {
        self.units.iter().any(|unit| unit.steps.iter().any(ModuleStep::is_staged) || !unit.unloads.is_empty())
    }

    /// Whether [`Plan::commit`] runs no guest code and waits for nothing: the
    /// plan is not atomic, moves no process (none runs on a staged module)
    /// and runs no `code_change`, unloads nothing, and keeps nothing but in
    /// memory (no app whose processes start, no extension record written).
    /// Whether settling then waits is [`Plan::settles_at_once`]'s to say.
    pub fn commits_at_once(&self) -> bool {
        let quiet_unit = |unit: &Unit| {
            unit.unloads.is_empty()
                && match &unit.record {
                    None => true,
                    // Scope `module` keeps its manifest in memory only.
                    Some(Record::App(_)) => unit.result.kind != Kind::App,
                    Some(_) => false,
                }
                && unit
                    .steps
                    .iter()
                    .all(|step| !step.is_staged() || self.shared.processes.of_module(&step.result.target).is_empty())
        };
        !self.options.atomic && self.code_change.is_empty() && self.units.iter().all(quiet_unit)
    }

    /// Whether [`Plan::settle`], after a commit, waits for nothing now: no
    /// process is held, and no call runs on a version the plan replaced (nor
    /// on an older one of its modules).
    pub fn settles_at_once(&self) -> bool {
        self.held.is_empty() && self.units.iter().flat_map(|unit| &unit.steps).all(ModuleStep::settles_at_once)
    }

    /// What failed while staging, as `a, b failed`; `None` when nothing did.
    pub fn staging_failures(&self) -> Option<String> {
        culprits(&self.units, std::iter::empty())
    }

    /// What failed so far — staging, swaps and migrations — as `a, b failed`.
    pub fn failures(&self) -> Option<String> {
        culprits(&self.units, self.changes.iter())
    }

    /// Drops every staged build instead of committing: each reports
    /// `rolled_back` with `message`, and nothing of the plan is kept.
    pub fn abort(&mut self, message: &str) {
        for unit in &mut self.units {
            for step in &mut unit.steps {
                step.roll_back(message);
            }
            for unload in &mut unit.unloads {
                unload.roll_back(message);
            }
            unit.record = None;
        }
        for target in std::mem::take(&mut self.code_change) {
            let name = format!("{}:{}", target.server, target.module);
            let mut result = ReloadResult::new(Kind::CodeChange, &name);
            result.errors.push(Failure::new(&name, Reason::RolledBack, message));
            self.emit_child(Kind::CodeChange, &name, EventBody::Start { system_time: SystemTime::now() });
            self.changes.push(result);
        }
    }

    /// Swaps every staged build in, migrates the processes of every module, then
    /// runs the `code_change` targets. In an atomic plan the migrated processes
    /// stay suspended until [`Plan::settle`].
    pub fn commit(&mut self) {
        let shared = Arc::clone(&self.shared);
        shared.place_calls();
        let (force, hold) = (self.options.force, self.options.atomic);
        for step in self.units.iter_mut().flat_map(|unit| unit.steps.iter_mut()) {
            module::commit(&shared, step);
        }
        let direction = self.options.direction;
        for step in self.units.iter_mut().flat_map(|unit| unit.steps.iter_mut()) {
            module::migrate(&shared, step, force, hold, direction);
        }
        for target in std::mem::take(&mut self.code_change) {
            let name = format!("{}:{}", target.server, target.module);
            self.emit_child(Kind::CodeChange, &name, EventBody::Start { system_time: SystemTime::now() });
            let (result, held) = migrate::code_change(&shared, &target, hold);
            if let Some(held) = held {
                self.held.push((self.changes.len(), held));
            }
            self.changes.push(result);
        }
    }

    /// Ends the plan's changes: keeps them, or with `undo` (why) puts every swap
    /// and migration back, each reporting `rolled_back`; then purges the old
    /// versions (one drain deadline for the lot).
    pub fn settle(&mut self, undo: Option<&str>) {
        let shared = Arc::clone(&self.shared);
        if undo.is_some() {
            shared.place_calls();
        }
        for step in self.units.iter_mut().flat_map(|unit| unit.steps.iter_mut()) {
            module::settle(&shared, step, undo);
        }
        for (index, held) in self.held.drain(..) {
            match undo {
                Some(because) => {
                    let change = &mut self.changes[index];
                    change.reloaded.clear();
                    let message = format!("undone: {because}, and the reload is atomic");
                    change.errors.push(Failure::new(change.target.clone(), Reason::RolledBack, message));
                    held.roll_back();
                }
                None => held.commit(),
            }
        }
        match undo {
            Some(because) => {
                let message = format!("not unloaded: {because}, and the reload is atomic");
                for unit in &mut self.units {
                    unit.record = None;
                    unit.unloads.iter_mut().for_each(|unload| unload.roll_back(&message));
                }
            }
            // Kept: the modules to unload leave now, once nothing can undo it.
            None => {
                for unload in self.units.iter_mut().flat_map(|unit| unit.unloads.iter_mut()) {
                    unload::apply(&shared, unload);
                }
            }
        }
        let deadline = shared.config.limits.drain_deadline();
        for step in self.units.iter_mut().flat_map(|unit| unit.steps.iter_mut()) {
            module::purge(step, deadline, self.options.force);
        }
        for unload in self.units.iter_mut().flat_map(|unit| unit.unloads.iter_mut()) {
            unload::drain(&shared, unload, deadline);
        }
    }

    /// The result: for scope `all`, one child per app, extension and
    /// `code_change` target; otherwise the one unit's own result. Manifests and
    /// extension records are kept, declared processes started.
    pub fn finish(mut self) -> ReloadResult {
        let unloads: Vec<Change> = self
            .units
            .iter()
            .flat_map(|unit| &unit.unloads)
            .filter_map(|unload| unload.change(&self.request_id))
            .collect();
        let result = self.finish_units();
        let mut changes: Vec<Change> = result
            .metadata
            .swaps
            .iter()
            .filter(|swap| self.recording == Recording::Every || swap.from.is_some())
            .map(|swap| Change {
                module: swap.module.clone(),
                action: self.action,
                from: swap.from.clone(),
                to: Some(BuildId {
                    vsn: swap.new_vsn.clone(),
                    sha256: swap.sha256.clone(),
                    source: swap.source.clone(),
                }),
                request_id: self.request_id.clone(),
            })
            .collect();
        changes.extend(unloads);
        if !self.shared.history.record(changes, &self.shared.background).is_empty() {
            self.shared.sweep_later();
        }
        result
    }

    fn finish_units(&mut self) -> ReloadResult {
        let shared = Arc::clone(&self.shared);
        let units = std::mem::take(&mut self.units);
        if self.kind != Kind::System {
            let mut result = match units.into_iter().next() {
                Some(unit) => unit.finish(&shared),
                None => ReloadResult::new(self.kind, &self.target),
            };
            result.errors.extend(std::mem::take(&mut self.errors));
            return result;
        }
        let mut result = ReloadResult::new(Kind::System, "system");
        result.errors.append(&mut self.errors);
        for unit in units {
            let done = unit.finish(&shared);
            self.emit_child(done.kind, &done.target, stop(&done));
            result.absorb(done);
        }
        for change in std::mem::take(&mut self.changes) {
            self.emit_child(Kind::CodeChange, &change.target, stop(&change));
            result.absorb(change);
        }
        result.metadata.counts = Some(Counts::of(&result.results));
        result.duration = self.started.elapsed();
        result
    }

    /// A dry run's end: what each staged build would change, and every staged
    /// build dropped — nothing committed, nothing recorded.
    pub fn dry_run(mut self) -> ReloadResult {
        let shared = Arc::clone(&self.shared);
        let mut plan = Vec::new();
        for step in self.units.iter_mut().flat_map(|unit| unit.steps.iter_mut()) {
            plan.extend(step.preview(&shared));
            step.discard();
        }
        for unit in &mut self.units {
            unit.record = None;
            unit.unloads.clear();
        }
        self.code_change.clear();
        let mut result = self.finish_units();
        result.metadata.dry_run = true;
        result.metadata.plan = plan;
        result
    }

    /// Every phase in a row, as a standalone node runs a request: an atomic plan
    /// with a failed stage is aborted; otherwise committed, then settled (undone
    /// when atomic and anything failed).
    pub fn run(mut self) -> ReloadResult {
        if self.options.dry_run {
            return self.dry_run();
        }
        if self.options.atomic {
            if let Some(because) = self.staging_failures() {
                self.abort(&format!("not swapped: {because}, and the reload is atomic"));
                return self.finish();
            }
        }
        self.commit();
        let undo = if self.options.atomic { self.failures() } else { None };
        self.settle(undo.as_deref());
        let (trial, canary) = (self.options.trial.clone(), self.options.canary.is_some());
        let (shared, request_id) = (Arc::clone(&self.shared), self.request_id.clone());
        let result = self.finish();
        if let (Some(spec), None) = (trial, undo) {
            start_trial(&shared, &spec, canary, &request_id, &result);
        }
        result
    }

    /// Scope `all`: every requested app (default: every loaded app), then every
    /// listed extension, each a telemetry step of its own from here to finish.
    fn stage_all(&mut self, all: &AllScope) {
        let shared = Arc::clone(&self.shared);
        let apps: Vec<String> = if all.apps.is_empty() { shared.app_names() } else { all.apps.clone() };
        for name in &apps {
            self.emit_child(Kind::App, name, EventBody::Start { system_time: SystemTime::now() });
            let unit = app::plan_app(&shared, AppSource::Name(name), &self.options, &self.request_id);
            self.units.push(unit);
        }
        for path in &all.extensions {
            let target = path.display().to_string();
            self.emit_child(Kind::Extension, &target, EventBody::Start { system_time: SystemTime::now() });
            self.units.push(plan_extension(&shared, path, &self.options, &self.request_id));
        }
        self.code_change = all.code_change.clone();
    }

    /// The recorded extensions: a record that cannot be read is an error of the
    /// whole, never a reason not to load the others.
    fn stage_recorded_extensions(&mut self) {
        let shared = Arc::clone(&self.shared);
        let recovered = shared.extensions.recover();
        for problem in recovered.problems {
            tracing::error!(%problem, "an extension record cannot be read");
            self.errors.push(Failure::new("extensions.json", Reason::InvalidModule, problem));
        }
        for record in &recovered.records {
            shared.extensions.remember(record.clone());
        }
        for record in recovered.records {
            let target = record.path.display().to_string();
            self.emit_child(Kind::Extension, &target, EventBody::Start { system_time: SystemTime::now() });
            let unit = plan_extension(&shared, &record.path, &self.options, &self.request_id);
            for failure in &unit.result.errors {
                tracing::error!(extension = %target, reason = %failure.reason, message = %failure.message,
                    "a recorded extension did not load");
            }
            self.units.push(unit);
        }
    }

    /// An event of one child step of scope `all` (the request's own events are
    /// its caller's).
    fn emit_child(&self, kind: Kind, target: &str, body: EventBody) {
        if self.kind == Kind::System {
            self.shared.telemetry.emit_as(self.role, kind, target, &self.request_id, body);
        }
    }
}

fn stop(result: &ReloadResult) -> EventBody {
    EventBody::Stop { duration: result.duration, status: result.status() }
}

/// What failed in the units and in `others`, as `a, b failed`; `None` when
/// nothing did.
fn culprits<'a>(units: &[Unit], others: impl Iterator<Item = &'a ReloadResult>) -> Option<String> {
    let mut culprits: Vec<String> = Vec::new();
    for unit in units {
        culprits.extend(unit.result.errors.iter().map(|f| f.target.clone()));
        for step in &unit.steps {
            culprits.extend(step.result.errors.iter().map(|f| f.target.clone()));
        }
        for unload in &unit.unloads {
            culprits.extend(unload.result.errors.iter().map(|f| f.target.clone()));
        }
    }
    for other in others {
        culprits.extend(other.errors.iter().map(|f| f.target.clone()));
    }
    culprits.dedup();
    (!culprits.is_empty()).then(|| format!("{} failed", culprits.join(", ")))
}
