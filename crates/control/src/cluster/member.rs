//! This member as a target of another member's reload, and catching up with
//! what the cluster committed.
//!
//! A prepare fetches the builds the coordinator's blueprint names and stages
//! them into a plan that waits here — holding the node's reload lock — for the
//! coordinator's decision: commit (then, for an atomic request, settle) or
//! abort. A coordinator that goes silent cannot strand it: at the plan's
//! deadline this member asks etcd. Committed: it applies the plan on its own.
//! Not committed and the coordinator's lock gone: it drops the plan.
//!
//! Stale prepares: a prepare that arrives after its coordinator gave up (this
//! member was stopped, the network slow) must not hold the node for nothing.
//! An abort that came first is remembered, so the prepare stages nothing.
//! Otherwise the fencing tokens say it, with no etcd read: the lock is
//! exclusive and a token is the revision at which it was created, so a
//! prepare with a newer token proves that the lock of every older one is
//! gone for good. A prepare older than the newest token this member has seen
//! stages nothing; a plan still waiting here for an older token is decided at
//! once, by etcd, as at its deadline (applied if its commit landed before its
//! lock went, dropped otherwise), and the newer prepare stages after it. (A
//! member does not watch the lock: its two events per reload, sent to every
//! member, cost each one more CPU than anything else it did for a reload.)
//!
//! Catching up: whenever etcd holds a commit for this member newer than the
//! last one it applied — it started, restarted, came back from a partition, or
//! was not reachable when the commit was sent — it stages what the cluster
//! committed for it (the base with its overrides over it), fetching builds it
//! lacks from any member, and runs that plan, whatever its own files say.
//! Before that it unloads every app and extension the cluster marked
//! unloaded (`system.unload`) that it still holds ([`Unloaded`]): it was
//! away during the unload, or loaded them from its own files at start while
//! etcd could not say.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use zest_runtime::telemetry::{count_member, AbortCause, MemberStep, Role};
use zest_runtime::{
    Blueprint, BlueprintUnit, BuildRef, EventBody, Failure, Kind, Node, Plan, Reason, ReloadResult, Session,
    UnloadRequest, UnloadTarget,
};

use super::etcd::{Desired, DesiredBuild};
use super::Cluster;
use crate::{traces, wire};

/// How many times a prepared plan's deadline is pushed back while its
/// coordinator still holds the lock (or etcd cannot say) before it is dropped.
const MAX_EXTENSIONS: u32 = 3;

/// How many aborted request ids a member remembers (for prepares that arrive
/// after their abort).
pub(crate) const ABORTED_KEPT: usize = 64;

/// A plan prepared for a coordinator, waiting for its decision.
pub(crate) struct Pending {
    plan: Plan,
    /// The node's reload lock, held from prepare to the end.
    _session: Session,
    /// The coordinator's fencing token.
    token: i64,
    /// Committed and waiting to be settled (an atomic request).
    held: bool,
    deadline: Instant,
    extended: u32,
    /// The trace context of its prepare, for a decision etcd makes.
    traceparent: Option<String>,
    /// The task that lets etcd decide at the deadline
    /// ([`Cluster::decide_when_due`]), stopped once the coordinator decided,
    /// so that no timer wakes this member seconds after every reload.
    decider: Option<tokio::task::AbortHandle>,
}

impl Pending {
    /// Stops the deadline's task: the plan ends here now. Call it from the
    /// runtime's own threads (the task is then dropped on this worker).
    fn decided(&mut self) {
        if let Some(decider) = self.decider.take() {
            decider.abort();
        }
    }
}

/// The span of this member's `phase` of `request_id`, a child of the
/// coordinator's span that `params.traceparent` names (absent: its own trace).
fn phase_span(cluster: &Cluster, phase: &str, request_id: &str, params: &Value) -> tracing::Span {
    let span = traces::phase_span(phase, request_id, &cluster.config.node);
    traces::adopt(&span, params.get(traces::TRACEPARENT).and_then(Value::as_str));
    span
}

/// What a `cluster.prepare` for `system.unload` asks this member to take
/// out: an app by name, or the extension recorded under `name` (reported
/// under `target`, the path its coordinator was given).
pub(crate) enum Unload {
    App(String),
    Extension { name: String, target: String },
}

impl Unload {
    fn parse(value: &Value) -> Result<Unload, String> {
        match (value.get("app").and_then(Value::as_str), value.get("extension").and_then(Value::as_str)) {
            (Some(app), None) => Ok(Unload::App(app.to_string())),
            (None, Some(name)) => {
                let target = text(value, "target").map_err(|err| format!("unload: {err}"))?;
                Ok(Unload::Extension { name: name.to_string(), target })
            }
            _ => Err("unload must be {\"app\": NAME} or {\"extension\": NAME, \"target\": PATH}".into()),
        }
    }
}

/// A `cluster.prepare` request, read from its parameters.
struct Prepare {
    request_id: String,
    /// The fencing token of the coordinator's lock.
    token: i64,
    blueprint: Blueprint,
    /// Members to fetch missing builds from.
    sources: Vec<String>,
    rollback: bool,
    unload: Option<Unload>,
}

impl Prepare {
    fn parse(params: &Value) -> Result<Prepare, String> {
        let request_id = text(params, "request_id")?;
        let token = number(params, "token")?;
        let sources = field(params, "sources")?
            .as_array()
            .map(|items| items.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .ok_or("sources must be a list of member addresses")?;
        Ok(Prepare {
            request_id,
            token,
            blueprint: wire::parse_blueprint(field(params, "blueprint")?)?,
            sources,
            rollback: params.get("rollback").and_then(Value::as_bool).unwrap_or(false),
            unload: params.get("unload").map(Unload::parse).transpose()?,
        })
    }
}

fn field<'a>(params: &'a Value, key: &str) -> Result<&'a Value, String> {
    params.get(key).ok_or_else(|| format!("{key} is required"))
}

fn text(params: &Value, key: &str) -> Result<String, String> {
    field(params, key)?.as_str().map(str::to_string).ok_or_else(|| format!("{key} must be a string"))
}

fn number(params: &Value, key: &str) -> Result<i64, String> {
    field(params, key)?.as_i64().ok_or_else(|| format!("{key} must be an integer"))
}

impl Cluster {
    /// `cluster.prepare`: fetch the builds, stage the blueprint, wait for the
    /// decision. Answers `{"prepared": true}`, or `{"prepared": false,
    /// "result"}` with what failed.
    pub async fn prepare(self: &Arc<Self>, params: Value) -> Result<Value, String> {
        let mut request = Prepare::parse(&params)?;
        self.localize(&mut request.blueprint);
        let (request_id, token) = (request.request_id.clone(), request.token);
        if self.pending_lock().contains_key(&request_id) {
            return Err(format!("request {request_id} is already prepared here"));
        }
        // Stale prepares (the module's docs): an older token is over, unless
        // etcd says its lock is held (etcd's history began again: a new etcd
        // cluster counts revisions from 1). A plan waiting for an older one
        // is decided now.
        let newest = self.state().newest_token;
        let older = token < newest;
        if older {
            match self.store.lock_held(token).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!(
                    "request {request_id} is over: a newer reload (fencing token {newest}) reached this member since"
                ))
                }
                Err(err) => return Err(err.to_string()),
            }
        }
        self.note_token(token, older);
        let span = phase_span(self, "prepare", &request_id, &params);
        // Quick work that waits for nothing (every build held and compiled
        // in memory, so nothing to fetch or compile; the node's lock free) is
        // done on this thread: two thread hand-offs fewer for every member of
        // every reload. The rest goes to the blocking pool.
        let now = if request.unload.is_none() && self.node.stages_at_once(&request.blueprint) {
            self.node.session(Duration::ZERO, Some(&request_id)).ok()
        } else {
            None
        };
        let prepared = match now {
            Some(session) => span.in_scope(|| self.stage(&request, Some(session))),
            None => {
                let (cluster, staging) = (Arc::clone(self), span.clone());
                tokio::task::spawn_blocking(move || staging.in_scope(|| cluster.stage(&request, None)))
                    .await
                    .map_err(|err| format!("preparing panicked: {err}"))?
            }
        };
        span.record("zest.outcome", if prepared.is_ok() { "prepared" } else { "failed" });
        match prepared {
            Ok(()) => {
                let decider = tokio::spawn(Arc::clone(self).decide_when_due(request_id.clone())).abort_handle();
                match self.pending_lock().get_mut(&request_id) {
                    Some(pending) => pending.decider = Some(decider),
                    None => decider.abort(),
                }
                Ok(json!({"prepared": true}))
            }
            Err(result) => Ok(json!({"prepared": false, "result": wire::result(&result)})),
        }
    }

    /// Fetches what the request needs and stages it, in `session` when given
    /// (else one taken here, waiting for the node's lock); keeps the plan
    /// pending. Counted as a prepare, and as an abort unless the plan waits.
    fn stage(&self, request: &Prepare, session: Option<Session>) -> Result<(), Box<ReloadResult>> {
        count_member(&request.request_id, MemberStep::Prepare);
        self.stage_plan(request, session).map_err(|(cause, result)| {
            count_member(&request.request_id, MemberStep::Abort(cause));
            result
        })
    }

    /// [`Cluster::stage`]'s work: what failed, and why, as the abort counts it.
    fn stage_plan(&self, request: &Prepare, session: Option<Session>) -> Result<(), (AbortCause, Box<ReloadResult>)> {
        let Prepare { request_id, token, blueprint, sources, rollback, unload } = request;
        let failed = |failure: Failure| {
            let mut result = ReloadResult::new(blueprint.kind, &blueprint.target);
            result.errors.push(failure);
            (AbortCause::PrepareFailed, Box::new(result))
        };
        self.fetch_missing(blueprint, sources).map_err(failed)?;
        let session = match session {
            Some(session) => session,
            None => {
                // Leave the coordinator time to hear the answer within its own timeout.
                let wait = self.config.prepare_timeout * 3 / 4;
                self.node.session(wait, Some(request_id)).map_err(|err| {
                    failed(Failure::new(
                        &self.config.node,
                        Reason::PrepareFailed,
                        format!("this member is busy: {err}"),
                    ))
                })?
            }
        };
        let session = session.with_role(Role::Member);
        let telemetry = self.node.telemetry();
        telemetry.emit_as(
            Role::Member,
            blueprint.kind,
            &blueprint.target,
            request_id,
            EventBody::Start { system_time: SystemTime::now() },
        );
        let mut plan = match unload {
            None => session.plan_blueprint(blueprint),
            Some(Unload::App(name)) => session.plan_unload(&UnloadRequest::new(UnloadTarget::App(name.clone()))),
            Some(Unload::Extension { name, target }) => session.plan_unload_extension_named(name, target),
        };
        if *rollback {
            plan.set_direction(zest_runtime::Direction::Down);
            plan.set_action(zest_runtime::Action::Rollback);
        }
        if let Some(because) = plan.staging_failures() {
            plan.abort(&format!("not swapped: {because} on {}", self.config.node));
            return Err((AbortCause::PrepareFailed, Box::new(self.finish(plan))));
        }
        let pending = Pending {
            plan,
            _session: session,
            token: *token,
            held: false,
            deadline: Instant::now() + self.config.prepare_timeout,
            extended: 0,
            traceparent: traces::traceparent(&tracing::Span::current()),
            decider: None,
        };
        if let Some(cause) = self.was_aborted(request_id) {
            let mut plan = pending.plan;
            plan.abort("not swapped: the coordinator aborted the request while this member prepared it");
            return Err((cause, Box::new(self.finish(plan))));
        }
        self.pending_lock().insert(request_id.to_string(), pending);
        Ok(())
    }

    /// Fetches every build of `blueprint` this node neither runs nor holds.
    fn fetch_missing(&self, blueprint: &Blueprint, sources: &[String]) -> Result<(), Failure> {
        let missing: Vec<&BuildRef> = blueprint
            .builds()
            .filter(|build| blueprint.force || !self.node.runs_build(&build.module, &build.sha256))
            .filter(|build| self.node.build(&build.sha256).is_none())
            .collect();
        for build in missing {
            let bytes = self.peers.fetch(&build.module, &build.sha256, sources)?;
            self.node.add_build(bytes);
        }
        Ok(())
    }

    /// Finishes a plan and emits its `stop` event.
    fn finish(&self, plan: Plan) -> ReloadResult {
        let (kind, target, request_id) = (plan.kind(), plan.target().to_string(), plan.request_id().to_string());
        let result = plan.finish();
        let body = EventBody::Stop { duration: result.duration, status: result.status() };
        self.node.telemetry().emit_as(Role::Member, kind, &target, &request_id, body);
        result
    }

    /// Why the coordinator aborted `request_id`, if its abort came before
    /// this member prepared it.
    fn was_aborted(&self, request_id: &str) -> Option<AbortCause> {
        let aborted = self.aborted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        aborted.iter().find(|(id, _)| id == request_id).map(|(_, cause)| *cause)
    }

    pub(super) fn pending_lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self, request_id: &str, held: bool) -> Result<Pending, String> {
        let mut pending = self.pending_lock();
        match pending.get(request_id) {
            Some(entry) if entry.held == held => Ok(pending.remove(request_id).expect("present")),
            Some(_) if held => Err(format!("request {request_id} is prepared here, not committed")),
            Some(_) => Err(format!("request {request_id} is already committed here")),
            None => Err(format!("request {request_id} is not prepared here (it was decided already, or timed out)")),
        }
    }

    /// Notes the result of a request this member applied on its own (`None`
    /// while it applies it).
    fn decide(&self, request_id: &str, result: Option<Value>) {
        let mut decided = self.decided.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match decided.iter_mut().find(|(id, _)| id == request_id) {
            Some(entry) => entry.1 = result,
            None => decided.push_back((request_id.to_string(), result)),
        }
        while decided.len() > ABORTED_KEPT {
            decided.pop_front();
        }
    }

    /// The result of `request_id` if this member applied it on its own,
    /// waiting while it applies it; `None` if it did not.
    async fn decided(&self, request_id: &str) -> Option<Value> {
        let give_up = Instant::now() + self.config.prepare_timeout;
        loop {
            let found = {
                let decided = self.decided.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                decided.iter().find(|(id, _)| id == request_id).map(|(_, result)| result.clone())
            };
            match found {
                None => return None,
                Some(Some(result)) => return Some(result),
                Some(None) if Instant::now() >= give_up => return None,
                Some(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// `cluster.commit`: swap, migrate, purge. An atomic request stays held
    /// (processes suspended) until `cluster.settle`, and answers
    /// `{"held": true, "failures"}`; otherwise the answer is this member's result.
    /// A commit that comes after this member applied the request on its own
    /// (at its deadline, the coordinator silent) is answered with that result.
    pub async fn commit(self: &Arc<Self>, params: Value) -> Result<Value, String> {
        let request_id = text(&params, "request_id")?;
        let revision = number(&params, "revision")?;
        let mut pending = match self.take(&request_id, false) {
            Ok(pending) => pending,
            Err(err) => return self.decided(&request_id).await.ok_or(err),
        };
        count_member(&request_id, MemberStep::Commit);
        if !pending.plan.options().atomic {
            pending.decided();
        }
        let span = phase_span(self, "commit", &request_id, &params);
        span.record("zest.revision", revision);
        // As a quick prepare (above): a commit that runs no guest code and
        // waits for nothing is done on this thread; when settling would wait
        // for calls still running on the replaced build, that goes to the
        // blocking pool.
        let committed = pending.plan.commits_at_once() && {
            span.in_scope(|| pending.plan.commit());
            true
        };
        if committed && pending.plan.settles_at_once() {
            let answer = span.in_scope(|| self.settled(pending, None, revision));
            self.wake_if_behind();
            return Ok(answer);
        }
        let cluster = Arc::clone(self);
        let answer = tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            if !committed {
                pending.plan.commit();
            }
            if pending.plan.options().atomic {
                let failures = pending.plan.failures();
                pending.held = true;
                pending.deadline = Instant::now() + cluster.config.prepare_timeout;
                cluster.pending_lock().insert(request_id, pending);
                return json!({"held": true, "failures": failures});
            }
            cluster.settled(pending, None, revision)
        })
        .await
        .map_err(|err| format!("committing panicked: {err}"));
        self.wake_if_behind();
        answer
    }

    /// Settles a committed plan (keeps it, or with `undo` puts it back),
    /// finishes it and answers its result; a plan kept is applied up to
    /// `revision`.
    fn settled(&self, mut pending: Pending, undo: Option<&str>, revision: i64) -> Value {
        pending.plan.settle(undo);
        let result = self.finish(pending.plan);
        if undo.is_none() {
            self.applied(revision);
        }
        wire::result(&result)
    }

    /// `cluster.settle`: keeps a held (atomic) request, or undoes it; answers
    /// this member's result.
    pub async fn settle(self: &Arc<Self>, params: Value) -> Result<Value, String> {
        let request_id = text(&params, "request_id")?;
        let revision = number(&params, "revision")?;
        let undo = match params.get("undo") {
            None | Some(Value::Null) => None,
            Some(Value::String(because)) => Some(because.clone()),
            Some(_) => return Err("undo must be a string or null".into()),
        };
        let mut pending = match self.take(&request_id, true) {
            Ok(pending) => pending,
            Err(err) => return self.decided(&request_id).await.ok_or(err),
        };
        pending.decided();
        let cluster = Arc::clone(self);
        let span = phase_span(self, "settle", &request_id, &params);
        span.record("zest.outcome", if undo.is_some() { "undone" } else { "kept" });
        let answer = tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            cluster.settled(pending, undo.as_deref(), revision)
        })
        .await
        .map_err(|err| format!("settling panicked: {err}"));
        self.wake_if_behind();
        answer
    }

    /// `cluster.abort`: drops a prepared plan; answers this member's result
    /// (every staged module `rolled_back` with `message`). An abort that
    /// overtakes its prepare is remembered, so the prepare stages nothing.
    pub async fn abort(self: &Arc<Self>, params: Value) -> Result<Value, String> {
        let request_id = text(&params, "request_id")?;
        let message = text(&params, "message")?;
        let reason = text(&params, "reason")?;
        let cause = AbortCause::parse(&reason).ok_or_else(|| {
            let known: Vec<&str> = AbortCause::ALL.iter().map(|cause| cause.as_str()).collect();
            format!("reason `{reason}` is not one of {}", known.join(", "))
        })?;
        let mut pending = match self.take(&request_id, false) {
            Ok(pending) => pending,
            Err(err) => {
                let mut aborted = self.aborted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                aborted.push_back((request_id, cause));
                while aborted.len() > ABORTED_KEPT {
                    aborted.pop_front();
                }
                return Err(err);
            }
        };
        count_member(&request_id, MemberStep::Abort(cause));
        pending.decided();
        let cluster = Arc::clone(self);
        let span = phase_span(self, "abort", &request_id, &params);
        span.record("zest.outcome", cause.as_str());
        let answer = tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            pending.plan.abort(&message);
            let result = cluster.finish(pending.plan);
            wire::result(&result)
        })
        .await
        .map_err(|err| format!("aborting panicked: {err}"));
        self.wake_if_behind();
        answer
    }

    /// Notes fencing token `token`, which a prepare brought or this member
    /// took the lock with, as the newest (`restarted`: even if an older
    /// history's tokens were higher): every plan waiting here for an older
    /// one is decided now, by etcd, as at its deadline (its lock is gone).
    pub(super) fn note_token(self: &Arc<Self>, token: i64, restarted: bool) {
        {
            let mut state = self.state();
            state.newest_token = if restarted { token } else { state.newest_token.max(token) };
        }
        let mut pending = self.pending_lock();
        for (request_id, plan) in pending.iter_mut().filter(|(_, plan)| plan.token < token) {
            tracing::info!(request_id = %request_id, token = plan.token, newer = token,
                "a newer reload came: deciding a prepared one by etcd now");
            // Aborted from here, the deadline's task may be on another thread;
            // it finds the plan gone, or decides it as the new one would.
            if let Some(decider) = plan.decider.take() {
                decider.abort();
            }
            plan.deadline = Instant::now();
            let decider = self.handle.spawn(Arc::clone(self).decide_when_due(request_id.clone())).abort_handle();
            plan.decider = Some(decider);
        }
    }

    /// Waits for a pending plan's deadline; if its coordinator has not decided
    /// by then, etcd decides.
    pub(super) async fn decide_when_due(self: Arc<Self>, request_id: String) {
        loop {
            let deadline = match self.pending_lock().get(&request_id) {
                Some(pending) => pending.deadline,
                None => return,
            };
            tokio::time::sleep_until(deadline.into()).await;
            let (token, due) = match self.pending_lock().get(&request_id) {
                Some(pending) => (pending.token, Instant::now() >= pending.deadline),
                None => return,
            };
            if !due {
                continue;
            }
            let committed = self.store.committed(token).await;
            let decision = match committed {
                Ok(Some(revision)) => Some(Ok(revision)),
                Ok(None) => match self.store.lock_held(token).await {
                    Ok(false) => Some(Err((
                        AbortCause::LeaseLost,
                        "its coordinator released the lock without committing".to_string(),
                    ))),
                    Ok(true) | Err(_) => None,
                },
                Err(_) => None,
            };
            let decision = match decision {
                Some(decision) => decision,
                None => {
                    let mut pending = self.pending_lock();
                    let Some(entry) = pending.get_mut(&request_id) else { return };
                    if entry.extended < MAX_EXTENSIONS {
                        entry.extended += 1;
                        entry.deadline = Instant::now() + self.config.prepare_timeout;
                        continue;
                    }
                    Err((AbortCause::Timeout, "no decision came in time".to_string()))
                }
            };
            let Some(mut pending) = self.pending_lock().remove(&request_id) else { return };
            if decision.is_ok() {
                self.decide(&request_id, None);
            }
            let cluster = Arc::clone(&self);
            let id = request_id.clone();
            // Decided by etcd: a phase of the prepare's trace all the same.
            let phase = if decision.is_ok() { "commit" } else { "abort" };
            let span = traces::phase_span(phase, &request_id, &self.config.node);
            traces::adopt(&span, pending.traceparent.as_deref());
            match &decision {
                Ok(revision) => span.record("zest.revision", revision),
                Err((cause, _)) => span.record("zest.outcome", cause.as_str()),
            };
            let resolved = tokio::task::spawn_blocking(move || {
                let _span = span.enter();
                match decision {
                    Ok(revision) => {
                        tracing::warn!(request_id = %id, revision, "the coordinator committed and went silent: applying on our own");
                        if !pending.held {
                            count_member(&id, MemberStep::Commit);
                            pending.plan.commit();
                        }
                        let answer = cluster.settled(pending, None, revision);
                        cluster.decide(&id, Some(answer));
                    }
                    Err((cause, why)) => {
                        tracing::warn!(request_id = %id, %why, "dropping a prepared reload");
                        if pending.held {
                            pending.plan.settle(Some(&why));
                        } else {
                            count_member(&id, MemberStep::Abort(cause));
                            pending.plan.abort(&format!("not swapped: {why}"));
                        }
                        cluster.finish(pending.plan);
                    }
                }
                cluster.wake.notify_one();
            })
            .await;
            if let Err(err) = resolved {
                tracing::error!(%err, "resolving a prepared reload panicked");
            }
            return;
        }
    }

    /// Applies what the cluster committed for this member, if etcd holds a
    /// commit newer than the last one it applied. Blocks.
    /// Unless `force`, the read is skipped when the watch says nothing newer
    /// than what this member applied was committed.
    pub(super) fn catch_up(&self, force: bool) -> Result<(), String> {
        let request_id = format!("catch-up-{}", self.node.next_request_id());
        let Ok(session) = self.node.session(Duration::from_millis(100), Some(&request_id)) else {
            // A reload runs here now; it will wake us when it is done.
            return Ok(());
        };
        if !force {
            // The reload this member just ran may have applied what woke it.
            let state = self.state();
            if state.desired_seen.is_some_and(|seen| seen <= state.applied) {
                return Ok(());
            }
        }
        let desired = self.handle.block_on(self.store.desired(&self.config.node)).map_err(|err| err.to_string())?;
        {
            let mut state = self.state();
            state.unloaded = Unloaded::of(&desired);
            state.desired_seen = Some(state.desired_seen.unwrap_or(0).max(desired.revision));
            if desired.revision <= state.applied {
                return Ok(());
            }
        }
        let session = session.with_role(Role::Member);
        // What the cluster unloaded while this member was away (or that its
        // configuration loaded at start) goes first.
        let unloaded = Unloaded::of(&desired);
        if unloaded.held_by(&self.node) {
            tracing::info!(revision = desired.revision, "catching up with what the cluster unloaded");
            let span = traces::phase_span("catch_up", &request_id, &self.config.node);
            span.record("zest.revision", desired.revision);
            span.in_scope(|| unloaded.take_out(&self.node, &session, &request_id));
        }
        let mut blueprint = blueprint_of(&desired)?;
        self.localize(&mut blueprint);
        if !self.differs(&blueprint) {
            self.applied(desired.revision);
            return Ok(());
        }
        let sources: Vec<String> = self
            .members()
            .into_iter()
            .filter(|member| member.node != self.config.node)
            .map(|member| member.advertise)
            .collect();
        self.fetch_missing(&blueprint, &sources).map_err(|failure| failure.message)?;
        let telemetry = self.node.telemetry();
        tracing::info!(revision = desired.revision, "catching up with what the cluster committed");
        let span = traces::phase_span("catch_up", &request_id, &self.config.node);
        span.record("zest.revision", desired.revision);
        let result = span.in_scope(|| {
            telemetry.step_since(Role::Member, Instant::now(), Kind::System, "system", &request_id, || {
                session.plan_blueprint(&blueprint).run()
            })
        });
        for failure in &result.errors {
            tracing::error!(target = %failure.target, reason = %failure.reason, message = %failure.message,
                "catching up with the cluster");
        }
        self.applied(desired.revision);
        Ok(())
    }

    /// Points the manifests of `blueprint` at this member's own directory of
    /// each app it has loaded (keeping the coordinator's modules and
    /// processes), so that what runs here locally — a `nodes: "local"` reload,
    /// SIGHUP — reads this member's files, not paths of the coordinator's.
    fn localize(&self, blueprint: &mut Blueprint) {
        for app in blueprint.units.iter_mut().filter_map(|unit| unit.app.as_mut()) {
            // Its own directory of the app: loaded, or unloaded since it started.
            let local = self.node.app_manifest(&app.name).or_else(|| self.node.unloaded_app_manifest(&app.name));
            let Some(local) = local else { continue };
            if local.dir == app.dir {
                continue;
            }
            for module in &mut app.modules {
                if let Ok(relative) = module.path.strip_prefix(&app.dir) {
                    module.path = local.dir.join(relative);
                }
            }
            app.dir = local.dir;
            app.file = local.file;
        }
    }

    /// Whether this node serves anything else than `blueprint` says.
    fn differs(&self, blueprint: &Blueprint) -> bool {
        let extensions: Vec<_> = self.node.status().extensions.into_iter().map(|e| e.record).collect();
        blueprint.builds().any(|build| !self.node.runs_build(&build.module, &build.sha256))
            || blueprint.units.iter().any(|unit| {
                unit.app.as_ref().is_some_and(|app| self.node.app_manifest(&app.name).as_ref() != Some(app))
                    || unit.extension.as_ref().is_some_and(|record| !extensions.contains(record))
            })
    }
}

/// What the cluster unloaded (`desired/base/unloaded/`) and no override of
/// this member loads again: the names of the apps and extensions a member
/// does not load from its own configuration or records, and takes out when
/// it holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unloaded {
    pub apps: BTreeSet<String>,
    pub extensions: BTreeSet<String>,
}

impl Unloaded {
    pub(crate) fn of(desired: &Desired) -> Unloaded {
        Unloaded {
            apps: desired.unloaded_apps.keys().cloned().collect(),
            extensions: desired.unloaded_extensions.keys().cloned().collect(),
        }
    }

    /// The recorded extensions of `node` named here: `(name, path)`.
    fn extensions_held(&self, node: &Node) -> Vec<(String, String)> {
        node.status()
            .extensions
            .into_iter()
            .filter(|extension| self.extensions.contains(&extension.record.name))
            .map(|extension| (extension.record.name, extension.record.path.display().to_string()))
            .collect()
    }

    /// Whether `node` holds any app or extension named here.
    pub fn held_by(&self, node: &Node) -> bool {
        self.apps.iter().any(|app| node.app_manifest(app).is_some()) || !self.extensions_held(node).is_empty()
    }

    /// Unloads from `node`, under `session`, every app and extension named
    /// here that it holds, each as one telemetry operation and logged at info
    /// with its name (a failure at error).
    pub fn take_out(&self, node: &Node, session: &Session, request_id: &str) {
        let run = |kind: Kind, target: &str, plan: &dyn Fn() -> Plan| {
            let result =
                node.telemetry().step_since(Role::Member, Instant::now(), kind, target, request_id, || plan().run());
            for failure in &result.errors {
                tracing::error!(target = %failure.target, reason = %failure.reason, message = %failure.message,
                    "unloading what the cluster unloaded");
            }
        };
        for app in self.apps.iter().filter(|app| node.app_manifest(app).is_some()) {
            tracing::info!(app = %app, "the cluster unloaded this app (system.unload): unloading it here");
            run(Kind::App, app, &|| session.plan_unload(&UnloadRequest::new(UnloadTarget::App(app.clone()))));
        }
        for (name, path) in self.extensions_held(node) {
            tracing::info!(extension = %name, path = %path,
                "the cluster unloaded this extension (system.unload): unloading it here");
            run(Kind::Extension, &path, &|| session.plan_unload_extension_named(&name, &path));
        }
    }
}

fn build_ref(module: &str, build: &DesiredBuild) -> BuildRef {
    BuildRef {
        module: module.to_string(),
        sha256: build.sha256.clone(),
        vsn: build.vsn.clone(),
        source: build.source.clone().into(),
    }
}

/// What the cluster committed for a member, as a blueprint: one unit per app
/// (its manifest and the builds of its modules), per extension, and per module
/// that belongs to neither.
fn blueprint_of(desired: &Desired) -> Result<Blueprint, String> {
    let mut units = Vec::new();
    let mut claimed = BTreeSet::new();
    for (name, value) in &desired.apps {
        let manifest =
            wire::parse_manifest(value).map_err(|err| format!("the desired manifest of app {name}: {err}"))?;
        let builds = manifest
            .modules
            .iter()
            .filter_map(|module| desired.modules.get(&module.name).map(|build| build_ref(&module.name, build)))
            .collect();
        claimed.extend(manifest.modules.iter().map(|module| module.name.clone()));
        units.push(BlueprintUnit {
            kind: Kind::App,
            target: name.clone(),
            builds,
            app: Some(manifest),
            extension: None,
            unloads: Vec::new(),
        });
    }
    for (name, value) in &desired.extensions {
        let record = wire::parse_record(value).map_err(|err| format!("the desired extension {name}: {err}"))?;
        let builds = desired.modules.get(name).map(|build| build_ref(name, build)).into_iter().collect();
        claimed.insert(name.clone());
        let target = record.path.display().to_string();
        let extension = Some(record);
        units.push(BlueprintUnit { kind: Kind::Extension, target, builds, app: None, extension, unloads: Vec::new() });
    }
    for (name, build) in &desired.modules {
        if !claimed.contains(name) {
            let builds = vec![build_ref(name, build)];
            let target = name.clone();
            let unloads = Vec::new();
            units.push(BlueprintUnit { kind: Kind::Module, target, builds, app: None, extension: None, unloads });
        }
    }
    Ok(Blueprint {
        kind: Kind::System,
        target: "system".into(),
        units,
        code_change: Vec::new(),
        force: false,
        atomic: false,
        // What the cluster committed was checked where it was staged.
        allow_breaking: true,
    })
}
