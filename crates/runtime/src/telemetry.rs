//! Telemetry (CONTRACT.md §6): one closed event type, emitted for every reload
//! operation and every child step of scope `all`, and delivered to
//!
//! - in-process handlers ([`Telemetry::attach`] / [`Telemetry::detach`]);
//! - a broadcast feed ([`Telemetry::subscribe`]) that the control plane exposes
//!   over WebSocket;
//! - `tracing` (target `zest::reload`): each step's events are logged, and
//!   each step is a span `zest.reload` from its `start` to its `stop` (or
//!   `exception`) event, carrying the request id, kind, target and role, and
//!   the status at its end; the child steps of scope `all` (and a cluster
//!   member's part, then its children) are its children. A program that
//!   exports spans (`zest serve` with `[telemetry] otlp`) sends them on;
//!   calls have no span (they are far too many and too short);
//! - the `metrics` facade: `zest_reloads_total{kind,status,role}` and
//!   `zest_reload_duration_seconds{kind,role}`, which a Prometheus exporter
//!   serves ([`METRICS`] lists every metric with its help text; [`describe`]
//!   gives them to the recorder and makes their series exist at 0).
//!
//! Besides the three reload events, `zest.build.output` carries each line a build
//! prints (`compile: true`) as it arrives, so a client can stream it, and the
//! coordinator of a cluster reload emits `zest.cluster.prepare`, `.commit` and
//! `.abort` (counted as `zest_cluster_prepares_total`, `zest_cluster_commits_total`
//! and `zest_cluster_aborts_total{reason}`, with `role="coordinator"`); a target
//! counts its own part with [`count_member`] (`role="member"`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;

use crate::reason::{Failure, Reason};
pub use crate::report::Stream;
use crate::report::{Kind, Phase, ReloadResult, Status};

/// How many step spans may be open at once; past it the oldest is closed (a
/// step whose stop never comes, say a prepared plan its member dropped, must
/// not keep its span for ever).
const OPEN_SPANS: usize = 1024;

/// The name of every reload step's span.
pub const RELOAD_SPAN: &str = "zest.reload";

/// How many events the broadcast feed buffers for a slow subscriber before it
/// starts missing the oldest (a subscriber is told how many it missed).
const FEED_CAPACITY: usize = 1024;

/// One telemetry event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Increases by one with every event of this node.
    pub seq: u64,
    /// Whether this node received the request or runs its part of another
    /// member's.
    pub role: Role,
    pub kind: Kind,
    /// The reload target (module, app, extension path, `server:module`, `system`).
    pub target: String,
    pub request_id: String,
    pub body: EventBody,
}

/// What happened; the closed set of events.
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    /// `zest.reload.start`
    Start { system_time: SystemTime },
    /// `zest.reload.stop`
    Stop { duration: Duration, status: Status },
    /// `zest.reload.exception`: the step panicked; the result reports it.
    Exception { duration: Duration, error: String },
    /// `zest.build.output`: one line of a build's output.
    BuildOutput { stream: Stream, line: String },
    /// `zest.reload.reverted`: a reload on trial failed too often and its
    /// builds were put back (`status`: how the revert went).
    Reverted { calls: u64, failures: u64, status: Status },
    /// `zest.reload.permanent`: a reload's trial ended without a revert.
    Permanent { calls: u64, failures: u64 },
    /// `zest.cluster.prepare`: the coordinator asks these members to prepare.
    ClusterPrepare { nodes: Vec<String> },
    /// `zest.cluster.commit`: etcd recorded the request at this revision.
    ClusterCommit { nodes: Vec<String>, revision: i64 },
    /// `zest.cluster.abort`: nothing was swapped on any member, because of this.
    ClusterAbort { nodes: Vec<String>, reason: AbortCause, message: String },
}

/// Which side of a request a node's events and metrics come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The node received the request (every reload of a standalone node, a
    /// watch reload, a trial's revert, the coordinator of a cluster reload).
    Coordinator,
    /// The node runs its part of a cluster reload another member coordinates,
    /// or catches up with what the cluster committed.
    Member,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Coordinator, Role::Member];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Member => "member",
        }
    }
}

/// Why a cluster reload was aborted: `metadata.reason` of `zest.cluster.abort`
/// and the `reason` of `zest_cluster_aborts_total`. A closed set, so that each
/// cause is its own series and they add up to the aborts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCause {
    /// The coordinator's own build (read, compile, validate) failed: nothing
    /// was sent to prepare, or the request is atomic.
    BuildFailed,
    /// A target answered that it could not stage the builds (or, counted by a
    /// target, this member could not).
    PrepareFailed,
    /// A target did not answer its prepare in time.
    NodeUnreachable,
    /// The coordinator lost its lock's lease before the commit (counted by a
    /// target: the coordinator's lock went away without a commit).
    LeaseLost,
    /// etcd could not be reached to check the lock or to commit.
    ClusterUnavailable,
    /// A target's prepared plan got no decision by its deadline.
    Timeout,
}

impl AbortCause {
    pub const ALL: [AbortCause; 6] = [
        AbortCause::BuildFailed,
        AbortCause::PrepareFailed,
        AbortCause::NodeUnreachable,
        AbortCause::LeaseLost,
        AbortCause::ClusterUnavailable,
        AbortCause::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AbortCause::BuildFailed => "build_failed",
            AbortCause::PrepareFailed => "prepare_failed",
            AbortCause::NodeUnreachable => "node_unreachable",
            AbortCause::LeaseLost => "lease_lost",
            AbortCause::ClusterUnavailable => "cluster_unavailable",
            AbortCause::Timeout => "timeout",
        }
    }

    /// The cause `name` stands for (what a coordinator sends its targets).
    pub fn parse(name: &str) -> Option<AbortCause> {
        AbortCause::ALL.into_iter().find(|cause| cause.as_str() == name)
    }

    /// The §5.1 reason that a result reports for this cause.
    pub fn reason(self) -> Reason {
        match self {
            AbortCause::BuildFailed | AbortCause::PrepareFailed => Reason::PrepareFailed,
            AbortCause::NodeUnreachable => Reason::NodeUnreachable,
            AbortCause::LeaseLost => Reason::LeaseLost,
            AbortCause::ClusterUnavailable => Reason::ClusterUnavailable,
            AbortCause::Timeout => Reason::Timeout,
        }
    }
}

/// One step of a cluster reload as a target counts it (`role="member"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStep {
    /// A `cluster.prepare` this member began to stage.
    Prepare,
    /// A prepared request this member committed (on the coordinator's word or
    /// etcd's).
    Commit,
    /// A prepared request this member dropped, and why.
    Abort(AbortCause),
}

impl Event {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self.body {
            EventBody::Start { .. } => "zest.reload.start",
            EventBody::Stop { .. } => "zest.reload.stop",
            EventBody::Exception { .. } => "zest.reload.exception",
            EventBody::BuildOutput { .. } => "zest.build.output",
            EventBody::Reverted { .. } => "zest.reload.reverted",
            EventBody::Permanent { .. } => "zest.reload.permanent",
            EventBody::ClusterPrepare { .. } => "zest.cluster.prepare",
            EventBody::ClusterCommit { .. } => "zest.cluster.commit",
            EventBody::ClusterAbort { .. } => "zest.cluster.abort",
        }
    }
}

/// Identifies an attached handler, for [`Telemetry::detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerId(u64);

type Handler = Box<dyn Fn(&Event) + Send + Sync>;

/// The node's event hub.
pub struct Telemetry {
    seq: AtomicU64,
    next_handler: AtomicU64,
    handlers: RwLock<Vec<(HandlerId, Handler)>>,
    feed: broadcast::Sender<Event>,
    /// The spans of the steps between their start and stop events.
    spans: Mutex<Vec<OpenSpan>>,
}

/// The span of one step, open from its `start` event to its `stop`.
struct OpenSpan {
    role: Role,
    kind: Kind,
    target: String,
    request_id: String,
    /// The request's outermost step on this node: its children nest in it,
    /// and its end closes any of them left open.
    root: bool,
    span: tracing::Span,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            seq: AtomicU64::new(0),
            next_handler: AtomicU64::new(0),
            handlers: RwLock::new(Vec::new()),
            feed: broadcast::channel(FEED_CAPACITY).0,
            spans: Mutex::new(Vec::new()),
        }
    }
}

impl Telemetry {
    /// Calls `handler` with every event from now on, on the emitting thread. A
    /// handler that panics is caught and logged; it never disturbs a reload.
    pub fn attach(&self, handler: impl Fn(&Event) + Send + Sync + 'static) -> HandlerId {
        let id = HandlerId(self.next_handler.fetch_add(1, Ordering::Relaxed));
        self.handlers.write().unwrap_or_else(PoisonError::into_inner).push((id, Box::new(handler)));
        id
    }

    /// Removes a handler; false if it was not attached.
    pub fn detach(&self, id: HandlerId) -> bool {
        let mut handlers = self.handlers.write().unwrap_or_else(PoisonError::into_inner);
        let before = handlers.len();
        handlers.retain(|(handler_id, _)| *handler_id != id);
        handlers.len() != before
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.feed.subscribe()
    }

    /// Sends one event of a request this node received to every handler,
    /// subscriber, the log and the metrics.
    pub fn emit(&self, kind: Kind, target: &str, request_id: &str, body: EventBody) {
        self.emit_as(Role::Coordinator, kind, target, request_id, body);
    }

    /// [`Telemetry::emit`] for a node in `role`.
    pub fn emit_as(&self, role: Role, kind: Kind, target: &str, request_id: &str, body: EventBody) {
        self.emit_spanned(role, kind, target, request_id, body);
    }

    /// [`Telemetry::emit_as`], answering the span a `start` event opened.
    fn emit_spanned(
        &self,
        role: Role,
        kind: Kind,
        target: &str,
        request_id: &str,
        body: EventBody,
    ) -> Option<tracing::Span> {
        let event = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            role,
            kind,
            target: target.to_string(),
            request_id: request_id.to_string(),
            body,
        };
        let opened = match &event.body {
            EventBody::Start { .. } => {
                let span = self.open_span(&event);
                span.in_scope(|| record(&event));
                Some(span)
            }
            EventBody::Stop { .. } | EventBody::Exception { .. } => {
                match self.close_span(&event) {
                    Some(span) => span.in_scope(|| record(&event)),
                    None => record(&event),
                }
                None
            }
            _ => {
                record(&event);
                None
            }
        };
        for (id, handler) in self.handlers.read().unwrap_or_else(PoisonError::into_inner).iter() {
            if catch_unwind(AssertUnwindSafe(|| handler(&event))).is_err() {
                tracing::error!(handler = id.0, event = event.name(), "a telemetry handler panicked");
            }
        }
        // No subscriber is not an error: the feed is there for whoever listens.
        let _ = self.feed.send(event);
        opened
    }

    /// Opens the span of the step `start` begins: a child of its request's
    /// root step on this node when one is open, else of the current span (a
    /// cluster phase, whose parent may be another member's span).
    fn open_span(&self, start: &Event) -> tracing::Span {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        let root =
            spans.iter().find(|open| open.root && open.role == start.role && open.request_id == start.request_id);
        let is_root = root.is_none();
        let parent = root.map(|open| open.span.id()).unwrap_or_else(|| tracing::Span::current().id());
        let span = tracing::info_span!(
            target: "zest::reload",
            parent: parent,
            RELOAD_SPAN,
            zest.request_id = start.request_id.as_str(),
            zest.kind = start.kind.as_str(),
            zest.target = start.target.as_str(),
            zest.role = start.role.as_str(),
            zest.status = tracing::field::Empty,
            zest.duration_ms = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_message = tracing::field::Empty,
        );
        if spans.len() >= OPEN_SPANS {
            spans.remove(0);
        }
        spans.push(OpenSpan {
            role: start.role,
            kind: start.kind,
            target: start.target.clone(),
            request_id: start.request_id.clone(),
            root: is_root,
            span: span.clone(),
        });
        span
    }

    /// Closes the span of the step `end` (a stop or exception) ends, with its
    /// status; the end of a request's root step closes what it left open.
    fn close_span(&self, end: &Event) -> Option<tracing::Span> {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        let at = spans.iter().rposition(|open| {
            open.role == end.role
                && open.kind == end.kind
                && open.target == end.target
                && open.request_id == end.request_id
        })?;
        let open = spans.remove(at);
        if open.root {
            spans.retain(|other| other.role != open.role || other.request_id != open.request_id);
        }
        drop(spans);
        let span = open.span;
        match &end.body {
            EventBody::Stop { duration, status } => {
                span.record("zest.status", status.as_str());
                span.record("zest.duration_ms", duration.as_secs_f64() * 1e3);
                span.record("otel.status_code", if *status == Status::Error { "error" } else { "ok" });
            }
            EventBody::Exception { duration, error } => {
                span.record("zest.status", "exception");
                span.record("zest.duration_ms", duration.as_secs_f64() * 1e3);
                span.record("otel.status_code", "error");
                span.record("otel.status_message", error.as_str());
            }
            _ => {}
        }
        Some(span)
    }

    /// Runs one reload step of a request this node received between a `start`
    /// and a `stop` event, timed from now. A panic inside the step becomes an
    /// `exception` event and an `internal_error` in the result.
    pub fn step(
        &self,
        kind: Kind,
        target: &str,
        request_id: &str,
        step: impl FnOnce() -> ReloadResult,
    ) -> ReloadResult {
        self.step_since(Role::Coordinator, Instant::now(), kind, target, request_id, step)
    }

    /// [`Telemetry::step`] for a node in `role`, timed from `since` (when the
    /// request arrived, before it waited for the lock): the result's
    /// `duration` and the `stop` event's (so the histogram's) are the same.
    pub fn step_since(
        &self,
        role: Role,
        since: Instant,
        kind: Kind,
        target: &str,
        request_id: &str,
        step: impl FnOnce() -> ReloadResult,
    ) -> ReloadResult {
        let start = EventBody::Start { system_time: SystemTime::now() };
        let span = self.emit_spanned(role, kind, target, request_id, start).unwrap_or_else(tracing::Span::none);
        match catch_unwind(AssertUnwindSafe(|| span.in_scope(step))) {
            Ok(mut result) => {
                result.duration = since.elapsed();
                let body = EventBody::Stop { duration: result.duration, status: result.status() };
                self.emit_as(role, kind, target, request_id, body);
                result
            }
            Err(panic) => {
                let error = panic_message(&panic);
                let duration = since.elapsed();
                self.emit_as(role, kind, target, request_id, EventBody::Exception { duration, error: error.clone() });
                let mut result = ReloadResult::new(kind, target);
                result.errors.push(Failure::new(target, Reason::InternalError, format!("the step panicked: {error}")));
                result.duration = duration;
                result
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        message.to_string()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// `zest_reloads_total{kind,status,role}`.
pub const RELOADS: &str = "zest_reloads_total";
/// `zest_reload_duration_seconds{kind,role}`.
pub const RELOAD_SECONDS: &str = "zest_reload_duration_seconds";
/// `zest_reload_reverts_total{kind}`.
pub const REVERTS: &str = "zest_reload_reverts_total";
/// `zest_cluster_prepares_total{role}`.
pub const CLUSTER_PREPARES: &str = "zest_cluster_prepares_total";
/// `zest_cluster_commits_total{role}`.
pub const CLUSTER_COMMITS: &str = "zest_cluster_commits_total";
/// `zest_cluster_aborts_total{reason,role}`.
pub const CLUSTER_ABORTS: &str = "zest_cluster_aborts_total";
/// `zest_cluster_reload_duration_seconds{phase}`.
pub const CLUSTER_RELOAD_SECONDS: &str = "zest_cluster_reload_duration_seconds";
/// `zest_cluster_builds_served_total`.
pub const BUILDS_SERVED: &str = "zest_cluster_builds_served_total";

/// The buckets of every duration histogram, in seconds (histograms, unlike
/// summaries, add up across members). Chosen from measured reload times
/// (`docs/control.md`, "Buckets"): a failed reload takes about 0.2 ms, a warm
/// one 0.06–0.7 ms (14 ms at 10,000 functions), a cold one 1–110 ms (up to
/// 1 s at 10,000 functions), a cluster reload of three members 6–20 ms, 0.2–2.2 s
/// when every member compiles a large new build. So from 0.05 ms, no bucket
/// more than 1.5 times the one below it between 0.1 and 100 ms (a quantile
/// read from them is off by less than half of it), then coarser, with bounds
/// just past the 5 s drain and 10 s prepare timeouts, which slow reloads sit
/// on. Above 60 s (long builds) only `+Inf`.
pub const DURATION_BUCKETS: [f64; 35] = [
    0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005,
    0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0,
    30.0, 60.0,
];

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Histogram,
}

/// Every metric recorded through the `metrics` facade, with its type and
/// help text (the `# HELP` line); `docs/control.md` ("Metrics") says the
/// same at more length. A node's `/metrics` adds `zest_calls_total` and
/// `zest_module_version_info`, written from the ledger.
pub const METRICS: [(&str, MetricType, &str); 8] = [
    (
        RELOADS,
        MetricType::Counter,
        "Reload operations that ended (one per request, one more per child step of scope all), \
         by kind, status (ok, partial, error, exception) and role (coordinator: this node received \
         the request; member: its part of another member's cluster reload, or a catch-up).",
    ),
    (
        RELOAD_SECONDS,
        MetricType::Histogram,
        "How long reload operations took, as their results' duration_ms says: from the request's \
         arrival (before the lock) to its result, etcd and the other members included.",
    ),
    (
        REVERTS,
        MetricType::Counter,
        "Reloads on trial that failed too often and were rolled back by the node itself \
         (zest.reload.reverted), by kind.",
    ),
    (
        CLUSTER_PREPARES,
        MetricType::Counter,
        "Cluster reloads that entered their two phases here: on the coordinator, each request it \
         staged; on a member, each cluster.prepare it began to stage. Each ends in one commit or one abort.",
    ),
    (
        CLUSTER_COMMITS,
        MetricType::Counter,
        "Cluster reloads committed: on the coordinator, etcd recorded them; on a member, it applied \
         a prepared request.",
    ),
    (
        CLUSTER_ABORTS,
        MetricType::Counter,
        "Cluster reloads aborted before any swap, by reason (build_failed, prepare_failed, \
         node_unreachable, lease_lost, cluster_unavailable, timeout) and role.",
    ),
    (
        CLUSTER_RELOAD_SECONDS,
        MetricType::Histogram,
        "Cluster reloads end to end on their coordinator, from the request's arrival to the \
         answer of every target, by phase (committed, aborted).",
    ),
    (BUILDS_SERVED, MetricType::Counter, "Builds this member served to other members (GET /artifacts/<sha256>)."),
];

/// The kinds a reload event can have.
const EVENT_KINDS: [Kind; 5] = [Kind::Module, Kind::App, Kind::Extension, Kind::CodeChange, Kind::System];

/// The statuses `zest_reloads_total` counts: a result's, or `exception`.
const STATUSES: [&str; 4] = ["ok", "partial", "error", "exception"];

/// Gives every metric its help text and makes each series that can appear
/// exist at 0, for the label values known in advance, so that `increase()`
/// sees a series' first event (a series born at 1 hides it). The cluster
/// metrics' series and the `member` role only when the node is a cluster member.
/// Call it once the recorder is installed.
pub fn describe(cluster: bool) {
    for (name, kind, help) in METRICS {
        match kind {
            MetricType::Counter => metrics::describe_counter!(name, metrics::Unit::Count, help),
            MetricType::Histogram => metrics::describe_histogram!(name, metrics::Unit::Seconds, help),
        }
    }
    let roles: &[Role] = if cluster { &Role::ALL } else { &[Role::Coordinator] };
    for kind in EVENT_KINDS.map(Kind::as_str) {
        for role in roles.iter().map(|role| role.as_str()) {
            for status in STATUSES {
                metrics::counter!(RELOADS, "kind" => kind, "status" => status, "role" => role).increment(0);
            }
            // Registered, so rendered with empty buckets.
            let _ = metrics::histogram!(RELOAD_SECONDS, "kind" => kind, "role" => role);
        }
        metrics::counter!(REVERTS, "kind" => kind).increment(0);
    }
    if !cluster {
        return;
    }
    for role in Role::ALL.map(Role::as_str) {
        metrics::counter!(CLUSTER_PREPARES, "role" => role).increment(0);
        metrics::counter!(CLUSTER_COMMITS, "role" => role).increment(0);
        for cause in AbortCause::ALL.map(AbortCause::as_str) {
            metrics::counter!(CLUSTER_ABORTS, "reason" => cause, "role" => role).increment(0);
        }
    }
    for phase in [Phase::Committed, Phase::Aborted].map(Phase::as_str) {
        let _ = metrics::histogram!(CLUSTER_RELOAD_SECONDS, "phase" => phase);
    }
    metrics::counter!(BUILDS_SERVED).increment(0);
}

/// Counts one step of a cluster reload this member runs for a coordinator.
pub fn count_member(request_id: &str, step: MemberStep) {
    let role = Role::Member.as_str();
    match step {
        MemberStep::Prepare => {
            tracing::debug!(target: "zest::cluster", request_id, "preparing");
            metrics::counter!(CLUSTER_PREPARES, "role" => role).increment(1);
        }
        MemberStep::Commit => {
            tracing::debug!(target: "zest::cluster", request_id, "committing");
            metrics::counter!(CLUSTER_COMMITS, "role" => role).increment(1);
        }
        MemberStep::Abort(cause) => {
            tracing::debug!(target: "zest::cluster", request_id, reason = cause.as_str(), "dropping a prepared request");
            metrics::counter!(CLUSTER_ABORTS, "reason" => cause.as_str(), "role" => role).increment(1);
        }
    }
}

/// Times a cluster reload end to end on its coordinator.
pub fn time_cluster_reload(duration: Duration, phase: Phase) {
    metrics::histogram!(CLUSTER_RELOAD_SECONDS, "phase" => phase.as_str()).record(duration.as_secs_f64());
}

/// The `tracing` and `metrics` side of an event.
fn record(event: &Event) {
    let (kind, target, request_id) = (event.kind.as_str(), event.target.as_str(), event.request_id.as_str());
    let role = event.role.as_str();
    match &event.body {
        EventBody::Start { .. } => {
            tracing::info!(target: "zest::reload", seq = event.seq, kind, reload_target = target, request_id, role,
                "reload started");
        }
        EventBody::Stop { duration, status } => {
            let status = status.as_str();
            tracing::info!(
                target: "zest::reload",
                seq = event.seq, kind, reload_target = target, request_id, role, status,
                duration_ms = duration.as_secs_f64() * 1e3,
                "reload finished"
            );
            metrics::counter!(RELOADS, "kind" => kind, "status" => status, "role" => role).increment(1);
            metrics::histogram!(RELOAD_SECONDS, "kind" => kind, "role" => role).record(duration.as_secs_f64());
        }
        EventBody::Exception { duration, error } => {
            tracing::error!(
                target: "zest::reload",
                seq = event.seq, kind, reload_target = target, request_id, role, error,
                duration_ms = duration.as_secs_f64() * 1e3,
                "reload step panicked"
            );
            metrics::counter!(RELOADS, "kind" => kind, "status" => "exception", "role" => role).increment(1);
            metrics::histogram!(RELOAD_SECONDS, "kind" => kind, "role" => role).record(duration.as_secs_f64());
        }
        EventBody::BuildOutput { stream, line } => {
            tracing::debug!(target: "zest::build", request_id, stream = stream.as_str(), "{line}");
        }
        EventBody::Reverted { calls, failures, status } => {
            tracing::warn!(target: "zest::reload", request_id, kind, reload_target = target, calls, failures,
                status = status.as_str(), "reload reverted: its trial failed");
            metrics::counter!(REVERTS, "kind" => kind).increment(1);
        }
        EventBody::Permanent { calls, failures } => {
            tracing::info!(target: "zest::reload", request_id, kind, reload_target = target, calls, failures,
                "reload permanent: its trial ended");
        }
        EventBody::ClusterPrepare { nodes } => {
            tracing::info!(target: "zest::cluster", request_id, nodes = ?nodes, "cluster prepare");
            metrics::counter!(CLUSTER_PREPARES, "role" => role).increment(1);
        }
        EventBody::ClusterCommit { nodes, revision } => {
            tracing::info!(target: "zest::cluster", request_id, nodes = ?nodes, revision, "cluster commit");
            metrics::counter!(CLUSTER_COMMITS, "role" => role).increment(1);
        }
        EventBody::ClusterAbort { nodes, reason, message } => {
            tracing::warn!(target: "zest::cluster", request_id, nodes = ?nodes, reason = reason.as_str(), message, "cluster abort");
            metrics::counter!(CLUSTER_ABORTS, "reason" => reason.as_str(), "role" => role).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_step_emits_start_and_stop_with_its_status_to_handlers_and_the_feed() {
        let telemetry = Telemetry::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let id = telemetry.attach(move |event| sink.lock().unwrap().push((event.name(), event.seq)));
        let mut feed = telemetry.subscribe();
        let result = telemetry.step(Kind::App, "demo", "r-1", || {
            let mut result = ReloadResult::new(Kind::App, "demo");
            result.skipped.push(crate::reason::Skip { target: "clock".into(), reason: Reason::InUse });
            result
        });
        assert_eq!(result.status(), Status::Partial);
        assert_eq!(*seen.lock().unwrap(), [("zest.reload.start", 1), ("zest.reload.stop", 2)]);
        let start = feed.try_recv().unwrap();
        assert_eq!((start.kind, start.target.as_str(), start.request_id.as_str()), (Kind::App, "demo", "r-1"));
        let stop = feed.try_recv().unwrap();
        assert!(matches!(stop.body, EventBody::Stop { status: Status::Partial, .. }), "{stop:?}");

        assert!(telemetry.detach(id));
        assert!(!telemetry.detach(id));
        telemetry.step(Kind::App, "demo", "r-2", || ReloadResult::new(Kind::App, "demo"));
        assert_eq!(seen.lock().unwrap().len(), 2, "a detached handler hears nothing");
    }

    /// One span as [`Spans`] saw it.
    #[derive(Debug, Clone, Default, PartialEq)]
    struct SeenSpan {
        name: &'static str,
        request_id: String,
        target: String,
        /// The index of its parent among the spans seen.
        parent: Option<usize>,
        status: Option<String>,
        closed: bool,
    }

    /// A subscriber layer keeping every span's fields, parent and end.
    #[derive(Clone, Default)]
    struct Spans(Arc<Mutex<Vec<SeenSpan>>>);

    struct Index(usize);

    impl tracing::field::Visit for SeenSpan {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            match field.name() {
                "zest.request_id" => self.request_id = value.to_string(),
                "zest.target" => self.target = value.to_string(),
                "zest.status" => self.status = Some(value.to_string()),
                _ => {}
            }
        }

        fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
    }

    impl<S> tracing_subscriber::Layer<S> for Spans
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let span = ctx.span(id).unwrap();
            let parent = span.parent().and_then(|p| p.extensions().get::<Index>().map(|index| index.0));
            let mut seen = SeenSpan { name: attrs.metadata().name(), parent, ..SeenSpan::default() };
            attrs.record(&mut seen);
            let mut spans = self.0.lock().unwrap();
            span.extensions_mut().insert(Index(spans.len()));
            spans.push(seen);
        }

        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let index = ctx.span(id).unwrap().extensions().get::<Index>().unwrap().0;
            values.record(&mut self.0.lock().unwrap()[index]);
        }

        fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
            let index = ctx.span(&id).unwrap().extensions().get::<Index>().unwrap().0;
            self.0.lock().unwrap()[index].closed = true;
        }
    }

    #[test]
    fn each_step_is_a_span_from_start_to_stop_with_children_inside_their_request() {
        use tracing_subscriber::layer::SubscriberExt;
        let telemetry = Telemetry::default();
        let spans = Spans::default();
        let subscriber = tracing_subscriber::registry().with(spans.clone());
        tracing::subscriber::with_default(subscriber, || {
            let start = || EventBody::Start { system_time: SystemTime::now() };
            // Another request's part, started and never stopped here.
            telemetry.emit_as(Role::Member, Kind::App, "other", "r-0", start());
            telemetry.step(Kind::System, "system", "r-1", || {
                telemetry.emit(Kind::App, "demo", "r-1", start());
                telemetry.emit(Kind::Extension, "x.wat", "r-1", start());
                let stop = EventBody::Stop { duration: Duration::from_millis(2), status: Status::Error };
                telemetry.emit(Kind::App, "demo", "r-1", stop);
                // x.wat never stops: the request's end closes it.
                ReloadResult::new(Kind::System, "system")
            });
            // A member's part: started, its children started later (outside
            // any span of it), then stopped.
            telemetry.emit_as(Role::Member, Kind::System, "system", "r-2", start());
            telemetry.emit_as(Role::Member, Kind::App, "demo", "r-2", start());
            let stop = EventBody::Stop { duration: Duration::from_millis(1), status: Status::Ok };
            telemetry.emit_as(Role::Member, Kind::System, "system", "r-2", stop);
        });
        let seen = spans.0.lock().unwrap().clone();
        let summary: Vec<_> = seen
            .iter()
            .map(|s| (s.name, s.request_id.as_str(), s.target.as_str(), s.parent, s.status.as_deref(), s.closed))
            .collect();
        assert_eq!(
            summary,
            [
                (RELOAD_SPAN, "r-0", "other", None, None, false),
                (RELOAD_SPAN, "r-1", "system", None, Some("ok"), true),
                (RELOAD_SPAN, "r-1", "demo", Some(1), Some("error"), true),
                (RELOAD_SPAN, "r-1", "x.wat", Some(1), None, true),
                (RELOAD_SPAN, "r-2", "system", None, Some("ok"), true),
                (RELOAD_SPAN, "r-2", "demo", Some(4), None, true),
            ]
        );
        let open = telemetry.spans.lock().unwrap();
        assert_eq!(open.iter().map(|o| o.request_id.as_str()).collect::<Vec<_>>(), ["r-0"]);
    }

    #[test]
    fn a_panicking_step_is_an_exception_and_an_error_in_the_result() {
        let telemetry = Telemetry::default();
        let mut feed = telemetry.subscribe();
        telemetry.attach(|_| panic!("a broken handler"));
        let result = telemetry.step(Kind::Module, "clock", "r-9", || panic!("boom"));
        assert_eq!(result.status(), Status::Error);
        assert_eq!(result.errors[0].reason, Reason::InternalError);
        assert!(result.errors[0].message.contains("boom"), "{}", result.errors[0].message);
        assert_eq!(feed.try_recv().unwrap().name(), "zest.reload.start");
        let exception = feed.try_recv().unwrap();
        assert!(matches!(&exception.body, EventBody::Exception { error, .. } if error == "boom"), "{exception:?}");
    }
}
