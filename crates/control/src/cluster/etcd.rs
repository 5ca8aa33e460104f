//! etcd, the cluster's one source of truth (CONTRACT.md §10): the key layout,
//! the member's lease, the reload lock, and the desired state.
//!
//! Every key lives under `/zest/<cluster>/`:
//!
//! | key | value | written |
//! |---|---|---|
//! | `members/<node>` | `{"node", "advertise", "since", "instance"}` | on the member's lease, at start |
//! | `known/<node>` | `{"node", "advertise", "since"}` | on no lease, at start (with `members/<node>`); deleted when the member stops cleanly: the members a reload must reach or report |
//! | `lock` | `{"node", "since"}` | on the holder's lease; its create revision is the fencing token |
//! | `desired/base/module/<name>` | `{"sha256", "vsn", "source"}` | by a commit with `nodes: "all"` |
//! | `desired/base/app/<name>` | the app's manifest as the coordinator read it | by a commit with `nodes: "all"` |
//! | `desired/base/extension/<name>` | the extension's record | by a commit with `nodes: "all"` |
//! | `desired/base/unloaded/app/<name>` | the app's manifest when it was unloaded | by the commit of a `system.unload` of the app; deleted by a later commit for everyone that loads the app (a reload, a rollback) |
//! | `desired/base/unloaded/extension/<name>` | the extension's record when it was unloaded | the same, for an extension |
//! | `desired/override/<kind>/<name>/<node>` | the same, for one member | by a commit listing members (a commit for everyone drops a key's overrides with one prefix delete, however many members) |
//! | `desired/revision/base`, `desired/revision/<node>` | `{"request_id"}` | by every commit: their mod revisions are the last commit for everyone, for one member |
//! | `commits/<token>` | `{"request_id", "nodes", "atomic"}` | by every commit, under its fencing token: how a member that prepared learns the outcome |
//!
//! A commit is one transaction guarded by the fencing token: it applies only
//! while the coordinator still holds the lock it took. Every call here is
//! bounded ([`OP_TIMEOUT`]); a call that cannot reach etcd is
//! [`EtcdError::Unavailable`].
//!
//! Every configured endpoint is used: the store keeps one client per endpoint
//! and sends each call to the one that answered last; a call that fails there
//! (refused, reset, silent for [`ATTEMPT_TIMEOUT`], or a member without a
//! leader — every request requires one) is sent to the next, until one
//! answers or [`OP_TIMEOUT`] has passed. The writes are safe to send twice:
//! the lock's value names its request, so a lock taken by an attempt whose
//! answer was lost is recognised as taken; a commit is guarded by its fencing
//! token and writes the same values again.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use serde_json::{json, Value};
use zest_runtime::lock::Lease;
use zest_runtime::{LockError, LockGuard, ReloadLock};

/// The longest one etcd call may take, over every endpoint it tries, before
/// etcd counts as unreachable.
pub const OP_TIMEOUT: Duration = Duration::from_millis(2000);

/// The longest one attempt of a call may wait for one endpoint when there are
/// others to try (a stopped or partitioned etcd member accepts connections
/// and never answers).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(600);

/// The pause before a call tries every endpoint again (an election runs).
const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// How often a lock whose release failed is released again.
const RELEASE_RETRY: Duration = Duration::from_millis(250);

/// Why an etcd call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd is unreachable: {0}")]
    Unavailable(String),
    /// The lock (and the lease under it) was lost before the write.
    #[error("the reload lock was lost (its lease expired) before the commit")]
    LeaseLost,
    #[error("etcd holds a value zest cannot read at {key}: {problem}")]
    Corrupt { key: String, problem: String },
}

/// One member as `members/<node>` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub node: String,
    pub advertise: String,
    pub since: String,
    pub instance: String,
    /// The lease the key lives on.
    pub lease: i64,
}

/// What a commit records for one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredBuild {
    pub sha256: String,
    pub vsn: String,
    pub source: String,
}

/// What the cluster committed for one member: the base with its overrides
/// over it, and the revision of the last commit that concerned it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub modules: BTreeMap<String, DesiredBuild>,
    /// Manifests, as JSON (`wire::manifest`).
    pub apps: BTreeMap<String, Value>,
    /// Extension records, as JSON.
    pub extensions: BTreeMap<String, Value>,
    /// Apps the cluster unloaded (`desired/base/unloaded/app/`), with the
    /// manifest each had, unless this member's override loads it again.
    pub unloaded_apps: BTreeMap<String, Value>,
    /// Extensions the cluster unloaded, with the record each had, unless this
    /// member's override loads it again.
    pub unloaded_extensions: BTreeMap<String, Value>,
    /// The last commit for everyone or for this member (0: none yet).
    pub revision: i64,
}

/// The keys one commit writes, and what they held before (to undo it).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// `(kind, name) → value`: `kind` is `module`, `app` or `extension`.
    pub puts: Vec<(&'static str, String, Value)>,
    /// `(kind, name)` removed from the base, overrides included (modules an
    /// app's manifest dropped); only by a commit for everyone.
    pub deletes: Vec<(&'static str, String)>,
    /// `(kind, name) → value`: the apps and extensions an unload took out,
    /// marked `desired/base/unloaded/<kind>/<name>` (only by a commit for
    /// everyone). A commit for everyone that puts an app or extension clears
    /// its mark.
    pub unloaded: Vec<(&'static str, String, Value)>,
}

impl Changes {
    /// The unloaded marks this commit writes or clears (only by a commit for
    /// everyone): those it writes, and those of every app and extension it puts.
    fn marks(&self) -> impl Iterator<Item = (&'static str, &String)> + '_ {
        let written = self.unloaded.iter().map(|(kind, name, _)| (*kind, name));
        let cleared = self.puts.iter().filter(|(kind, ..)| *kind != "module").map(|(kind, name, _)| (*kind, name));
        written.chain(cleared)
    }
}

/// The cluster's keys in etcd, through one client per endpoint.
#[derive(Clone)]
pub struct Store {
    endpoints: Arc<Endpoints>,
    prefix: String,
}

struct Endpoints {
    clients: Vec<(String, Client)>,
    /// The endpoint that answered last: the first one a call tries.
    current: AtomicUsize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn unavailable(err: impl std::fmt::Display) -> EtcdError {
    EtcdError::Unavailable(err.to_string())
}

/// Whether an error says this endpoint could not serve the call (another
/// endpoint may), rather than that etcd refused it.
fn is_endpoint_failure(err: &etcd_client::Error) -> bool {
    match err {
        // gRPC codes: cancelled 1, unknown 2, deadline exceeded 4, resource
        // exhausted 8, aborted 10, internal 13, unavailable 14 (etcd's "no
        // leader", "leader changed", a refused connection).
        etcd_client::Error::GRpcStatus(status) => matches!(i32::from(status.code()), 1 | 2 | 4 | 8 | 10 | 13 | 14),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::WatchError(_) | etcd_client::Error::LeaseKeepAliveError(_) => true,
        _ => false,
    }
}

fn parse_holder(value: &[u8]) -> Option<Value> {
    serde_json::from_slice(value).ok()
}
fn parse(key: &[u8], value: &[u8]) -> Result<Value, EtcdError> {
    serde_json::from_slice(value)
        .map_err(|err| EtcdError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), problem: err.to_string() })
}

impl Store {
    /// Clients of `endpoints` for cluster `name`. Connecting is lazy: this
    /// succeeds whether or not etcd is up.
    pub async fn connect(endpoints: &[String], name: &str) -> Result<Store, String> {
        if endpoints.is_empty() {
            return Err("no etcd endpoint is configured".into());
        }
        let mut clients = Vec::new();
        for endpoint in endpoints {
            let options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(OP_TIMEOUT)
                .with_keep_alive(Duration::from_millis(1000), Duration::from_millis(1000))
                .with_keep_alive_while_idle(true)
                // A member cut from its leader answers at once that it has none.
                .with_require_leader(true);
            let client = Client::connect([endpoint], Some(options))
                .await
                .map_err(|err| format!("cannot use the etcd endpoint {endpoint}: {err}"))?;
            clients.push((endpoint.clone(), client));
        }
        let endpoints = Arc::new(Endpoints { clients, current: AtomicUsize::new(0) });
        Ok(Store { endpoints, prefix: format!("/zest/{name}/") })
    }

    /// Runs `call` on the endpoint that answered last, then on the next ones
    /// while it fails there, until one answers or [`OP_TIMEOUT`] has passed.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, EtcdError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_indexed(call).await.map(|(value, _)| value)
    }

    /// As [`Store::call`]; also says which endpoint answered.
    async fn call_indexed<T, F, Fut>(&self, mut call: F) -> Result<(T, usize), EtcdError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let clients = &self.endpoints.clients;
        let deadline = Instant::now() + OP_TIMEOUT;
        let first = self.endpoints.current.load(Ordering::Relaxed);
        let mut problems: Vec<String> = Vec::new();
        for attempt in 0.. {
            let index = (first + attempt) % clients.len();
            if attempt > 0 && index == first {
                tokio::time::sleep(ROUND_PAUSE.min(deadline.saturating_duration_since(Instant::now()))).await;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let wait = if clients.len() > 1 { left.min(ATTEMPT_TIMEOUT) } else { left };
            let (endpoint, client) = &clients[index];
            match tokio::time::timeout(wait, call(client.clone())).await {
                Ok(Ok(value)) => {
                    if index != first {
                        self.endpoints.current.store(index, Ordering::Relaxed);
                        tracing::info!(endpoint, "etcd answers through this endpoint now");
                    }
                    return Ok((value, index));
                }
                Ok(Err(err)) if !is_endpoint_failure(&err) => return Err(unavailable(err)),
                Ok(Err(err)) => problems.push(format!("{endpoint}: {err}")),
                Err(_) => problems.push(format!("{endpoint}: no answer within {} ms", wait.as_millis())),
            }
            // The next call starts at the next endpoint too.
            self.pass_over(index);
        }
        problems.dedup();
        let last: Vec<&String> = problems.iter().rev().take(clients.len()).collect();
        let said: Vec<&str> = last.into_iter().rev().map(String::as_str).collect();
        Err(EtcdError::Unavailable(format!(
            "no endpoint answered within {} ms ({})",
            OP_TIMEOUT.as_millis(),
            said.join("; ")
        )))
    }

    /// Makes calls start after endpoint `index` (it failed), unless another
    /// call moved on already.
    fn pass_over(&self, index: usize) {
        let next = (index + 1) % self.endpoints.clients.len();
        let _ = self.endpoints.current.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    async fn get(&self, key: String, options: Option<GetOptions>) -> Result<etcd_client::GetResponse, EtcdError> {
        self.call(|mut client| {
            let (key, options) = (key.clone(), options.clone());
            async move { client.get(key, options).await }
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, EtcdError> {
        self.call(|mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await
    }

    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A lease of `ttl` (rounded up to whole seconds, etcd's unit).
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let seconds = ttl.as_millis().div_ceil(1000).max(1) as i64;
        Ok(self.call(|mut client| async move { client.lease_grant(seconds, None).await }).await?.id())
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call(|mut client| async move { client.lease_revoke(lease).await }).await.map(|_| ())
    }

    /// Keeps `lease` alive until it is lost: calls `alive` after each renewal
    /// and returns when etcd says the lease is gone (`Ok`) or cannot be reached.
    /// A renewal not answered within `every` ends it too (the caller opens
    /// another, which may go to another endpoint), so that one silent
    /// endpoint cannot cost the lease.
    pub async fn keep_alive(&self, lease: i64, every: Duration, alive: impl Fn()) -> Result<(), EtcdError> {
        let ((mut keeper, mut stream), index) =
            self.call_indexed(|mut client| async move { client.lease_keep_alive(lease).await }).await?;
        let renewals = async {
            // A first renewal at once: the lease may have gone while no stream was open.
            keeper.keep_alive().await.map_err(unavailable)?;
            let mut renewed = false;
            loop {
                if renewed {
                    tokio::time::sleep(every).await;
                    keeper.keep_alive().await.map_err(unavailable)?;
                }
                renewed = true;
                match tokio::time::timeout(every.min(OP_TIMEOUT), stream.message()).await {
                    Ok(Ok(Some(response))) if response.ttl() > 0 => alive(),
                    Ok(Ok(Some(_))) => return Ok(()),
                    Ok(Ok(None)) => return Err(EtcdError::Unavailable("the keep-alive stream ended".into())),
                    Ok(Err(err)) => return Err(unavailable(err)),
                    Err(_) => return Err(EtcdError::Unavailable("no keep-alive answer".into())),
                }
            }
        };
        let ended = renewals.await;
        if ended.is_err() {
            // Renew through another endpoint next.
            self.pass_over(index);
        }
        ended
    }

    /// Writes `members/<node>` on `lease` unless the key exists; returns the
    /// member already there otherwise.
    pub async fn register(&self, record: &MemberRecord, lease: i64) -> Result<Option<MemberRecord>, EtcdError> {
        let key = self.key(&format!("members/{}", record.node));
        let value = json!({"node": record.node, "advertise": record.advertise, "since": record.since, "instance": record.instance});
        let known = json!({"node": record.node, "advertise": record.advertise, "since": record.since});
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(key.clone(), value.to_string(), Some(PutOptions::new().with_lease(lease))),
                TxnOp::put(self.key(&format!("known/{}", record.node)), known.to_string(), None),
            ])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(None);
        }
        // The read runs in the same transaction as the compare that failed, so
        // the key is there.
        let existing = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(member_of),
            _ => None,
        });
        match existing.transpose()? {
            // An earlier attempt of this very call wrote it (its answer was lost).
            Some(member) if member.lease == lease && member.instance == record.instance => Ok(None),
            Some(member) => Ok(Some(member)),
            None => Err(EtcdError::Unavailable("the member key vanished mid-transaction".into())),
        }
    }

    /// Every member, sorted by id, and the revision of the read.
    pub async fn members(&self) -> Result<(Vec<MemberRecord>, i64), EtcdError> {
        let response = self.get(self.key("members/"), Some(GetOptions::new().with_prefix())).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut members = response.kvs().iter().map(member_of).collect::<Result<Vec<_>, _>>()?;
        members.sort_by(|a, b| a.node.cmp(&b.node));
        Ok((members, revision))
    }

    /// The live members (as [`Store::members`]) and the ids of every member
    /// that joined and has not stopped cleanly since (`known/`), in one read.
    pub async fn roster(&self) -> Result<(Vec<MemberRecord>, Vec<String>), EtcdError> {
        let txn = Txn::new().and_then([
            TxnOp::get(self.key("members/"), Some(GetOptions::new().with_prefix())),
            TxnOp::get(self.key("known/"), Some(GetOptions::new().with_prefix())),
        ]);
        let response = self.txn(txn).await?;
        let mut gets = response.op_responses().into_iter().filter_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        });
        let (Some(live), Some(known)) = (gets.next(), gets.next()) else {
            return Err(EtcdError::Unavailable("etcd answered the member read without its two ranges".into()));
        };
        let mut members = live.kvs().iter().map(member_of).collect::<Result<Vec<_>, _>>()?;
        members.sort_by(|a, b| a.node.cmp(&b.node));
        let prefix = self.key("known/");
        let mut known: Vec<String> = known
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).trim_start_matches(prefix.as_str()).to_string())
            .collect();
        known.sort();
        Ok((members, known))
    }

    /// Forgets member `node` (a clean shutdown): reloads stop reporting it.
    pub async fn forget(&self, node: &str) -> Result<(), EtcdError> {
        let key = self.key(&format!("known/{node}"));
        self.call(|mut client| {
            let key = key.clone();
            async move { client.delete(key, None).await }
        })
        .await
        .map(|_| ())
    }

    /// One try at the lock on `lease`: `Ok(Ok(token))` when taken, `Ok(Err(revision))`
    /// when held by another (with the revision to watch from).
    async fn try_lock(&self, lease: i64, holder: &Value) -> Result<Result<i64, i64>, EtcdError> {
        let key = self.key("lock");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), holder.to_string(), Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(txn).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        if response.succeeded() {
            return Ok(Ok(revision));
        }
        let ours = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().and_then(|kv| {
                let mine = kv.lease() == lease && parse_holder(kv.value()).as_ref() == Some(holder);
                mine.then(|| kv.create_revision())
            }),
            _ => None,
        });
        // An earlier attempt of this very call took it (its answer was lost).
        Ok(match ours {
            Some(token) => Ok(token),
            None => Err(revision),
        })
    }

    /// Waits until the lock key is deleted (after `revision`) or `deadline`.
    async fn wait_unlocked(&self, revision: i64, deadline: Instant) -> Result<(), EtcdError> {
        let key = self.key("lock");
        let mut stream = self
            .call(|mut client| {
                let (key, options) = (key.clone(), WatchOptions::new().with_start_revision(revision + 1));
                async move { client.watch(key, Some(options)).await }
            })
            .await?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Err(_) => return Ok(()),
                Ok(Err(err)) => return Err(unavailable(err)),
                Ok(Ok(None)) => return Err(EtcdError::Unavailable("the watch ended".into())),
                Ok(Ok(Some(response))) => {
                    if response.events().iter().any(|event| event.event_type() == EventType::Delete) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Takes the reload lock on `lease`, waiting up to `wait` for its holder;
    /// returns the fencing token (the lock key's create revision).
    pub async fn lock(&self, lease: i64, holder: &Value, wait: Duration) -> Result<i64, LockError> {
        let deadline = Instant::now().checked_add(wait);
        loop {
            let held_at = match self.try_lock(lease, holder).await {
                Ok(Ok(token)) => return Ok(token),
                Ok(Err(revision)) => revision,
                Err(err) => return Err(LockError::Unavailable(err.to_string())),
            };
            let deadline = match deadline {
                Some(deadline) if Instant::now() >= deadline => return Err(LockError::Conflict),
                Some(deadline) => deadline,
                None => Instant::now() + Duration::from_secs(3600),
            };
            if let Err(err) = self.wait_unlocked(held_at, deadline).await {
                // The watch broke (its endpoint went away): try again, through
                // another endpoint, while there is time.
                if Instant::now() >= deadline {
                    return Err(LockError::Unavailable(err.to_string()));
                }
                tokio::time::sleep(ROUND_PAUSE).await;
            }
        }
    }

    /// Releases the lock if `token` still names it.
    pub async fn unlock(&self, token: i64) -> Result<(), EtcdError> {
        let key = self.key("lock");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, token)])
            .and_then([TxnOp::delete(key, None)]);
        self.txn(txn).await.map(|_| ())
    }

    /// True while the lock key exists with fencing token `token`.
    pub async fn lock_held(&self, token: i64) -> Result<bool, EtcdError> {
        let response = self.get(self.key("lock"), None).await?;
        Ok(response.kvs().first().is_some_and(|kv| kv.create_revision() == token))
    }

    /// What the cluster committed for member `node`.
    pub async fn desired(&self, node: &str) -> Result<Desired, EtcdError> {
        let response = self.get(self.key("desired/"), Some(GetOptions::new().with_prefix())).await?;
        let base = self.key("desired/base/");
        let overridden = self.key("desired/override/");
        let revisions = [self.key("desired/revision/base"), self.key(&format!("desired/revision/{node}"))];
        let mut desired = Desired::default();
        let mut overrides = Vec::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if revisions.contains(&key) {
                desired.revision = desired.revision.max(kv.mod_revision());
            } else if let Some(rest) = key.strip_prefix(&base) {
                desired.set(rest, parse(kv.key(), kv.value())?, &key)?;
            } else if let Some((rest, member)) = key.strip_prefix(&overridden).and_then(|rest| rest.rsplit_once('/')) {
                if member == node {
                    overrides.push((rest.to_string(), parse(kv.key(), kv.value())?, key.clone()));
                }
            }
        }
        for (rest, value, key) in overrides {
            desired.set(&rest, value, &key)?;
        }
        // This member's override of an app or extension loads it here
        // whatever the base says.
        let Desired { apps, extensions, unloaded_apps, unloaded_extensions, .. } = &mut desired;
        unloaded_apps.retain(|name, _| !apps.contains_key(name));
        unloaded_extensions.retain(|name, _| !extensions.contains_key(name));
        Ok(desired)
    }

    /// The current values of the keys a commit would write, to undo it.
    pub async fn current(
        &self,
        changes: &Changes,
        nodes: Option<&[String]>,
    ) -> Result<Vec<(String, Option<Value>)>, EtcdError> {
        let mut values = Vec::new();
        for key in self.keys_of(changes, nodes) {
            let response = self.get(key.clone(), None).await?;
            let value = match response.kvs().first() {
                Some(kv) => Some(parse(kv.key(), kv.value())?),
                None => None,
            };
            values.push((key, value));
        }
        if nodes.is_none() {
            let deleted = changes.deletes.iter().map(|(kind, name)| format!("{kind}/{name}"));
            let marks = changes.marks().map(|(kind, name)| format!("unloaded/{kind}/{name}"));
            for rest in deleted.chain(marks) {
                let key = self.key(&format!("desired/base/{rest}"));
                let response = self.get(key.clone(), None).await?;
                let value = response.kvs().first().map(|kv| parse(kv.key(), kv.value())).transpose()?;
                values.push((key, value));
            }
            // A commit for everyone drops the overrides of what it changes.
            let deleted = changes.deletes.iter().map(|(kind, name)| (kind, name));
            for (kind, name) in changes.puts.iter().map(|(kind, name, _)| (kind, name)).chain(deleted) {
                let prefix = self.key(&format!("desired/override/{kind}/{name}/"));
                let response = self.get(prefix, Some(GetOptions::new().with_prefix())).await?;
                for kv in response.kvs() {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    values.push((key, Some(parse(kv.key(), kv.value())?)));
                }
            }
        }
        Ok(values)
    }

    fn keys_of(&self, changes: &Changes, nodes: Option<&[String]>) -> Vec<String> {
        let mut keys = Vec::new();
        for (kind, name, _) in &changes.puts {
            match nodes {
                None => keys.push(self.key(&format!("desired/base/{kind}/{name}"))),
                Some(nodes) => {
                    keys.extend(nodes.iter().map(|node| self.key(&format!("desired/override/{kind}/{name}/{node}"))))
                }
            }
        }
        keys
    }

    /// Records a commit: `changes` into the base (`nodes: None`, which also
    /// drops every member's override of those keys) or into the overrides of
    /// `nodes`, the commit record, and the revision keys — in one transaction
    /// guarded by the fencing token. Returns the commit's revision.
    pub async fn commit(
        &self,
        token: i64,
        request_id: &str,
        changes: &Changes,
        nodes: Option<&[String]>,
        atomic: bool,
    ) -> Result<i64, EtcdError> {
        let mut ops = Vec::new();
        let keys = self.keys_of(changes, nodes);
        let values: Vec<&Value> = match nodes {
            None => changes.puts.iter().map(|(.., value)| value).collect(),
            Some(nodes) => {
                changes.puts.iter().flat_map(|(.., value)| std::iter::repeat_n(value, nodes.len())).collect()
            }
        };
        for (key, value) in keys.into_iter().zip(values) {
            ops.push(TxnOp::put(key, value.to_string(), None));
        }
        let stamp = json!({"request_id": request_id}).to_string();
        match nodes {
            None => {
                for (kind, name) in &changes.deletes {
                    ops.push(TxnOp::delete(self.key(&format!("desired/base/{kind}/{name}")), None));
                }
                let deleted = changes.deletes.iter().map(|(kind, name)| (kind, name));
                for (kind, name) in changes.puts.iter().map(|(kind, name, _)| (kind, name)).chain(deleted) {
                    let overrides = self.key(&format!("desired/override/{kind}/{name}/"));
                    ops.push(TxnOp::delete(overrides, Some(DeleteOptions::new().with_prefix())));
                }
                // Loading an app or extension again clears its unloaded
                // mark; an unload writes it.
                for (kind, name, _) in changes.puts.iter().filter(|(kind, ..)| *kind != "module") {
                    ops.push(TxnOp::delete(self.key(&format!("desired/base/unloaded/{kind}/{name}")), None));
                }
                for (kind, name, value) in &changes.unloaded {
                    let key = self.key(&format!("desired/base/unloaded/{kind}/{name}"));
                    ops.push(TxnOp::put(key, value.to_string(), None));
                }
                ops.push(TxnOp::put(self.key("desired/revision/base"), stamp.clone(), None));
            }
            Some(nodes) => {
                for node in nodes {
                    ops.push(TxnOp::put(self.key(&format!("desired/revision/{node}")), stamp.clone(), None));
                }
            }
        }
        let record = json!({"request_id": request_id, "nodes": nodes.map(<[String]>::to_vec), "atomic": atomic});
        ops.push(TxnOp::put(self.key(&format!("commits/{token}")), record.to_string(), None));
        self.guarded(token, ops).await
    }

    /// Puts back the values `current` read before a commit (an atomic request
    /// undone after its commit), and bumps the revision keys of `nodes`.
    pub async fn revert(
        &self,
        token: i64,
        request_id: &str,
        before: &[(String, Option<Value>)],
        nodes: Option<&[String]>,
    ) -> Result<i64, EtcdError> {
        let mut ops = Vec::new();
        for (key, value) in before {
            ops.push(match value {
                Some(value) => TxnOp::put(key.clone(), value.to_string(), None),
                None => TxnOp::delete(key.clone(), None),
            });
        }
        let stamp = json!({"request_id": request_id, "undone": true}).to_string();
        match nodes {
            None => ops.push(TxnOp::put(self.key("desired/revision/base"), stamp, None)),
            Some(nodes) => {
                for node in nodes {
                    ops.push(TxnOp::put(self.key(&format!("desired/revision/{node}")), stamp.clone(), None));
                }
            }
        }
        ops.push(TxnOp::delete(self.key(&format!("commits/{token}")), None));
        self.guarded(token, ops).await
    }

    async fn guarded(&self, token: i64, ops: Vec<TxnOp>) -> Result<i64, EtcdError> {
        let txn = Txn::new().when([Compare::create_revision(self.key("lock"), CompareOp::Equal, token)]).and_then(ops);
        let response = self.txn(txn).await?;
        if !response.succeeded() {
            return Err(EtcdError::LeaseLost);
        }
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// The revision of the commit made under fencing token `token`, if any.
    pub async fn committed(&self, token: i64) -> Result<Option<i64>, EtcdError> {
        let response = self.get(self.key(&format!("commits/{token}")), None).await?;
        Ok(response.kvs().first().map(|kv| kv.mod_revision()))
    }

    /// Watches the desired state (`desired/`) and the member list
    /// (`members/`) from `revision`.
    pub async fn watch(&self, revision: i64) -> Result<Watch, EtcdError> {
        // Two ranges, not the cluster's whole prefix: the lock's two events
        // per reload would wake every member twice for nothing.
        let desired = self.watch_prefix("desired/", revision).await?;
        let members = self.watch_prefix("members/", revision).await?;
        Ok(Watch { desired, members, prefix: self.prefix.clone() })
    }

    async fn watch_prefix(&self, part: &str, revision: i64) -> Result<etcd_client::WatchStream, EtcdError> {
        let prefix = self.key(part);
        self.call(|mut client| {
            let prefix = prefix.clone();
            let options = WatchOptions::new().with_prefix().with_start_revision(revision);
            async move { client.watch(prefix, Some(options)).await }
        })
        .await
    }
}

/// A watch on the cluster's desired state and member list.
#[derive(Debug)]
pub struct Watch {
    desired: etcd_client::WatchStream,
    members: etcd_client::WatchStream,
    prefix: String,
}

/// One key's change, as a watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Relative to the cluster's prefix.
    pub key: String,
    pub deleted: bool,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The value written (empty for a delete).
    pub value: Vec<u8>,
}

impl Watch {
    /// The next batch of changes; an error when the watch broke (etcd
    /// unreachable).
    pub async fn next(&mut self) -> Result<Vec<Change>, EtcdError> {
        loop {
            let message = tokio::select! {
                message = self.desired.message() => message,
                message = self.members.message() => message,
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return Err(EtcdError::Unavailable("the watch ended".into())),
                Err(err) => return Err(unavailable(err)),
            };
            if response.canceled() {
                return Err(EtcdError::Unavailable(format!("the watch was cancelled: {}", response.cancel_reason())));
            }
            let changes: Vec<Change> = response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    Some(Change {
                        key: String::from_utf8_lossy(kv.key()).trim_start_matches(self.prefix.as_str()).to_string(),
                        deleted: event.event_type() == EventType::Delete,
                        create_revision: kv.create_revision(),
                        mod_revision: kv.mod_revision(),
                        value: kv.value().to_vec(),
                    })
                })
                .collect();
            if !changes.is_empty() {
                return Ok(changes);
            }
        }
    }
}

impl Desired {
    fn set(&mut self, rest: &str, value: Value, key: &str) -> Result<(), EtcdError> {
        let corrupt = |problem: &str| EtcdError::Corrupt { key: key.to_string(), problem: problem.to_string() };
        let (kind, name) = rest.split_once('/').ok_or_else(|| corrupt("not a desired-state key"))?;
        if kind == "unloaded" {
            let (kind, name) = name.split_once('/').ok_or_else(|| corrupt("not an unloaded mark"))?;
            match kind {
                "app" => self.unloaded_apps.insert(name.to_string(), value),
                "extension" => self.unloaded_extensions.insert(name.to_string(), value),
                _ => return Err(corrupt("an unloaded mark is of an app or an extension")),
            };
            return Ok(());
        }
        match kind {
            "module" => {
                let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_string);
                let build = match (text("sha256"), text("vsn"), text("source")) {
                    (Some(sha256), Some(vsn), Some(source)) => DesiredBuild { sha256, vsn, source },
                    _ => return Err(corrupt("a module needs sha256, vsn and source")),
                };
                self.modules.insert(name.to_string(), build);
            }
            "app" => {
                self.apps.insert(name.to_string(), value);
            }
            "extension" => {
                self.extensions.insert(name.to_string(), value);
            }
            _ => return Err(corrupt("not a module, app or extension")),
        }
        Ok(())
    }
}

fn member_of(kv: &etcd_client::KeyValue) -> Result<MemberRecord, EtcdError> {
    let value = parse(kv.key(), kv.value())?;
    let text = |field: &str| value.get(field).and_then(Value::as_str).unwrap_or("").to_string();
    Ok(MemberRecord {
        node: text("node"),
        advertise: text("advertise"),
        since: text("since"),
        instance: text("instance"),
        lease: kv.lease(),
    })
}

/// The member's lease as the lock sees it: its id (0 while the member holds
/// none) and whether it is believed alive.
#[derive(Debug, Default)]
pub struct LeaseCell {
    id: AtomicI64,
    alive: AtomicBool,
}

impl LeaseCell {
    pub fn set(&self, id: Option<i64>) {
        self.id.store(id.unwrap_or(0), Ordering::SeqCst);
        self.alive.store(id.is_some(), Ordering::SeqCst);
    }

    /// The lease id last set, alive or not (0: none).
    pub fn id(&self) -> i64 {
        self.id.load(Ordering::SeqCst)
    }

    pub fn get(&self) -> Option<i64> {
        let id = self.id.load(Ordering::SeqCst);
        (id != 0 && self.alive.load(Ordering::SeqCst)).then_some(id)
    }
}

/// The reload lock of CONTRACT.md §7 for a cluster: an etcd key on the
/// member's lease, taken by one member of the cluster at a time. Its guard's
/// fencing token is the key's create revision; a holder killed with SIGKILL
/// frees it when its lease expires. `acquire` blocks: call it from a blocking
/// thread, never from an async task.
#[derive(Debug, Clone)]
pub struct EtcdLock {
    pub store: Store,
    pub lease: Arc<LeaseCell>,
    pub node: String,
    pub handle: tokio::runtime::Handle,
}

impl ReloadLock for EtcdLock {
    fn acquire(&self, wait: Duration) -> Result<LockGuard, LockError> {
        let Some(lease) = self.lease.get() else {
            return Err(LockError::Unavailable("this member holds no lease: etcd has been unreachable".into()));
        };
        // Unique per request, so that an attempt whose answer was lost is
        // recognised as this request's and another request's never is.
        static REQUESTS: AtomicU64 = AtomicU64::new(0);
        let holder = json!({
            "node": self.node,
            "since": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "request": REQUESTS.fetch_add(1, Ordering::Relaxed),
        });
        let token = self.handle.block_on(self.store.lock(lease, &holder, wait))?;
        let held = EtcdHeld { lock: self.clone(), token, lease };
        Ok(LockGuard::new(token as u64, Box::new(held)))
    }
}

#[derive(Debug)]
struct EtcdHeld {
    lock: EtcdLock,
    token: i64,
    lease: i64,
}

impl Lease for EtcdHeld {
    fn is_held(&self) -> bool {
        self.lock.lease.get() == Some(self.lease)
    }
}

impl Drop for EtcdHeld {
    fn drop(&mut self) {
        // On a thread of its own: a guard may be dropped inside an async task,
        // where blocking on the runtime is not allowed.
        let (store, handle, token) = (self.lock.store.clone(), self.lock.handle.clone(), self.token);
        let released = std::thread::spawn(move || handle.block_on(store.unlock(token)));
        match released.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                // The lease stays alive (this member does), so the lock would
                // stay held with nobody behind it: release it as soon as etcd
                // answers, unless the lease goes first (and the lock with it).
                tracing::warn!(%err, token, "cannot release the reload lock yet; retrying until etcd answers");
                let (store, lease, id) = (self.lock.store.clone(), Arc::clone(&self.lock.lease), self.lease);
                self.lock.handle.spawn(release_later(store, lease, id, token));
            }
            Err(_) => tracing::error!("releasing the reload lock panicked"),
        }
    }
}

/// Releases the lock `token` once etcd answers, or gives up when the lease
/// `id` under it is no longer this member's (the lock went with it).
async fn release_later(store: Store, lease: Arc<LeaseCell>, id: i64, token: i64) {
    loop {
        tokio::time::sleep(RELEASE_RETRY).await;
        match store.unlock(token).await {
            Ok(()) => {
                tracing::info!(token, "released the reload lock");
                return;
            }
            Err(err) if lease.id() == id => tracing::debug!(%err, token, "still cannot release the reload lock"),
            Err(_) => return,
        }
    }
}
