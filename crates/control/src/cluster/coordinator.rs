//! A reload this member received, run across the cluster (CONTRACT.md §10):
//!
//! 1. take the cluster lock (its create revision is the fencing token), then
//!    read the members and pick the targets;
//! 2. stage here — read, build, compile — and take the plan's blueprint;
//! 3. prepare: every other target fetches the builds by sha256 and stages them,
//!    in waves so that members that have a build serve it to the next ones;
//! 4. commit: one etcd transaction, guarded by the fencing token, records the
//!    desired state — or, when any target did not prepare, abort everywhere;
//! 5. apply: every target swaps, migrates and purges (an atomic request holds
//!    its processes until every target reported, then keeps or undoes it
//!    everywhere), each answering its own result, a `node` child.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinSet;
use zest_runtime::telemetry::{AbortCause, Role};
use zest_runtime::{
    Blueprint, ClusterOutcome, EventBody, Failure, Kind, LockError, Phase, Plan, Reason, ReloadRequest, ReloadResult,
    RollbackRequest, Scope, Skip, UnloadRequest, UnloadTarget,
};

use super::etcd::{Changes, EtcdError, MemberRecord};
use super::peer::PeerError;
use super::Cluster;
use crate::traces;
use crate::wire::{self, Nodes};

/// How many members fetch a build from one holder in one wave of prepares.
const FANOUT: usize = 8;

/// How long a coordinator whose commit went unanswered keeps asking etcd
/// whether it landed before it answers that etcd cannot say.
const OUTCOME_WAIT: Duration = Duration::from_secs(30);

/// Why a cluster reload did not run at all (a JSON-RPC error, not a result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The lock is held (`CONFLICT`).
    Conflict,
    /// `nodes` names a member the cluster does not have (`INVALID_PARAMS`).
    InvalidParams(String),
}

fn scope_of(request: &ReloadRequest) -> (Kind, String) {
    match &request.scope {
        Scope::Module(name) => (Kind::Module, name.clone()),
        Scope::App(name) => (Kind::App, name.clone()),
        Scope::Extension(path) => (Kind::Extension, path.display().to_string()),
        Scope::All(_) => (Kind::System, "system".to_string()),
    }
}

/// A member's result as a child of the cluster's: `{"kind": "node", "target": id, ...}`.
fn node_child(node: &str, mut result: ReloadResult) -> ReloadResult {
    result.kind = Kind::Node;
    result.target = node.to_string();
    result
}

/// Member `node`'s answer (its result) as a `node` child; `silent` says what
/// it means that it did not answer.
fn answered(answers: &[(String, Result<Value, PeerError>)], node: &str, silent: &str) -> ReloadResult {
    match answers.iter().find(|(id, _)| id == node) {
        Some((_, Ok(answer))) => match wire::parse_result(answer) {
            Ok(result) => node_child(node, result),
            Err(err) => node_failure(node, Reason::InternalError, format!("its answer cannot be read: {err}")),
        },
        Some((_, Err(err))) => node_failure(node, Reason::NodeUnreachable, format!("{silent} ({err})")),
        None => node_failure(node, Reason::NodeUnreachable, silent),
    }
}

fn node_failure(node: &str, reason: Reason, message: impl Into<String>) -> ReloadResult {
    let mut result = ReloadResult::new(Kind::Node, node);
    result.errors.push(Failure::new(node, reason, message));
    result
}

/// The result of a request that changed nothing anywhere because etcd could
/// not be reached.
fn unavailable(kind: Kind, target: &str, message: &str) -> ReloadResult {
    let mut result = ReloadResult::new(kind, target);
    let message = format!("{message}; nothing was changed");
    result.errors.push(Failure::new(target, Reason::ClusterUnavailable, message));
    result.metadata.cluster = Some(ClusterOutcome { nodes: Vec::new(), phase: Phase::Aborted, revision: None });
    result
}

/// What a cluster request does: a reload, a rollback to builds history
/// names (on every target, with processes migrating `down`), or an unload
/// (every target takes the app or extension out, and so does the desired
/// state).
#[derive(Debug, Clone, Copy)]
pub enum Work<'a> {
    Reload(&'a ReloadRequest),
    Rollback(&'a RollbackRequest),
    Unload(&'a UnloadRequest),
}

impl Work<'_> {
    fn kind_and_target(&self) -> (Kind, String) {
        match self {
            Work::Reload(request) => scope_of(request),
            Work::Rollback(request) => request.kind_and_target(),
            Work::Unload(request) => request.kind_and_target(),
        }
    }

    fn lock_timeout(&self) -> Duration {
        match self {
            Work::Reload(request) => request.options.lock_timeout,
            Work::Rollback(request) => request.options.lock_timeout,
            Work::Unload(request) => request.lock_timeout,
        }
    }

    fn request_id(&self) -> Option<&String> {
        match self {
            Work::Reload(request) => request.request_id.as_ref(),
            Work::Rollback(request) => request.request_id.as_ref(),
            Work::Unload(request) => request.request_id.as_ref(),
        }
    }

    /// The staged plan, or the result of a request that cannot be staged.
    fn plan(&self, session: &zest_runtime::Session) -> Result<Plan, Box<ReloadResult>> {
        match self {
            Work::Reload(request) => Ok(session.plan(request)),
            Work::Rollback(request) => session.plan_rollback(request),
            Work::Unload(request) => {
                let mut plan = session.plan_unload(request);
                if plan.staging_failures().is_some() {
                    // Nothing to take out here (`app_not_found`,
                    // `not_found`, `forbidden_path`...): no member is asked.
                    plan.abort("not unloaded: the target cannot be unloaded");
                    return Err(Box::new(plan.finish()));
                }
                Ok(plan)
            }
        }
    }

    /// What `cluster.prepare` tells every other member to take out, for an
    /// unload: the app by name, or the extension by the name of its record
    /// (each member's record holds the path it was loaded from).
    fn unload_params(&self, plan: &Plan) -> Option<Value> {
        let Work::Unload(request) = self else { return None };
        match &request.target {
            UnloadTarget::App(name) => Some(json!({"app": name})),
            UnloadTarget::Extension(path) => {
                let name = plan.unloading().into_iter().find(|(kind, _)| *kind == Kind::Extension)?.1;
                Some(json!({"extension": name, "target": path.display().to_string()}))
            }
        }
    }

    fn is_rollback(&self) -> bool {
        matches!(self, Work::Rollback(_))
    }
}

pub(super) fn reload(cluster: &Arc<Cluster>, work: Work<'_>, nodes: &Nodes) -> Result<ReloadResult, Refusal> {
    let started = Instant::now();
    let (kind, target) = work.kind_and_target();
    let guard = match zest_runtime::ReloadLock::acquire(&cluster.lock, work.lock_timeout()) {
        Ok(guard) => guard,
        Err(LockError::Conflict) => return Err(Refusal::Conflict),
        Err(LockError::Unavailable(message)) => {
            let mut result = unavailable(kind, &target, &message);
            result.duration = started.elapsed();
            return Ok(result);
        }
    };
    let token = guard.token() as i64;
    // Plans still waiting here for an older coordinator (killed, cut off)
    // would hold this node's lock until their deadline: holding the lock
    // now proves theirs gone, so they are decided by etcd at once.
    cluster.note_token(token, true);
    let (members, known) = match cluster.handle.block_on(cluster.store.roster()) {
        Ok(roster) => roster,
        Err(err) => {
            let mut result = unavailable(kind, &target, &err.to_string());
            result.duration = started.elapsed();
            return Ok(result);
        }
    };
    let (targets, absent) = targets(cluster, &members, &known, nodes)?;
    // Unique in the cluster, whichever member coordinates and however often
    // it restarts: the fencing token is.
    let request_id = work.request_id().cloned().unwrap_or_else(|| format!("{}-{token}", cluster.config.node));
    let run = Run {
        cluster,
        work,
        nodes,
        kind,
        target: target.clone(),
        request_id: request_id.clone(),
        token,
        targets,
        prepared: std::cell::Cell::new(false),
        absent,
    };
    let telemetry = cluster.node.telemetry();
    let mut result = telemetry.step_since(Role::Coordinator, started, kind, &target, &request_id, || run.coordinate());
    result.metadata.rollback = work.is_rollback();
    drop(guard);
    if let (true, Some(outcome)) = (run.prepared.get(), &result.metadata.cluster) {
        zest_runtime::telemetry::time_cluster_reload(result.duration, outcome.phase);
    }
    Ok(result)
}

/// The members a request reaches — every member, this one, or those listed —
/// and the ids of those it should reach that are known but not live (their
/// lease lapsed, they are cut off, or they stopped without a clean shutdown):
/// reported `skipped` with `node_unreachable`, they catch up when they return.
fn targets(
    cluster: &Cluster,
    members: &[MemberRecord],
    known: &[String],
    nodes: &Nodes,
) -> Result<(Vec<MemberRecord>, Vec<String>), Refusal> {
    let me = || members.iter().find(|m| m.node == cluster.config.node).cloned().unwrap_or_else(|| cluster.record());
    let live = |id: &str| id == cluster.config.node || members.iter().any(|m| m.node == id);
    match nodes {
        Nodes::All => {
            let mut all = members.to_vec();
            if !all.iter().any(|m| m.node == cluster.config.node) {
                all.push(me());
            }
            let absent = known.iter().filter(|id| !live(id)).cloned().collect();
            Ok((all, absent))
        }
        Nodes::Local => Ok((vec![me()], Vec::new())),
        Nodes::Listed(ids) => {
            let mut listed: Vec<MemberRecord> = Vec::new();
            let mut absent: Vec<String> = Vec::new();
            for id in ids {
                if listed.iter().any(|m| &m.node == id) || absent.contains(id) {
                    continue;
                }
                match members.iter().find(|m| &m.node == id) {
                    Some(member) => listed.push(member.clone()),
                    None if known.contains(id) => absent.push(id.clone()),
                    None => {
                        let named: Vec<&str> = members.iter().map(|m| m.node.as_str()).collect();
                        return Err(Refusal::InvalidParams(format!(
                            "nodes: `{id}` is not a member of cluster `{}` (members: {})",
                            cluster.config.name,
                            named.join(", ")
                        )));
                    }
                }
            }
            absent.sort();
            Ok((listed, absent))
        }
    }
}

/// `cluster.prepare`'s parameters, the blueprint serialized once for every target.
#[derive(serde::Serialize)]
struct PrepareParams<'a> {
    request_id: &'a str,
    token: i64,
    coordinator: &'a str,
    sources: &'a [String],
    blueprint: &'a serde_json::value::RawValue,
    rollback: bool,
    /// An unload: what to take out instead of staging the blueprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    unload: Option<&'a Value>,
    /// The coordinator's prepare span (W3C), when spans are exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
}

/// How one target's prepare went.
enum Prepared {
    Yes,
    No {
        reason: Reason,
        message: String,
        result: Option<Box<ReloadResult>>,
    },
    /// Never asked: the request was aborted before its wave.
    NotAsked,
}

struct Run<'a> {
    cluster: &'a Arc<Cluster>,
    work: Work<'a>,
    nodes: &'a Nodes,
    kind: Kind,
    target: String,
    request_id: String,
    token: i64,
    targets: Vec<MemberRecord>,
    /// Set once the request entered its two phases (`zest.cluster.prepare`):
    /// from then on it ends in one commit or one abort.
    prepared: std::cell::Cell<bool>,
    /// Known members the request should reach that are not live: skipped.
    absent: Vec<String>,
}

impl Run<'_> {
    fn me(&self) -> &str {
        &self.cluster.config.node
    }

    fn ids(&self) -> Vec<String> {
        self.targets.iter().map(|m| m.node.clone()).collect()
    }

    fn emit(&self, body: EventBody) {
        self.cluster.node.telemetry().emit(self.kind, &self.target, &self.request_id, body);
    }

    fn result(&self, children: Vec<ReloadResult>, phase: Phase, revision: Option<i64>) -> ReloadResult {
        let mut result = ReloadResult::new(self.kind, &self.target);
        let mut children = children;
        children.sort_by(|a, b| a.target.cmp(&b.target));
        for child in children {
            result.absorb(child);
        }
        result
            .skipped
            .extend(self.absent.iter().map(|id| Skip { target: id.clone(), reason: Reason::NodeUnreachable }));
        result.metadata.cluster = Some(ClusterOutcome { nodes: self.ids(), phase, revision });
        result
    }

    fn coordinate(&self) -> ReloadResult {
        let cluster = self.cluster;
        let wait = cluster.config.prepare_timeout;
        let session = match cluster.node.session(wait, Some(&self.request_id)) {
            Ok(session) => session,
            Err(err) => {
                let child = node_failure(self.me(), Reason::PrepareFailed, format!("this member is busy: {err}"));
                return self.result(vec![child], Phase::Aborted, None);
            }
        };
        let mut plan = match self.work.plan(&session) {
            Ok(plan) => plan,
            Err(result) => return self.coordinator_only(*result, true, Phase::Aborted),
        };
        if plan.options().dry_run {
            // A dry run stages here and commits nothing anywhere.
            return plan.run();
        }
        let local = self.targets.iter().any(|m| m.node == self.me());
        if *self.nodes == Nodes::Local {
            let mine = plan.run();
            cluster.state().diverged = true;
            return self.result(vec![node_child(self.me(), mine)], Phase::Committed, None);
        }
        // Staged here (the coordinator's own prepare): from now on the request
        // ends in one commit or one abort.
        self.emit(EventBody::ClusterPrepare { nodes: self.ids() });
        self.prepared.set(true);
        if plan.options().atomic {
            if let Some(because) = plan.staging_failures() {
                let message = format!("not swapped: {because}, and the reload is atomic");
                plan.abort(&message);
                let mine = plan.finish();
                self.emit(EventBody::ClusterAbort { nodes: self.ids(), reason: AbortCause::BuildFailed, message });
                return self.coordinator_only(mine, local, Phase::Aborted);
            }
        }
        let blueprint = plan.blueprint();
        let unload = self.work.unload_params(&plan);
        if blueprint.is_empty() && unload.is_none() {
            // Every build failed here: no member has anything to prepare.
            let message = plan.staging_failures().unwrap_or_else(|| "nothing to reload".into());
            plan.abort(&format!("not swapped: {message}"));
            let mine = plan.finish();
            self.emit(EventBody::ClusterAbort { nodes: self.ids(), reason: AbortCause::BuildFailed, message });
            return self.coordinator_only(mine, local, Phase::Aborted);
        }
        let remote: Vec<MemberRecord> = self.targets.iter().filter(|m| m.node != self.me()).cloned().collect();
        // A build may take minutes; a holder stalled past its lease stops here.
        match cluster.handle.block_on(cluster.store.lock_held(self.token)) {
            Ok(true) => {}
            Ok(false) => {
                let why = "the lock's lease was lost while this member staged the request";
                return self.abort(plan, local, Vec::new(), AbortCause::LeaseLost, why);
            }
            Err(err) => return self.abort(plan, local, Vec::new(), AbortCause::ClusterUnavailable, &err.to_string()),
        }
        let span = traces::phase_span("prepare", &self.request_id, self.me());
        let traceparent = traces::traceparent(&span);
        let outcomes = span.in_scope(|| {
            cluster.handle.block_on(self.prepare_all(&remote, &blueprint, unload.as_ref(), traceparent.as_deref()))
        });
        let failed: Vec<String> = outcomes
            .iter()
            .filter_map(|(member, outcome)| match outcome {
                Prepared::No { message, .. } => Some(format!("{} did not prepare ({message})", member.node)),
                _ => None,
            })
            .collect();
        span.record("zest.outcome", if failed.is_empty() { "prepared" } else { "failed" });
        if !failed.is_empty() {
            // The first failure stopped the asking: it is the cause.
            let cause = match outcomes.iter().find_map(|(_, outcome)| match outcome {
                Prepared::No { reason, .. } => Some(*reason),
                _ => None,
            }) {
                Some(Reason::NodeUnreachable) => AbortCause::NodeUnreachable,
                _ => AbortCause::PrepareFailed,
            };
            let why = failed.join("; ");
            return self.abort(plan, local, outcomes, cause, &why);
        }
        let changes = match self.work {
            Work::Unload(_) => changes_of_unload(&cluster.node, &plan),
            _ => changes_of(&blueprint),
        };
        // A listed member that is away gets its override too: it loads it
        // when it comes back.
        let listed: Option<Vec<String>> = match self.nodes {
            Nodes::Listed(_) => {
                let mut ids = self.ids();
                ids.extend(self.absent.iter().cloned());
                Some(ids)
            }
            _ => None,
        };
        let before = if plan.options().atomic {
            match cluster.handle.block_on(cluster.store.current(&changes, listed.as_deref())) {
                Ok(before) => before,
                Err(err) => return self.abort(plan, local, outcomes, AbortCause::ClusterUnavailable, &err.to_string()),
            }
        } else {
            Vec::new()
        };
        pause("before-commit");
        let committed = cluster.handle.block_on(cluster.store.commit(
            self.token,
            &self.request_id,
            &changes,
            listed.as_deref(),
            plan.options().atomic,
        ));
        let revision = match committed {
            Ok(revision) => revision,
            // An earlier attempt of the same transaction, whose answer was
            // lost, may have landed before the lease went: etcd says.
            Err(EtcdError::LeaseLost) => match self.commit_outcome() {
                Ok(Some(revision)) => revision,
                Ok(None) => {
                    let why = "the lock's lease was lost before the commit";
                    return self.abort(plan, local, outcomes, AbortCause::LeaseLost, why);
                }
                Err(unknown) => return self.undecided(plan, local, outcomes, &format!("lease lost; then {unknown}")),
            },
            // The transaction may have landed with its answer lost: only etcd can say.
            Err(err) => match self.commit_outcome() {
                Ok(Some(revision)) => revision,
                Ok(None) => {
                    let why = format!("{err}; etcd then showed no commit, and the lock is released so none can land");
                    return self.abort(plan, local, outcomes, AbortCause::ClusterUnavailable, &why);
                }
                Err(unknown) => return self.undecided(plan, local, outcomes, &format!("{err}; then {unknown}")),
            },
        };
        pause("after-commit");
        self.emit(EventBody::ClusterCommit { nodes: self.ids(), revision });
        let span = traces::phase_span("commit", &self.request_id, self.me());
        span.record("zest.revision", revision);
        let _span = span.enter();
        if plan.options().atomic {
            self.apply_atomic(plan, local, &remote, revision, &before, listed.as_deref())
        } else {
            self.apply(plan, local, &remote, revision)
        }
    }

    /// Whether a commit whose answer was lost landed, as etcd says: its
    /// record, or, when there is none, the lock released first (so that a
    /// commit transaction still on its way fails its fencing check) and the
    /// record read again. Asked again while etcd does not answer, for up to
    /// [`OUTCOME_WAIT`].
    fn commit_outcome(&self) -> Result<Option<i64>, EtcdError> {
        let (store, token) = (&self.cluster.store, self.token);
        let give_up = Instant::now() + OUTCOME_WAIT;
        loop {
            let read = self.cluster.handle.block_on(async {
                if let Some(revision) = store.committed(token).await? {
                    return Ok(Some(revision));
                }
                store.unlock(token).await?;
                store.committed(token).await
            });
            match read {
                Ok(outcome) => return Ok(outcome),
                Err(err) if Instant::now() >= give_up => return Err(err),
                Err(err) => {
                    tracing::warn!(%err, request_id = %self.request_id, "cannot tell yet whether the commit landed");
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
    }

    /// etcd would not say whether the commit landed: nothing more is sent
    /// to the members, which decide by etcd at their deadline (apply if it
    /// landed, drop otherwise); this member drops its plan and catches up
    /// with whatever etcd holds. The result says so (`cluster_unavailable`).
    fn undecided(
        &self,
        mut plan: Plan,
        local: bool,
        outcomes: Vec<(MemberRecord, Prepared)>,
        why: &str,
    ) -> ReloadResult {
        let message = format!(
            "whether the commit landed is unknown ({why}): each member applies it if etcd recorded it, and drops it otherwise"
        );
        self.emit(EventBody::ClusterAbort {
            nodes: self.ids(),
            reason: AbortCause::ClusterUnavailable,
            message: message.clone(),
        });
        plan.abort(&format!("not swapped here yet: {message}"));
        let mine = plan.finish();
        self.cluster.state().desired_seen = None;
        self.cluster.wake.notify_one();
        let children = outcomes
            .into_iter()
            .map(|(member, _)| node_failure(&member.node, Reason::ClusterUnavailable, message.clone()))
            .collect();
        let mut result = self.result(children, Phase::Aborted, None);
        if local {
            result.absorb(node_child(self.me(), mine));
        }
        result
    }

    /// The request ended before any other member was asked: only this
    /// member's own result (its errors at the top when it is not a target).
    fn coordinator_only(&self, mine: ReloadResult, local: bool, phase: Phase) -> ReloadResult {
        if local {
            return self.result(vec![node_child(self.me(), mine)], phase, None);
        }
        let mut result = self.result(Vec::new(), phase, None);
        result.errors.extend(mine.errors.into_iter().filter(|f| f.reason != Reason::RolledBack));
        result
    }

    /// Asks every remote target to prepare, builds travelling in waves: this
    /// member is the first source of `FANOUT` targets, and every target that
    /// prepared becomes the first source of `FANOUT` more — a target is asked
    /// as soon as a source has room for it (no wave waits for its slowest
    /// member), so a source never serves a build more than `FANOUT` times
    /// (the others in `sources` are fallbacks). After the first failure no
    /// one more is asked.
    async fn prepare_all(
        &self,
        remote: &[MemberRecord],
        blueprint: &Blueprint,
        unload: Option<&Value>,
        traceparent: Option<&str>,
    ) -> Vec<(MemberRecord, Prepared)> {
        let cluster = self.cluster;
        // Serialized once, not once per target.
        let blueprint = serde_json::value::to_raw_value(&wire::blueprint(blueprint))
            .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned());
        let mut waiting: std::collections::VecDeque<MemberRecord> = remote.to_vec().into();
        waiting.make_contiguous().sort_by(|a, b| a.node.cmp(&b.node));
        // Each source, with how many targets it is the first source of.
        let mut holders: Vec<(String, usize)> = vec![(cluster.advertise.clone(), 0)];
        let mut outcomes = Vec::new();
        let mut calls = JoinSet::new();
        let mut failed = false;
        loop {
            while !failed && !waiting.is_empty() {
                let Some(slot) = holders.iter().position(|(_, served)| *served < FANOUT) else { break };
                let Some(member) = waiting.pop_front() else { break };
                holders[slot].1 += 1;
                let mut sources: Vec<String> = holders.iter().map(|(source, _)| source.clone()).collect();
                sources.rotate_left(slot);
                let params = PrepareParams {
                    request_id: &self.request_id,
                    token: self.token,
                    coordinator: &cluster.config.node,
                    sources: &sources,
                    blueprint: &blueprint,
                    rollback: self.work.is_rollback(),
                    unload,
                    traceparent,
                };
                let params = serde_json::value::to_raw_value(&params);
                let cluster = Arc::clone(cluster);
                let timeout = cluster.config.prepare_timeout;
                calls.spawn(async move {
                    let answer = match params {
                        Ok(params) => {
                            cluster.peers.call_raw(&member.advertise, "cluster.prepare", params, timeout).await
                        }
                        Err(err) => Err(PeerError::Refused(format!("cannot serialize the prepare: {err}"))),
                    };
                    (member, answer)
                });
            }
            let Some(joined) = calls.join_next().await else { break };
            let Ok((member, answer)) = joined else { continue };
            let outcome = match answer {
                Ok(answer) if answer["prepared"] == true => {
                    holders.push((member.advertise.clone(), 0));
                    Prepared::Yes
                }
                Ok(answer) => {
                    let result = wire::parse_result(&answer["result"]).ok().map(Box::new);
                    let message = result
                        .as_ref()
                        .and_then(|r| r.errors.first().map(|f| format!("{}: {}", f.target, f.message)))
                        .unwrap_or_else(|| "it could not stage the builds".into());
                    Prepared::No { reason: Reason::PrepareFailed, message, result }
                }
                Err(PeerError::Unreachable(message)) => {
                    Prepared::No { reason: Reason::NodeUnreachable, message, result: None }
                }
                Err(PeerError::Refused(message)) => {
                    Prepared::No { reason: Reason::PrepareFailed, message, result: None }
                }
            };
            failed |= matches!(outcome, Prepared::No { .. });
            outcomes.push((member, outcome));
        }
        outcomes.extend(waiting.into_iter().map(|member| (member, Prepared::NotAsked)));
        outcomes
    }

    /// Nothing is swapped on any member: those that prepared drop their plans,
    /// this member drops its own, and each says why.
    fn abort(
        &self,
        mut plan: Plan,
        local: bool,
        outcomes: Vec<(MemberRecord, Prepared)>,
        cause: AbortCause,
        why: &str,
    ) -> ReloadResult {
        self.emit(EventBody::ClusterAbort { nodes: self.ids(), reason: cause, message: why.to_string() });
        let span = traces::phase_span("abort", &self.request_id, self.me());
        span.record("zest.outcome", cause.as_str());
        let _span = span.enter();
        let message = format!("not swapped: {why}");
        let prepared: Vec<MemberRecord> =
            outcomes.iter().filter(|(_, o)| matches!(o, Prepared::Yes)).map(|(m, _)| m.clone()).collect();
        let params = json!({"request_id": self.request_id, "message": message, "reason": cause.as_str(),
            "traceparent": traces::traceparent(&span)});
        // Those that did not answer hear it too, without waiting for them: a
        // member that was only slow then stages nothing when its prepare runs.
        let silent: Vec<MemberRecord> =
            outcomes.iter().filter(|(_, o)| !matches!(o, Prepared::Yes)).map(|(m, _)| m.clone()).collect();
        drop(self.cluster.handle.spawn(call_all(Arc::clone(self.cluster), silent, "cluster.abort", params.clone())));
        let answers = self.call_all(&prepared, "cluster.abort", &params);
        let mut children = Vec::new();
        for (member, outcome) in outcomes {
            let child = match outcome {
                Prepared::Yes => answered(
                    &answers,
                    &member.node,
                    "prepared, then not reachable to abort; it drops the plan at its deadline",
                ),
                Prepared::No { reason: own, message: detail, result } => {
                    let mut child = node_failure(&member.node, own, detail);
                    if let Some(result) = result {
                        child.errors.extend(result.errors.into_iter().filter(|f| f.target != member.node));
                    }
                    child
                }
                Prepared::NotAsked => node_failure(&member.node, Reason::PrepareFailed, format!("not asked: {why}")),
            };
            children.push(child);
        }
        plan.abort(&message);
        let mine = plan.finish();
        if !matches!(cause, AbortCause::PrepareFailed | AbortCause::NodeUnreachable) {
            let mut result = self.result(children, Phase::Aborted, None);
            result.errors.push(Failure::new(&self.target, cause.reason(), format!("{why}; nothing was swapped")));
            if local {
                result.absorb(node_child(self.me(), mine));
            }
            return result;
        }
        if local {
            children.push(node_child(self.me(), mine));
        }
        self.result(children, Phase::Aborted, None)
    }

    /// Calls `method` on every member of `members`, blocking until all answered.
    fn call_all(
        &self,
        members: &[MemberRecord],
        method: &'static str,
        params: &Value,
    ) -> Vec<(String, Result<Value, PeerError>)> {
        let cluster = Arc::clone(self.cluster);
        self.cluster.handle.block_on(call_all(cluster, members.to_vec(), method, params.clone()))
    }

    /// Commits everywhere at once (this member on this thread meanwhile); each
    /// target answers its own result.
    fn apply(&self, mut plan: Plan, local: bool, remote: &[MemberRecord], revision: i64) -> ReloadResult {
        let cluster = self.cluster;
        let params = json!({"request_id": self.request_id, "revision": revision,
            "traceparent": traces::traceparent(&tracing::Span::current())});
        // The other members commit while this one does.
        let calls = cluster.handle.spawn(call_all(Arc::clone(cluster), remote.to_vec(), "cluster.commit", params));
        let mut children = Vec::new();
        let mut result_errors = Vec::new();
        if local {
            plan.commit();
            plan.settle(None);
            children.push(node_child(self.me(), plan.finish()));
            cluster.applied(revision);
        } else {
            // Built here only to hand out its blueprint: nothing is swapped.
            plan.abort("not swapped: this member is not a target");
            let mine = plan.finish();
            result_errors.extend(mine.errors.into_iter().filter(|f| f.reason != Reason::RolledBack));
        }
        let answers = cluster.handle.block_on(calls).unwrap_or_default();
        for member in remote {
            let silent = "committed, but it did not answer; it applies the commit when it catches up";
            children.push(answered(&answers, &member.node, silent));
        }
        let mut result = self.result(children, Phase::Committed, Some(revision));
        result.errors.extend(result_errors);
        result
    }

    /// An atomic request: every target swaps and migrates holding its
    /// processes; when every one succeeded they all keep it, else they all undo
    /// it and etcd gets its previous desired state back.
    fn apply_atomic(
        &self,
        mut plan: Plan,
        local: bool,
        remote: &[MemberRecord],
        revision: i64,
        before: &[(String, Option<Value>)],
        listed: Option<&[String]>,
    ) -> ReloadResult {
        let cluster = self.cluster;
        let traceparent = traces::traceparent(&tracing::Span::current());
        let params = json!({"request_id": self.request_id, "revision": revision, "traceparent": traceparent});
        let held = self.call_all(remote, "cluster.commit", &params);
        let mut culprits = Vec::new();
        if local {
            plan.commit();
            if let Some(failures) = plan.failures() {
                culprits.push(format!("{}: {failures}", self.me()));
            }
        }
        for member in remote {
            match held.iter().find(|(node, _)| *node == member.node) {
                Some((_, Ok(answer))) => {
                    if let Some(failures) = answer["failures"].as_str() {
                        culprits.push(format!("{}: {failures}", member.node));
                    }
                }
                Some((_, Err(err))) => culprits.push(format!("{} did not answer ({err})", member.node)),
                None => culprits.push(format!("{} did not answer", member.node)),
            }
        }
        let undo = (!culprits.is_empty()).then(|| culprits.join("; "));
        let mut reverted = false;
        if undo.is_some() {
            match cluster.handle.block_on(cluster.store.revert(self.token, &self.request_id, before, listed)) {
                Ok(_) => reverted = true,
                Err(err) => tracing::error!(%err, request_id = %self.request_id,
                    "an atomic cluster reload was undone on its members but etcd still records it"),
            }
        }
        let params =
            json!({"request_id": self.request_id, "revision": revision, "undo": undo, "traceparent": traceparent});
        let answers = self.call_all(remote, "cluster.settle", &params);
        let mut children = Vec::new();
        if local {
            plan.settle(undo.as_deref());
            children.push(node_child(self.me(), plan.finish()));
            if undo.is_none() {
                cluster.applied(revision);
            }
        } else {
            plan.abort("not swapped: this member is not a target");
            drop(plan.finish());
        }
        for member in remote {
            let silent = "it did not answer the settle; at its deadline it keeps or undoes as etcd records";
            children.push(answered(&answers, &member.node, silent));
        }
        match undo {
            Some(_) if reverted => self.result(children, Phase::Aborted, None),
            _ => self.result(children, Phase::Committed, Some(revision)),
        }
    }
}

/// Calls `method` on every member of `members` at once; answers by member id.
async fn call_all(
    cluster: Arc<Cluster>,
    members: Vec<MemberRecord>,
    method: &'static str,
    params: Value,
) -> Vec<(String, Result<Value, PeerError>)> {
    let limits = cluster.node.config().limits.clone();
    let timeout = cluster.config.prepare_timeout + limits.drain_timeout + Duration::from_secs(5);
    let mut calls = JoinSet::new();
    for member in members {
        let (cluster, params) = (Arc::clone(&cluster), params.clone());
        calls.spawn(async move {
            let answer = cluster.peers.call(&member.advertise, method, params, timeout).await;
            (member.node, answer)
        });
    }
    let mut answers = Vec::new();
    while let Some(joined) = calls.join_next().await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    answers
}

/// A fault-injection hook for tests: with `ZEST_CLUSTER_PAUSE=before-commit:MS`
/// (or `after-commit:MS`, or both separated by a comma) in its environment, a
/// coordinator waits that long just before (after) its etcd commit, so that a
/// test can kill, stop or cut it there (`docs/cluster.md`, "Testing hooks").
fn pause(at: &str) {
    let Ok(spec) = std::env::var("ZEST_CLUSTER_PAUSE") else { return };
    let ms = spec.split(',').find_map(|one| {
        one.trim().strip_prefix(at).and_then(|rest| rest.strip_prefix(':')).and_then(|ms| ms.parse::<u64>().ok())
    });
    if let Some(ms) = ms {
        tracing::warn!(at, ms, "pausing, as ZEST_CLUSTER_PAUSE asks");
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// The desired-state keys a blueprint's commit writes.
fn changes_of(blueprint: &Blueprint) -> Changes {
    let mut changes = Changes::default();
    for unit in &blueprint.units {
        for build in &unit.builds {
            let value = json!({"sha256": build.sha256, "vsn": build.vsn, "source": build.source.display().to_string()});
            changes.puts.push(("module", build.module.clone(), value));
        }
        if let Some(app) = &unit.app {
            changes.puts.push(("app", app.name.clone(), wire::manifest(app)));
        }
        if let Some(record) = &unit.extension {
            changes.puts.push(("extension", record.name.clone(), wire::record(record)));
        }
        // Modules the app's manifest dropped leave the desired state: a
        // member starting or catching up must not load them again.
        changes.deletes.extend(unit.unloads.iter().map(|module| ("module", module.clone())));
    }
    changes
}

/// The desired-state keys an unload's commit removes (base and overrides):
/// the app or the extension, and every module it takes out, so that a member
/// starting or catching up does not load them again; and the marks it
/// writes, `desired/base/unloaded/<kind>/<name>` with the manifest or record
/// it had, so that a member that was away, or whose configuration lists the
/// app, takes it out too (read before the plan is applied, while this member
/// still holds them).
fn changes_of_unload(node: &zest_runtime::Node, plan: &Plan) -> Changes {
    let mut changes = Changes::default();
    for (kind, name) in plan.unloading() {
        let kind = match kind {
            Kind::App => {
                if let Some(manifest) = node.app_manifest(&name) {
                    changes.unloaded.push(("app", name.clone(), wire::manifest(&manifest)));
                }
                "app"
            }
            Kind::Extension => {
                let record = node.status().extensions.into_iter().find(|e| e.record.name == name);
                if let Some(extension) = record {
                    changes.unloaded.push(("extension", name.clone(), wire::record(&extension.record)));
                }
                "extension"
            }
            _ => "module",
        };
        changes.deletes.push((kind, name));
    }
    changes
}
