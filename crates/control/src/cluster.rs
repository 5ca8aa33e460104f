//! The cluster (CONTRACT.md §10): nodes that share a `[cluster]` section,
//! coordinated through etcd, so that one `system.reload` upgrades every member
//! or none.
//!
//! The cluster is a layer above the runtime's plan API (`zest_runtime::Plan`):
//! the runtime knows how to stage, commit, settle and finish a plan on one
//! node; this layer drives those phases on every member, with etcd deciding
//! between prepare and commit:
//!
//! ```text
//!  coordinator (got the request)           etcd                     every other target
//!  ─────────────────────────────           ────                     ──────────────────
//!  take the lock (fencing token) ────────▶ lock on its lease
//!  read members, stage (build, compile)
//!  cluster.prepare(blueprint) ───────────────────────────────────▶  fetch builds by sha256, stage
//!                            ◀─────────────────────────────────────  prepared (or not: abort all)
//!  commit: one txn guarded by the token ─▶ desired state, commits/<id>
//!  cluster.commit ───────────────────────────────────────────────▶  swap, migrate, purge
//!  (and the same locally)    ◀─────────────────────────────────────  its result: a `node` child
//!  release the lock ─────────────────────▶
//! ```
//!
//! - `cluster/etcd.rs`: the keys, the member's lease, the lock, the desired state;
//! - `cluster/peer.rs`: calls to the other members and fetching their builds;
//! - `cluster/coordinator.rs`: a reload this member received;
//! - `cluster/member.rs`: this member as a target — plans prepared and waiting
//!   for the decision — and catching up with what the cluster committed.
//!
//! A standalone node has no `Cluster`, and none of this is on its path.

mod coordinator;
pub mod etcd;
mod member;
pub mod peer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use zest_runtime::{Node, ReloadRequest, ReloadResult, RollbackRequest, UnloadRequest};

use crate::config::ClusterConfig;
use crate::wire::Nodes;
use etcd::{EtcdError, EtcdLock, LeaseCell, MemberRecord, Store};
use member::Pending;
pub use member::Unloaded;
use peer::Peers;

pub use coordinator::Refusal;

/// How often a member checks etcd for commits it missed (besides its watch).
const CATCH_UP_EVERY: Duration = Duration::from_secs(5);

/// This member of a cluster.
pub struct Cluster {
    config: ClusterConfig,
    node: Arc<Node>,
    store: Store,
    peers: Peers,
    lease: Arc<LeaseCell>,
    lock: EtcdLock,
    /// Where the other members reach this one.
    advertise: String,
    /// Tells this member's earlier incarnations (same data directory) from
    /// another process that claims the same id.
    instance: String,
    since: String,
    state: Mutex<State>,
    /// Plans prepared for a coordinator, by request id, until it decides.
    pending: Mutex<HashMap<String, Pending>>,
    /// Requests aborted before this member prepared them (newest last).
    aborted: Mutex<std::collections::VecDeque<(String, zest_runtime::telemetry::AbortCause)>>,
    /// Requests this member applied on its own (their coordinator went silent
    /// after committing), with its result once done (newest last): a late
    /// `cluster.commit` is answered with it.
    decided: Mutex<std::collections::VecDeque<(String, Option<Value>)>>,
    /// Wakes the catch-up loop (a change in etcd, a request resolved).
    wake: tokio::sync::Notify,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.config.name).field("node", &self.config.node).finish()
    }
}

#[derive(Debug, Default)]
struct State {
    /// etcd answers, and this member holds a lease.
    available: bool,
    /// Why not, when it is not.
    problem: Option<String>,
    /// The revision of the last commit this member applied.
    applied: i64,
    /// A `nodes: "local"` reload changed this member alone.
    diverged: bool,
    members: Vec<MemberRecord>,
    /// The newest commit concerning this member that the watch reported or a
    /// read found (`None`: unknown, read etcd to know).
    desired_seen: Option<i64>,
    /// The newest fencing token a `cluster.prepare` brought here: the lock
    /// of every older one is gone (`member.rs`, "Stale prepares").
    newest_token: i64,
    /// What the cluster unloaded, as this member last read it.
    unloaded: Unloaded,
}

/// Why a member could not join its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Joining {
    Unavailable(String),
    /// Another process holds this member id.
    Duplicate(MemberRecord),
}

impl Cluster {
    /// Joins the cluster: connects to etcd, registers this member (refusing to
    /// start when another live process holds its id), and starts the loops that
    /// keep its lease, watch the cluster and catch up with its commits. When
    /// etcd cannot be reached the member starts anyway, serving its own code,
    /// and joins by itself once etcd answers.
    pub async fn start(
        config: ClusterConfig,
        node: Arc<Node>,
        advertise: String,
        token: String,
        data_dir: &Path,
    ) -> Result<Arc<Cluster>, String> {
        let store = Store::connect(&config.etcd, &config.name).await?;
        let instance = instance_id(data_dir)?;
        let lease = Arc::new(LeaseCell::default());
        let handle = tokio::runtime::Handle::current();
        let lock = EtcdLock {
            store: store.clone(),
            lease: Arc::clone(&lease),
            node: config.node.clone(),
            handle: handle.clone(),
        };
        let cluster = Arc::new(Cluster {
            since: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            peers: Peers::new(token),
            config,
            node,
            store,
            lease,
            lock,
            advertise,
            instance,
            state: Mutex::new(State::default()),
            pending: Mutex::new(HashMap::new()),
            aborted: Mutex::new(std::collections::VecDeque::new()),
            decided: Mutex::new(std::collections::VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            handle,
        });
        match cluster.join(&cluster.store).await {
            Ok(()) => {}
            Err(Joining::Duplicate(other)) => {
                return Err(format!(
                    "a member with id `{}` is already alive in cluster `{}` (at {}, since {}); give this node another cluster.node",
                    other.node, cluster.config.name, other.advertise, other.since
                ));
            }
            Err(Joining::Unavailable(problem)) => {
                tracing::warn!(%problem, "etcd is unreachable: serving this node's own code until it answers");
                cluster.set_unavailable(problem);
            }
        }
        // The lease on a thread and runtime of its own, with its own etcd
        // clients: however busy this node's runtime is, renewals go out.
        let keeper = Arc::clone(&cluster);
        std::thread::Builder::new()
            .name("zest-cluster-lease".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(err) => return tracing::error!(%err, "cannot start the cluster lease's runtime"),
                };
                runtime.block_on(async move {
                    match Store::connect(&keeper.config.etcd, &keeper.config.name).await {
                        Ok(store) => keeper.keep_lease(store).await,
                        Err(err) => tracing::error!(%err, "cannot keep the cluster lease"),
                    }
                });
            })
            .map_err(|err| format!("cannot start the cluster lease's thread: {err}"))?;
        tokio::spawn(Arc::clone(&cluster).watch());
        tokio::spawn(Arc::clone(&cluster).catch_up_loop());
        Ok(cluster)
    }

    pub fn node_id(&self) -> &str {
        &self.config.node
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_unavailable(&self, problem: String) {
        let mut state = self.state();
        state.available = false;
        state.problem = Some(problem);
    }

    fn record(&self) -> MemberRecord {
        MemberRecord {
            node: self.config.node.clone(),
            advertise: self.advertise.clone(),
            since: self.since.clone(),
            instance: self.instance.clone(),
            lease: 0,
        }
    }

    /// Registers this member on a fresh lease. An earlier incarnation of this
    /// member (a process killed before its lease expired) is replaced at once;
    /// another live process with this id is waited for (its lease may be
    /// expiring) for one lease TTL and a second, then refused.
    async fn join(&self, store: &Store) -> Result<(), Joining> {
        let unavailable = |err: EtcdError| Joining::Unavailable(err.to_string());
        let give_up = Instant::now() + self.config.lease_ttl + Duration::from_secs(1);
        loop {
            let lease = store.grant(self.config.lease_ttl).await.map_err(unavailable)?;
            let existing = match store.register(&self.record(), lease).await {
                Ok(existing) => existing,
                Err(err) => {
                    let _ = store.revoke(lease).await;
                    return Err(unavailable(err));
                }
            };
            let Some(existing) = existing else {
                self.lease.set(Some(lease));
                let mut state = self.state();
                state.available = true;
                state.problem = None;
                drop(state);
                tracing::info!(node = %self.config.node, cluster = %self.config.name, "joined the cluster");
                return Ok(());
            };
            let _ = store.revoke(lease).await;
            if existing.instance == self.instance {
                tracing::info!(node = %self.config.node, "replacing this member's previous incarnation");
                let _ = store.revoke(existing.lease).await;
                continue;
            }
            if Instant::now() >= give_up {
                return Err(Joining::Duplicate(existing));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Keeps this member's lease alive through `store` (clients of this
    /// task's own runtime), renewing it every quarter of its TTL; when it is
    /// lost (etcd says so, or no renewal was answered for a whole TTL), joins
    /// again on a new one.
    async fn keep_lease(self: Arc<Self>, store: Store) {
        let ttl = self.config.lease_ttl;
        let renewed_at = std::sync::Mutex::new(Instant::now());
        loop {
            let Some(lease) = self.lease.get() else {
                match self.join(&store).await {
                    Ok(()) => {
                        *renewed_at.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                        // Commits may have been made while it was away: read them.
                        self.state().desired_seen = None;
                        self.wake.notify_one();
                    }
                    Err(Joining::Unavailable(problem)) => {
                        self.set_unavailable(problem);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(Joining::Duplicate(other)) => {
                        let problem =
                            format!("member id `{}` is held by another process at {}", other.node, other.advertise);
                        tracing::error!(%problem, "cannot rejoin the cluster");
                        self.set_unavailable(problem);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            };
            let renewed = store
                .keep_alive(lease, ttl / 4, || {
                    *renewed_at.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                    let mut state = self.state();
                    if !state.available {
                        state.available = true;
                        state.problem = None;
                        self.wake.notify_one();
                    }
                })
                .await;
            match renewed {
                // etcd says the lease is gone: join again.
                Ok(()) => {
                    tracing::warn!(lease, "this member's lease expired; joining again");
                    self.lease.set(None);
                }
                Err(err) => {
                    let since = renewed_at.lock().unwrap_or_else(PoisonError::into_inner).elapsed();
                    tracing::debug!(%err, ?since, "renewing the lease failed; trying another endpoint");
                    if since > ttl {
                        // etcd has expired it by now, unless it could not
                        // (then it is extended when etcd is back, and the
                        // member key found at join is this member's: replaced).
                        self.set_unavailable(err.to_string());
                        self.lease.set(None);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    /// Keeps the member list current and wakes the catch-up loop whenever the
    /// desired state changes.
    async fn watch(self: Arc<Self>) {
        loop {
            let watched = async {
                let (members, revision) = self.store.members().await?;
                let mine = format!("desired/revision/{}", self.config.node);
                {
                    let mut state = self.state();
                    state.members = members;
                    // What happened before the watch is unknown: read it.
                    state.desired_seen = None;
                }
                let mut watch = self.store.watch(revision + 1).await?;
                self.wake.notify_one();
                loop {
                    let changes = watch.next().await?;
                    if changes.iter().any(|change| change.key.starts_with("members/")) {
                        let (members, _) = self.store.members().await?;
                        self.state().members = members;
                    }
                    let mut state = self.state();
                    for change in &changes {
                        if !change.deleted && (change.key == "desired/revision/base" || change.key == mine) {
                            state.desired_seen = state.desired_seen.map(|seen| seen.max(change.mod_revision));
                        }
                    }
                    // An unloaded mark changed: read the desired state again,
                    // so that status shows the marks as they are.
                    if changes.iter().any(|change| change.key.starts_with("desired/base/unloaded/")) {
                        state.desired_seen = None;
                    }
                    drop(state);
                    if changes.iter().any(|change| change.key.starts_with("desired/")) {
                        self.wake.notify_one();
                    }
                }
            };
            let err: EtcdError = match watched.await {
                Ok(()) => continue,
                Err(err) => err,
            };
            tracing::debug!(%err, "the cluster watch broke; watching again");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn catch_up_loop(self: Arc<Self>) {
        loop {
            let woken = tokio::select! {
                () = self.wake.notified() => true,
                () = tokio::time::sleep(CATCH_UP_EVERY) => false,
            };
            {
                let state = self.state();
                if !state.available {
                    continue;
                }
                // Woken by a change this member applied already (its own
                // commit, or the watch's event for it): nothing to read.
                if woken && state.desired_seen.is_some_and(|seen| seen <= state.applied) {
                    continue;
                }
            }
            // A plan prepared here waits for its decision: the watch's event
            // for that commit usually comes before the coordinator's
            // `cluster.commit`, and catching up now would only wait for the
            // plan's session. Whatever ends the plan (commit, settle, abort,
            // its deadline) wakes this loop again.
            if woken && !self.pending_lock().is_empty() {
                continue;
            }
            let cluster = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || cluster.catch_up(!woken)).await {
                Ok(Ok(())) => {}
                Ok(Err(problem)) => tracing::warn!(%problem, "cannot catch up with the cluster yet"),
                Err(err) => tracing::error!(%err, "catching up with the cluster panicked"),
            }
        }
    }

    /// Leaves the cluster (a clean shutdown): the member key goes at once,
    /// and so does its `known/` record, so that reloads stop reporting it.
    pub async fn leave(&self) {
        if let Err(err) = self.store.forget(&self.config.node).await {
            tracing::warn!(%err, "cannot remove this member's known record: reloads report it skipped until it rejoins");
        }
        if let Some(lease) = self.lease.get() {
            self.lease.set(None);
            let _ = self.store.revoke(lease).await;
        }
    }

    /// Runs one `system.reload` on the cluster, as its coordinator. Blocks
    /// (the whole two-phase reload): call it from a blocking thread.
    pub fn reload(self: &Arc<Self>, request: &ReloadRequest, nodes: &Nodes) -> Result<ReloadResult, Refusal> {
        if nodes != &Nodes::Local && (request.options.trial.is_some() || request.options.canary.is_some()) {
            return Err(Refusal::InvalidParams(
                "trial and canary run on one member of a cluster: pass nodes: \"local\"".into(),
            ));
        }
        coordinator::reload(self, coordinator::Work::Reload(request), nodes)
    }

    /// Runs one `system.rollback` on the cluster, as its coordinator: every
    /// target goes back to the builds this member's history names, by the two
    /// phases of a reload. Blocks.
    pub fn rollback(self: &Arc<Self>, request: &RollbackRequest, nodes: &Nodes) -> Result<ReloadResult, Refusal> {
        coordinator::reload(self, coordinator::Work::Rollback(request), nodes)
    }

    /// Runs one `system.unload` on the cluster, as its coordinator: every
    /// member takes the app or extension out, by the two phases of a reload,
    /// and the desired state no longer holds it. Blocks.
    pub fn unload(self: &Arc<Self>, request: &UnloadRequest) -> Result<ReloadResult, Refusal> {
        coordinator::reload(self, coordinator::Work::Unload(request), &Nodes::All)
    }

    /// The `cluster` block of `system.status`.
    pub fn status(&self) -> Value {
        let state = self.state();
        let members: Vec<Value> =
            state.members.iter().map(|m| json!({"node": m.node, "advertise": m.advertise, "since": m.since})).collect();
        let mut status = json!({
            "name": self.config.name,
            "node": self.config.node,
            "advertise": self.advertise,
            "members": members,
            "revision": state.applied,
            "available": state.available,
            "diverged": state.diverged,
        });
        if let Some(problem) = &state.problem {
            status["problem"] = json!(problem);
        }
        status["unloaded"] = json!({"apps": state.unloaded.apps, "extensions": state.unloaded.extensions});
        status
    }

    /// Wakes the catch-up loop when the watch saw a commit for this member
    /// newer than the last it applied, or cannot say: what the end of a
    /// reload leaves to read. (A wake-up for nothing would find the same and
    /// go back to sleep, at the cost of waking a thread on every member.)
    fn wake_if_behind(&self) {
        let behind = {
            let state = self.state();
            state.desired_seen.is_none_or(|seen| seen > state.applied)
        };
        if behind {
            self.wake.notify_one();
        }
    }

    /// Notes that this member applied the commit at `revision`.
    fn applied(&self, revision: i64) {
        let mut state = self.state();
        state.applied = state.applied.max(revision);
        state.diverged = false;
    }

    fn members(&self) -> Vec<MemberRecord> {
        self.state().members.clone()
    }
}

/// What cluster `config` unloaded (`system.unload`) and no override of this
/// member loads again, read before the member loads its configured apps and
/// recorded extensions: it loads none of these. Bounded by the etcd call's
/// timeout; an error when etcd cannot say (the member then loads them, and
/// its catch-up takes them out once etcd answers). Call it outside any async
/// runtime (it runs one of its own).
pub fn unloaded_before_start(config: &ClusterConfig) -> Result<Unloaded, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start a runtime to read etcd: {err}"))?;
    runtime.block_on(async {
        let store = Store::connect(&config.etcd, &config.name).await?;
        let desired = store.desired(&config.node).await.map_err(|err| err.to_string())?;
        Ok(Unloaded::of(&desired))
    })
}

/// Unloads, before the node serves, the extensions its records restored
/// that the cluster unloaded (`unloaded_before_start`), and any app of
/// `unloaded` it holds, as a member's catch-up does. Waits for the lock.
pub fn take_out_before_start(node: &Node, unloaded: &Unloaded) -> Result<(), String> {
    if !unloaded.held_by(node) {
        return Ok(());
    }
    let request_id = format!("start-{}", node.next_request_id());
    let session = node
        .session(Duration::from_secs(60), Some(&request_id))
        .map_err(|err| format!("cannot take the reload lock: {err}"))?;
    unloaded.take_out(node, &session.with_role(zest_runtime::telemetry::Role::Member), &request_id);
    Ok(())
}

/// This data directory's member instance id, made once and kept.
fn instance_id(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join("cluster.instance");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|err| format!("no randomness for the member instance id: {err}"))?;
    let id = hex::encode(bytes);
    std::fs::write(&path, format!("{id}\n")).map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    Ok(id)
}
