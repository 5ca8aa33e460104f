//! Telemetry (CONTRACT.md §6): one closed event type, emitted for every reload
//! operation and every child step of scope `all`, and delivered to
//!
//! - in-process handlers ([`Telemetry::attach`] / [`Telemetry::detach`]);
//! - a broadcast feed ([`Telemetry::subscribe`]) that the control plane exposes
//!   over WebSocket;
//! - `tracing` (target `zest::reload`);
//! - the `metrics` facade: `zest_reloads_total{kind,status}` and
//!   `zest_reload_duration_seconds{kind}`, which a Prometheus exporter serves.
//!
//! Besides the three reload events, `zest.build.output` carries each line a build
//! prints (`compile: true`) as it arrives, so a client can stream it, and the
//! coordinator of a cluster reload emits `zest.cluster.prepare`, `.commit` and
//! `.abort` (counted as `zest_cluster_prepares_total`, `zest_cluster_commits_total`
//! and `zest_cluster_aborts_total{reason}`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;

use crate::reason::{Failure, Reason};
pub use crate::report::Stream;
use crate::report::{Kind, ReloadResult, Status};

/// How many events the broadcast feed buffers for a slow subscriber before it
/// starts missing the oldest (a subscriber is told how many it missed).
const FEED_CAPACITY: usize = 1024;

/// One telemetry event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Increases by one with every event of this node.
    pub seq: u64,
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
    ClusterAbort { nodes: Vec<String>, reason: Reason, message: String },
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

    /// Sends one event to every handler, subscriber, the log and the metrics.
    pub fn emit(&self, kind: Kind, target: &str, request_id: &str, body: EventBody) {
        let event = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            kind,
            target: target.to_string(),
            request_id: request_id.to_string(),
            body,
        };
        record(&event);
        for (id, handler) in self.handlers.read().unwrap_or_else(PoisonError::into_inner).iter() {
            if catch_unwind(AssertUnwindSafe(|| handler(&event))).is_err() {
                tracing::error!(handler = id.0, event = event.name(), "a telemetry handler panicked");
            }
        }
        // No subscriber is not an error: the feed is there for whoever listens.
        let _ = self.feed.send(event);
    }

    /// Runs one reload step between a `start` and a `stop` event. A panic inside
    /// the step becomes an `exception` event and an `internal_error` in the result.
    pub fn step(
        &self,
        kind: Kind,
        target: &str,
        request_id: &str,
        step: impl FnOnce() -> ReloadResult,
    ) -> ReloadResult {
        self.emit(kind, target, request_id, EventBody::Start { system_time: SystemTime::now() });
        let started = Instant::now();
        match catch_unwind(AssertUnwindSafe(step)) {
            Ok(result) => {
                let body = EventBody::Stop { duration: started.elapsed(), status: result.status() };
                self.emit(kind, target, request_id, body);
                result
            }
            Err(panic) => {
                let error = panic_message(&panic);
                let duration = started.elapsed();
                self.emit(kind, target, request_id, EventBody::Exception { duration, error: error.clone() });
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

/// The `tracing` and `metrics` side of an event.
fn record(event: &Event) {
    let (kind, target, request_id) = (event.kind.as_str(), event.target.as_str(), event.request_id.as_str());
    match &event.body {
        EventBody::Start { .. } => {
            tracing::info!(target: "zest::reload", seq = event.seq, kind, reload_target = target, request_id, "reload started");
        }
        EventBody::Stop { duration, status } => {
            let status = status.as_str();
            tracing::info!(
                target: "zest::reload",
                seq = event.seq, kind, reload_target = target, request_id, status,
                duration_ms = duration.as_secs_f64() * 1e3,
                "reload finished"
            );
            metrics::counter!("zest_reloads_total", "kind" => kind, "status" => status).increment(1);
            metrics::histogram!("zest_reload_duration_seconds", "kind" => kind).record(duration.as_secs_f64());
        }
        EventBody::Exception { duration, error } => {
            tracing::error!(
                target: "zest::reload",
                seq = event.seq, kind, reload_target = target, request_id, error,
                duration_ms = duration.as_secs_f64() * 1e3,
                "reload step panicked"
            );
            metrics::counter!("zest_reloads_total", "kind" => kind, "status" => "exception").increment(1);
            metrics::histogram!("zest_reload_duration_seconds", "kind" => kind).record(duration.as_secs_f64());
        }
        EventBody::BuildOutput { stream, line } => {
            tracing::debug!(target: "zest::build", request_id, stream = stream.as_str(), "{line}");
        }
        EventBody::Reverted { calls, failures, status } => {
            tracing::warn!(target: "zest::reload", request_id, kind, reload_target = target, calls, failures,
                status = status.as_str(), "reload reverted: its trial failed");
            metrics::counter!("zest_reload_reverts_total", "kind" => kind).increment(1);
        }
        EventBody::Permanent { calls, failures } => {
            tracing::info!(target: "zest::reload", request_id, kind, reload_target = target, calls, failures,
                "reload permanent: its trial ended");
        }
        EventBody::ClusterPrepare { nodes } => {
            tracing::info!(target: "zest::cluster", request_id, nodes = ?nodes, "cluster prepare");
            metrics::counter!("zest_cluster_prepares_total").increment(1);
        }
        EventBody::ClusterCommit { nodes, revision } => {
            tracing::info!(target: "zest::cluster", request_id, nodes = ?nodes, revision, "cluster commit");
            metrics::counter!("zest_cluster_commits_total").increment(1);
        }
        EventBody::ClusterAbort { nodes, reason, message } => {
            tracing::warn!(target: "zest::cluster", request_id, nodes = ?nodes, reason = reason.as_str(), message, "cluster abort");
            metrics::counter!("zest_cluster_aborts_total", "reason" => reason.as_str()).increment(1);
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
