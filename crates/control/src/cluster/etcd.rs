//! etcd, the cluster's one source of truth (CONTRACT.md §10): the key layout,
//! the member's lease, the reload lock, and the desired state.
//!
//! Every key lives under `/zest/<cluster>/`:
//!
//! | key | value | written |
//! |---|---|---|
//! | `members/<node>` | `{"node", "advertise", "since", "instance"}` | on the member's lease, at start |
//! | `lock` | `{"node", "since"}` | on the holder's lease; its create revision is the fencing token |
//! | `desired/base/module/<name>` | `{"sha256", "vsn", "source"}` | by a commit with `nodes: "all"` |
//! | `desired/base/app/<name>` | the app's manifest as the coordinator read it | by a commit with `nodes: "all"` |
//! | `desired/base/extension/<name>` | the extension's record | by a commit with `nodes: "all"` |
//! | `desired/override/<kind>/<name>/<node>` | the same, for one member | by a commit listing members (a commit for everyone drops a key's overrides with one prefix delete, however many members) |
//! | `desired/revision/base`, `desired/revision/<node>` | `{"request_id"}` | by every commit: their mod revisions are the last commit for everyone, for one member |
//! | `commits/<token>` | `{"request_id", "nodes", "atomic"}` | by every commit, under its fencing token: how a member that prepared learns the outcome |
//!
//! A commit is one transaction guarded by the fencing token: it applies only
//! while the coordinator still holds the lock it took. Every call here is
//! bounded ([`OP_TIMEOUT`]); a call that cannot reach etcd is
//! [`EtcdError::Unavailable`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use serde_json::{json, Value};
use zest_runtime::lock::Lease;
use zest_runtime::{LockError, LockGuard, ReloadLock};

/// The longest one etcd call may take before etcd counts as unreachable.
pub const OP_TIMEOUT: Duration = Duration::from_millis(2000);

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
    /// The last commit for everyone or for this member (0: none yet).
    pub revision: i64,
}

/// The keys one commit writes, and what they held before (to undo it).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// `(kind, name) → value`: `kind` is `module`, `app` or `extension`.
    pub puts: Vec<(&'static str, String, Value)>,
}

/// The cluster's keys in etcd, through one client.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn unavailable(err: impl std::fmt::Display) -> EtcdError {
    EtcdError::Unavailable(err.to_string())
}

/// Runs one etcd call, bounded by [`OP_TIMEOUT`].
async fn bounded<T>(call: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, EtcdError> {
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(unavailable(err)),
        Err(_) => Err(EtcdError::Unavailable(format!("no answer within {} ms", OP_TIMEOUT.as_millis()))),
    }
}

fn parse(key: &[u8], value: &[u8]) -> Result<Value, EtcdError> {
    serde_json::from_slice(value)
        .map_err(|err| EtcdError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), problem: err.to_string() })
}

impl Store {
    /// A client of `endpoints` for cluster `name`. Connecting is lazy: this
    /// succeeds whether or not etcd is up.
    pub async fn connect(endpoints: &[String], name: &str) -> Result<Store, String> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(1000))
            .with_timeout(OP_TIMEOUT)
            .with_keep_alive(Duration::from_millis(1000), Duration::from_millis(1000))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|err| format!("cannot use the etcd endpoints {endpoints:?}: {err}"))?;
        Ok(Store { client, prefix: format!("/zest/{name}/") })
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
        let mut client = self.client.clone();
        Ok(bounded(client.lease_grant(seconds, None)).await?.id())
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let mut client = self.client.clone();
        bounded(client.lease_revoke(lease)).await.map(|_| ())
    }

    /// Keeps `lease` alive until it is lost: calls `alive` after each renewal
    /// and returns when etcd says the lease is gone (`Ok`) or cannot be reached.
    pub async fn keep_alive(&self, lease: i64, every: Duration, alive: impl Fn()) -> Result<(), EtcdError> {
        let mut client = self.client.clone();
        let (mut keeper, mut stream) = bounded(client.lease_keep_alive(lease)).await?;
        alive();
        loop {
            tokio::time::sleep(every).await;
            keeper.keep_alive().await.map_err(unavailable)?;
            match tokio::time::timeout(OP_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => alive(),
                Ok(Ok(Some(_))) => return Ok(()),
                Ok(Ok(None)) => return Err(EtcdError::Unavailable("the keep-alive stream ended".into())),
                Ok(Err(err)) => return Err(unavailable(err)),
                Err(_) => return Err(EtcdError::Unavailable("no keep-alive answer".into())),
            }
        }
    }

    /// Writes `members/<node>` on `lease` unless the key exists; returns the
    /// member already there otherwise.
    pub async fn register(&self, record: &MemberRecord, lease: i64) -> Result<Option<MemberRecord>, EtcdError> {
        let key = self.key(&format!("members/{}", record.node));
        let value = json!({"node": record.node, "advertise": record.advertise, "since": record.since, "instance": record.instance});
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value.to_string(), Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let mut client = self.client.clone();
        let response = bounded(client.txn(txn)).await?;
        if response.succeeded() {
            return Ok(None);
        }
        // The read runs in the same transaction as the compare that failed, so
        // the key is there.
        let existing = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(member_of),
            _ => None,
        });
        existing.transpose().map(|member| member.or(None)).and_then(|member| match member {
            Some(member) => Ok(Some(member)),
            None => Err(EtcdError::Unavailable("the member key vanished mid-transaction".into())),
        })
    }

    /// Every member, sorted by id, and the revision of the read.
    pub async fn members(&self) -> Result<(Vec<MemberRecord>, i64), EtcdError> {
        let mut client = self.client.clone();
        let response = bounded(client.get(self.key("members/"), Some(GetOptions::new().with_prefix()))).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut members = response.kvs().iter().map(member_of).collect::<Result<Vec<_>, _>>()?;
        members.sort_by(|a, b| a.node.cmp(&b.node));
        Ok((members, revision))
    }

    /// One try at the lock on `lease`: `Ok(Ok(token))` when taken, `Ok(Err(revision))`
    /// when held by another (with the revision to watch from).
    async fn try_lock(&self, lease: i64, holder: &Value) -> Result<Result<i64, i64>, EtcdError> {
        let key = self.key("lock");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), holder.to_string(), Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let mut client = self.client.clone();
        let response = bounded(client.txn(txn)).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        Ok(if response.succeeded() { Ok(revision) } else { Err(revision) })
    }

    /// Waits until the lock key is deleted (after `revision`) or `deadline`.
    async fn wait_unlocked(&self, revision: i64, deadline: Instant) -> Result<(), EtcdError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let mut stream = bounded(client.watch(self.key("lock"), Some(options))).await?;
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
                return Err(LockError::Unavailable(err.to_string()));
            }
        }
    }

    /// Releases the lock if `token` still names it.
    pub async fn unlock(&self, token: i64) -> Result<(), EtcdError> {
        let key = self.key("lock");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, token)])
            .and_then([TxnOp::delete(key, None)]);
        let mut client = self.client.clone();
        bounded(client.txn(txn)).await.map(|_| ())
    }

    /// True while the lock key exists with fencing token `token`.
    pub async fn lock_held(&self, token: i64) -> Result<bool, EtcdError> {
        let mut client = self.client.clone();
        let response = bounded(client.get(self.key("lock"), None)).await?;
        Ok(response.kvs().first().is_some_and(|kv| kv.create_revision() == token))
    }

    /// What the cluster committed for member `node`.
    pub async fn desired(&self, node: &str) -> Result<Desired, EtcdError> {
        let mut client = self.client.clone();
        let response = bounded(client.get(self.key("desired/"), Some(GetOptions::new().with_prefix()))).await?;
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
        Ok(desired)
    }

    /// The current values of the keys a commit would write, to undo it.
    pub async fn current(
        &self,
        changes: &Changes,
        nodes: Option<&[String]>,
    ) -> Result<Vec<(String, Option<Value>)>, EtcdError> {
        let mut values = Vec::new();
        let mut client = self.client.clone();
        for key in self.keys_of(changes, nodes) {
            let response = bounded(client.get(key.clone(), None)).await?;
            let value = match response.kvs().first() {
                Some(kv) => Some(parse(kv.key(), kv.value())?),
                None => None,
            };
            values.push((key, value));
        }
        if nodes.is_none() {
            // A commit for everyone drops the overrides of what it changes.
            for (kind, name, _) in &changes.puts {
                let prefix = self.key(&format!("desired/override/{kind}/{name}/"));
                let response = bounded(client.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
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
                for (kind, name, _) in &changes.puts {
                    let overrides = self.key(&format!("desired/override/{kind}/{name}/"));
                    ops.push(TxnOp::delete(overrides, Some(DeleteOptions::new().with_prefix())));
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
        let mut client = self.client.clone();
        let response = bounded(client.txn(txn)).await?;
        if !response.succeeded() {
            return Err(EtcdError::LeaseLost);
        }
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// The revision of the commit made under fencing token `token`, if any.
    pub async fn committed(&self, token: i64) -> Result<Option<i64>, EtcdError> {
        let mut client = self.client.clone();
        let response = bounded(client.get(self.key(&format!("commits/{token}")), None)).await?;
        Ok(response.kvs().first().map(|kv| kv.mod_revision()))
    }

    /// Watches every key of the cluster from `revision`.
    pub async fn watch(&self, revision: i64) -> Result<Watch, EtcdError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(revision);
        let stream = bounded(client.watch(self.prefix.clone(), Some(options))).await?;
        Ok(Watch { stream, prefix: self.prefix.clone() })
    }
}

/// A watch on the cluster's keys.
#[derive(Debug)]
pub struct Watch {
    stream: etcd_client::WatchStream,
    prefix: String,
}

impl Watch {
    /// The keys (relative to the cluster's prefix) of the next batch of
    /// changes; an error when the watch broke (etcd unreachable).
    pub async fn next(&mut self) -> Result<Vec<String>, EtcdError> {
        loop {
            let response = match self.stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Err(EtcdError::Unavailable("the watch ended".into())),
                Err(err) => return Err(unavailable(err)),
            };
            if response.canceled() {
                return Err(EtcdError::Unavailable(format!("the watch was cancelled: {}", response.cancel_reason())));
            }
            let keys: Vec<String> = response
                .events()
                .iter()
                .filter_map(|event| event.kv())
                .map(|kv| String::from_utf8_lossy(kv.key()).trim_start_matches(self.prefix.as_str()).to_string())
                .collect();
            if !keys.is_empty() {
                return Ok(keys);
            }
        }
    }
}

impl Desired {
    fn set(&mut self, rest: &str, value: Value, key: &str) -> Result<(), EtcdError> {
        let corrupt = |problem: &str| EtcdError::Corrupt { key: key.to_string(), problem: problem.to_string() };
        let (kind, name) = rest.split_once('/').ok_or_else(|| corrupt("not a desired-state key"))?;
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
        let holder =
            json!({"node": self.node, "since": humantime::format_rfc3339_millis(SystemTime::now()).to_string()});
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
            Ok(Err(err)) => tracing::warn!(%err, "cannot release the reload lock; it goes with the lease"),
            Err(_) => tracing::error!("releasing the reload lock panicked"),
        }
    }
}
