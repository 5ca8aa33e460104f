//! The control plane (CONTRACT.md §4): JSON-RPC 2.0 over HTTP `POST /` and
//! WebSocket `/` on one address. jsonrpsee runs the methods (batches, params);
//! zest owns everything around them:
//!
//! - the accept loop (`accept_loop`): the connection limit, a header and idle
//!   timeout on every HTTP connection ([`READ_TIMEOUT`]);
//! - the [`Gate`], one tower layer in front of jsonrpsee: `GET /health` (no
//!   auth), `GET /metrics`, `GET /artifacts/<sha256>` (builds, for other
//!   members), the dashboard's files (`ui.rs`); the token of every request
//!   and WebSocket handshake resolved into a [`Caller`] the methods check;
//!   request bodies read whole (413 past the limit however they are sent, 408
//!   when too slow) and vetted (`frame.rs`) so that every message gets an
//!   answer with `data.code`;
//! - the WebSocket transport (`ws.rs`): frames vetted the same way, then run
//!   through jsonrpsee as HTTP requests; the event subscription served there.
//!
//! On a cluster member the same server carries the node-to-node methods
//! (`cluster.prepare`, `.commit`, `.settle`, `.abort`, scope `cluster`) and
//! `system.reload` goes through the cluster (`crate::cluster`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use jsonrpsee::core::middleware::{Batch, BatchEntry, Notification, RpcServiceBuilder, RpcServiceT};
use jsonrpsee::core::BoxError;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse, RpcModule, Server, ServerConfig, ServerHandle};
use jsonrpsee::types::{ErrorObjectOwned, Params, Request};
use jsonrpsee::{Extensions, PendingSubscriptionSink};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tower::{Layer, Service};
use zest_runtime::{CallError, LockError, Node, ProcessError, ReloadError, Serving};

use crate::auth::{bearer, Caller, Scope, Tokens};
use crate::cluster::{Cluster, Refusal};
use crate::frame;
use crate::protocol::{respond, METHODS};
pub use crate::protocol::{EVENT_NOTIFICATION, SUBSCRIBE, UNSUBSCRIBE};
use crate::wire::{self, Code, NodeInfo, Nodes};

/// Where [`KnownMethods`] sends calls of unknown methods, so their error carries
/// `data.code` on every transport.
const NOT_FOUND_METHOD: &str = "zest.method_not_found";

const TOKEN_REQUIRED: &str = "a valid bearer token is required (Authorization: Bearer <token>)";

/// A JSON-RPC error of §4, with its stable `data.code`.
pub fn error(code: Code, message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(code.numeric(), message.into(), Some(json!({"code": code.as_str()})))
}

fn allowed(extensions: &Extensions, scope: Scope) -> Result<(), ErrorObjectOwned> {
    let caller = extensions.get::<Caller>().cloned().unwrap_or_default();
    caller.check(scope).map_err(|code| match code {
        Code::Unauthorized => error(code, TOKEN_REQUIRED),
        _ => error(code, format!("this token lacks the `{}` scope", scope.as_str())),
    })
}

/// Params as one JSON value (absent: null).
fn params_value(params: &Params<'_>) -> Result<Value, ErrorObjectOwned> {
    match params.as_str() {
        None => Ok(Value::Null),
        Some(text) => serde_json::from_str(text).map_err(|err| error(Code::InvalidParams, err.to_string())),
    }
}

/// Params as an object holding only the keys `method` knows (absent: empty).
fn known_params(params: &Params<'_>, method: &str, known: &[&str]) -> Result<Value, ErrorObjectOwned> {
    let value = params_value(params)?;
    let empty = serde_json::Map::new();
    let object = wire::params_object(method, &value, known, &empty).map_err(|m| error(Code::InvalidParams, m))?;
    Ok(Value::Object(object.clone()))
}

fn object_field<'a>(params: &'a Value, key: &str) -> Result<&'a str, ErrorObjectOwned> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| error(Code::InvalidParams, format!("{key} is required (a string)")))
}

struct Ctx {
    node: Arc<Node>,
    info: NodeInfo,
    cluster: Option<Arc<Cluster>>,
}

fn methods(node: Arc<Node>, info: NodeInfo, cluster: Option<Arc<Cluster>>) -> RpcModule<Ctx> {
    let mut module = RpcModule::new(Ctx { node, info, cluster });
    module
        .register_method(NOT_FOUND_METHOD, |_params, _ctx, extensions| {
            let name = extensions.get::<UnknownMethod>().map_or(NOT_FOUND_METHOD, |unknown| unknown.0.as_str());
            Err::<(), _>(error(Code::MethodNotFound, format!("Method not found: {name}")))
        })
        .expect("method names are unique");
    module
        .register_blocking_method("system.reload", |params, ctx, extensions| {
            allowed(&extensions, Scope::Admin)?;
            let (request, nodes) =
                wire::reload_request(&params_value(&params)?).map_err(|m| error(Code::InvalidParams, m))?;
            let conflict = || error(Code::Conflict, "A reload is already in progress");
            if let Some(cluster) = &ctx.cluster {
                return match cluster.reload(&request, &nodes) {
                    Ok(result) => Ok(wire::result(&result)),
                    Err(Refusal::Conflict) => Err(conflict()),
                    Err(Refusal::InvalidParams(message)) => Err(error(Code::InvalidParams, message)),
                };
            }
            if let Nodes::Listed(_) = nodes {
                return Err(error(Code::InvalidParams, "nodes: this node is not in a cluster (no [cluster] section)"));
            }
            match ctx.node.reload(&request) {
                Ok(result) => Ok(wire::result(&result)),
                Err(ReloadError::Lock(LockError::Conflict)) => Err(conflict()),
                Err(ReloadError::Lock(err)) => Err(error(Code::Conflict, err.to_string())),
            }
        })
        .expect("method names are unique");
    module
        .register_method("system.history", |params, ctx, extensions| {
            allowed(extensions, Scope::Read)?;
            let (module, limit) =
                wire::history_request(&params_value(&params)?).map_err(|m| error(Code::InvalidParams, m))?;
            Ok::<_, ErrorObjectOwned>(wire::history(&ctx.node.history(module.as_deref(), limit)))
        })
        .expect("method names are unique");
    module
        .register_blocking_method("system.rollback", |params, ctx, extensions| {
            allowed(&extensions, Scope::Admin)?;
            let (request, nodes) =
                wire::rollback_request(&params_value(&params)?).map_err(|m| error(Code::InvalidParams, m))?;
            let outcome = match (&ctx.cluster, &nodes) {
                (Some(cluster), Nodes::All | Nodes::Listed(_)) => cluster.rollback(&request, &nodes),
                (None, Nodes::Listed(_)) => {
                    return Err(error(
                        Code::InvalidParams,
                        "nodes: this node is not in a cluster (no [cluster] section)",
                    ))
                }
                _ => ctx.node.rollback(&request).map_err(|_| Refusal::Conflict),
            };
            match outcome {
                Ok(result) => Ok(wire::result(&result)),
                Err(Refusal::Conflict) => Err(error(Code::Conflict, "A reload is already in progress")),
                Err(Refusal::InvalidParams(message)) => Err(error(Code::InvalidParams, message)),
            }
        })
        .expect("method names are unique");
    module
        .register_blocking_method("system.unload", |params, ctx, extensions| {
            allowed(&extensions, Scope::Admin)?;
            let request = wire::unload_request(&params_value(&params)?).map_err(|m| error(Code::InvalidParams, m))?;
            if let Some(cluster) = &ctx.cluster {
                // Every member, and the desired state: unloading on one
                // member alone would be undone by its next catch-up.
                return match cluster.unload(&request) {
                    Ok(result) => Ok(wire::result(&result)),
                    Err(Refusal::Conflict) => Err(error(Code::Conflict, "A reload is already in progress")),
                    Err(Refusal::InvalidParams(message)) => Err(error(Code::InvalidParams, message)),
                };
            }
            match ctx.node.unload(&request) {
                Ok(result) => Ok(wire::result(&result)),
                Err(ReloadError::Lock(LockError::Conflict)) => {
                    Err(error(Code::Conflict, "A reload is already in progress"))
                }
                Err(ReloadError::Lock(err)) => Err(error(Code::Conflict, err.to_string())),
            }
        })
        .expect("method names are unique");
    module
        .register_blocking_method("system.promote", |params, ctx, extensions| {
            allowed(&extensions, Scope::Admin)?;
            let (target, options) =
                wire::promote_request(&params_value(&params)?).map_err(|m| error(Code::InvalidParams, m))?;
            match ctx.node.promote(&target, &options) {
                Ok(result) => Ok(wire::result(&result)),
                Err(_) => Err(error(Code::Conflict, "A reload is already in progress")),
            }
        })
        .expect("method names are unique");
    module
        .register_method("system.status", |params, ctx, extensions| {
            allowed(extensions, Scope::Read)?;
            known_params(&params, "system.status", &[])?;
            let mut status = wire::status(&ctx.node.status(), &ctx.info);
            // The first status finds the source toolchains, running each tool
            // once (`componentize-qjs --help` starts node, 90 ms here on a
            // quiet machine) under a lock a second status waits for: the
            // runtime is told this worker blocks, as for `module.call`, so the
            // connections, the etcd client and the timers go on meanwhile.
            status["toolchains"] = wire::toolchains(&tokio::task::block_in_place(|| ctx.node.toolchains()));
            if let Some(cluster) = &ctx.cluster {
                status["cluster"] = cluster.status();
            }
            Ok::<_, ErrorObjectOwned>(status)
        })
        .expect("method names are unique");
    for method in ["cluster.prepare", "cluster.commit", "cluster.settle", "cluster.abort"] {
        module
            .register_async_method(method, move |params, ctx, extensions| async move {
                allowed(&extensions, Scope::Cluster)?;
                let Some(cluster) = ctx.cluster.clone() else {
                    return Err(error(Code::MethodNotFound, format!("{method}: this node is not in a cluster")));
                };
                let params = params_value(&params)?;
                let answer = match method {
                    "cluster.prepare" => cluster.prepare(params).await,
                    "cluster.commit" => cluster.commit(params).await,
                    "cluster.settle" => cluster.settle(params).await,
                    _ => cluster.abort(params).await,
                };
                answer.map_err(|message| error(Code::InvalidParams, message))
            })
            .expect("method names are unique");
    }
    module
        .register_method("module.call", |params, ctx, extensions| {
            // Calls are short (a deadline bounds them); run in place, telling the
            // runtime this worker blocks so other tasks move to another one.
            tokio::task::block_in_place(|| {
                allowed(extensions, Scope::Call)?;
                let params = known_params(&params, "module.call", &["module", "function", "args"])?;
                let (module, function) = (object_field(&params, "module")?, object_field(&params, "function")?);
                let args = params.get("args").map_or_else(|| "null".to_string(), Value::to_string);
                match ctx.node.call(module, function, &args) {
                    Ok(output) => Ok(RawValue::from_string(output).expect("outputs are checked JSON")),
                    Err(err @ (CallError::ModuleNotFound { .. } | CallError::FunctionNotFound { .. })) => {
                        Err(error(Code::NotFound, err.to_string()))
                    }
                    Err(err @ CallError::InvalidArgs { .. }) => Err(error(Code::InvalidParams, err.to_string())),
                    Err(err) => Err(error(Code::CallFailed, err.to_string())),
                }
            })
        })
        .expect("method names are unique");
    module
        .register_method("module.describe", |params, ctx, extensions| {
            allowed(extensions, Scope::Read)?;
            let params = known_params(&params, "module.describe", &["module"])?;
            let module = object_field(&params, "module")?;
            match ctx.node.describe(module) {
                Some(description) => Ok(wire::description(&description)),
                None => Err(error(Code::NotFound, format!("module `{module}` is not loaded"))),
            }
        })
        .expect("method names are unique");
    module
        .register_method("process.call", |params, ctx, extensions| {
            tokio::task::block_in_place(|| {
                allowed(extensions, Scope::Call)?;
                let params = known_params(&params, "process.call", &["process", "message", "timeout_ms"])?;
                let process = object_field(&params, "process")?;
                let message = params.get("message").map_or_else(|| "null".to_string(), Value::to_string);
                let timeout = match params.get("timeout_ms") {
                    None | Some(Value::Null) => ctx.node.config().limits.call_timeout,
                    Some(value) => match value.as_u64().filter(|ms| *ms > 0) {
                        Some(ms) => std::time::Duration::from_millis(ms),
                        None => return Err(error(Code::InvalidParams, "timeout_ms must be an integer ≥ 1")),
                    },
                };
                match ctx.node.call_process_timeout(process, &message, timeout) {
                    Ok(reply) => Ok(RawValue::from_string(reply).expect("replies are checked JSON")),
                    Err(err @ ProcessError::NotFound { .. }) => Err(error(Code::NotFound, err.to_string())),
                    Err(err @ ProcessError::InvalidJson { .. }) => Err(error(Code::InvalidParams, err.to_string())),
                    Err(err) => Err(error(Code::CallFailed, err.to_string())),
                }
            })
        })
        .expect("method names are unique");
    module
        .register_subscription(
            "system.subscribe_events",
            EVENT_NOTIFICATION,
            UNSUBSCRIBE,
            |_params, pending: PendingSubscriptionSink, ctx, extensions| async move {
                if let Err(err) = allowed(&extensions, Scope::Read) {
                    pending.reject(err).await;
                    return Ok(());
                }
                let mut feed = ctx.node.telemetry().subscribe();
                let sink = pending.accept().await?;
                loop {
                    let received = tokio::select! {
                        received = feed.recv() => received,
                        // Unsubscribed or disconnected: stop at once, not at the next event.
                        () = sink.closed() => return Ok(()),
                    };
                    let event = match received {
                        Ok(event) => event,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "an event subscriber fell behind; events were dropped for it");
                            continue;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                    };
                    let message = serde_json::value::to_raw_value(&wire::event(&event))?;
                    if sink.send(message).await.is_err() {
                        return Ok(());
                    }
                }
            },
        )
        .expect("method names are unique");
    module
}

/// The server's limits (`[control]`).
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Larger requests (HTTP bodies, WebSocket messages) are refused with 413 /
    /// `REQUEST_TOO_LARGE`.
    pub max_request_bytes: u32,
    /// Connections at once (HTTP and WebSocket); the last tenth (at least 16)
    /// is kept for HTTP requests and `admin` WebSockets.
    pub max_connections: u32,
}

/// How long a client may take to send a request's headers (and, idle between
/// requests, to start the next one) or its body.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The connection limits, shared by every connection.
#[derive(Clone)]
struct Connections {
    /// Every connection holds one of these while open.
    all: Arc<tokio::sync::Semaphore>,
    /// A WebSocket of a caller without `admin` also holds one of these:
    /// however many such sockets are open, the rest stays for everyone else.
    guests: Arc<tokio::sync::Semaphore>,
    max_request_bytes: u32,
}

impl Connections {
    fn new(limits: ServerLimits) -> Connections {
        let all = limits.max_connections.max(1) as usize;
        let reserve = (all / 10).max(16).min(all);
        Connections {
            all: Arc::new(tokio::sync::Semaphore::new(all)),
            guests: Arc::new(tokio::sync::Semaphore::new(all - reserve)),
            max_request_bytes: limits.max_request_bytes,
        }
    }
}

/// Starts the server on `listener` (bound beforehand, so that a cluster
/// member can advertise its address before it serves); `cluster` when the node
/// is a cluster member. Must run inside a tokio runtime.
pub fn start(
    node: Arc<Node>,
    listener: std::net::TcpListener,
    started_at: std::time::SystemTime,
    tokens: Arc<Tokens>,
    metrics: Option<PrometheusHandle>,
    limits: ServerLimits,
    cluster: Option<Arc<Cluster>>,
) -> std::io::Result<(ServerHandle, SocketAddr)> {
    // zest's own connection limits apply (`Connections`); jsonrpsee's would
    // count requests, and is set out of the way.
    let config = ServerConfig::builder()
        .max_request_body_size(limits.max_request_bytes)
        .max_response_body_size(u32::MAX)
        .max_connections(u32::MAX >> 1)
        .http_only()
        .build();
    let connections = Connections::new(limits);
    let (stop, handle) = jsonrpsee::server::stop_channel();
    let info = NodeInfo { listen: listener.local_addr()?.to_string(), started_at };
    let methods: jsonrpsee::Methods = methods(Arc::clone(&node), info, cluster).into();
    let gate = tower::ServiceBuilder::new().layer(GateLayer {
        tokens,
        metrics,
        node,
        connections: connections.clone(),
        stop: stop.clone(),
        methods: methods.clone(),
    });
    let rpc = RpcServiceBuilder::new().layer_fn(|inner| KnownMethods { inner });
    let builder =
        Server::builder().set_config(config).set_http_middleware(gate).set_rpc_middleware(rpc).to_service_builder();
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let shutdown = stop.clone();
    // One service per connection, its type erased here where it is known.
    let per_connection: Arc<dyn Fn() -> ConnectionService + Send + Sync> = Arc::new(move || {
        tower::util::BoxCloneService::new(tower::ServiceExt::map_err(
            builder.clone().build(methods.clone(), stop.clone()),
            Into::into,
        ))
    });
    tokio::spawn(accept_loop(listener, per_connection, shutdown, connections));
    Ok((handle, addr))
}

/// What serves one connection's requests.
type ConnectionService = tower::util::BoxCloneService<HttpRequest<HttpBody>, HttpResponse, BoxError>;

/// Accepts connections while the server runs; each is served on a task of its
/// own with a header and idle timeout ([`READ_TIMEOUT`]). Past the connection
/// limit a new connection is closed at once.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    per_connection: Arc<dyn Fn() -> ConnectionService + Send + Sync>,
    stop: jsonrpsee::server::StopHandle,
    connections: Connections,
) {
    let stopped = stop.clone().shutdown();
    tokio::pin!(stopped);
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stopped => break,
        };
        let socket = match accepted {
            Ok((socket, _)) => socket,
            Err(err) => {
                // Out of file descriptors, say: wait a moment rather than spin.
                if last_warning.is_none_or(|at| at.elapsed() > std::time::Duration::from_secs(5)) {
                    tracing::warn!(%err, "cannot accept a connection");
                    last_warning = Some(std::time::Instant::now());
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections.all).try_acquire_owned() else {
            if last_warning.is_none_or(|at| at.elapsed() > std::time::Duration::from_secs(5)) {
                tracing::warn!("the connection limit (control.max_connections) is reached; closing new connections");
                last_warning = Some(std::time::Instant::now());
            }
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let service = per_connection();
        let stop = stop.clone();
        tokio::spawn(serve_connection(socket, service, stop, permit));
    }
}

/// A connection's service as hyper calls it.
struct Hyper(ConnectionService);

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Hyper {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = <ConnectionService as Service<HttpRequest<HttpBody>>>::Future;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.0.clone().call(request.map(HttpBody::new))
    }
}

/// One connection, until it closes or the server stops (then gracefully).
async fn serve_connection(
    socket: tokio::net::TcpStream,
    service: ConnectionService,
    stop: jsonrpsee::server::StopHandle,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let service = Hyper(service);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(READ_TIMEOUT);
    let connection = http.serve_connection(hyper_util::rt::TokioIo::new(socket), service).with_upgrades();
    tokio::pin!(connection);
    let stopped = stop.shutdown();
    tokio::pin!(stopped);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = &mut stopped => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = served {
        tracing::debug!(%err, "a connection ended with an error");
    }
    drop(permit);
}

/// File descriptors besides connections: the node's files, etcd, peers.
const FILES_BESIDES_CONNECTIONS: u64 = 256;

/// Raises this process's open-file limit as far as the system allows, so
/// that `connections` can be open at once; returns how many can (fewer, with
/// a warning, when the limit is lower).
pub fn open_files_for(connections: u32) -> u32 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct we own.
    let available = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return connections;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let usable = available.saturating_sub(FILES_BESIDES_CONNECTIONS);
    if u64::from(connections) > usable {
        let usable = usable.max(32) as u32;
        tracing::warn!(
            configured = connections,
            open_file_limit = available,
            "control.max_connections is above what the open-file limit allows; using {usable}"
        );
        return usable;
    }
    connections
}

/// The name of an unknown method a request asked for.
#[derive(Debug, Clone)]
struct UnknownMethod(String);

/// Sends calls of unknown methods to [`NOT_FOUND_METHOD`] (single calls and
/// batch entries alike, over HTTP and WebSocket).
#[derive(Clone)]
struct KnownMethods<S> {
    inner: S,
}

fn redirect_unknown(request: &mut Request<'_>) {
    if !METHODS.contains(&request.method_name()) {
        let name = request.method_name().to_string();
        request.extensions.insert(UnknownMethod(name));
        request.method = NOT_FOUND_METHOD.into();
    }
}

impl<S> RpcServiceT for KnownMethods<S>
where
    S: RpcServiceT + Send + Sync + Clone + 'static,
{
    type MethodResponse = S::MethodResponse;
    type NotificationResponse = S::NotificationResponse;
    type BatchResponse = S::BatchResponse;

    fn call<'a>(&self, mut request: Request<'a>) -> impl Future<Output = Self::MethodResponse> + Send + 'a {
        redirect_unknown(&mut request);
        self.inner.call(request)
    }

    fn batch<'a>(&self, mut batch: Batch<'a>) -> impl Future<Output = Self::BatchResponse> + Send + 'a {
        for entry in batch.iter_mut() {
            if let Ok(BatchEntry::Call(request)) = entry {
                redirect_unknown(request);
            }
        }
        self.inner.batch(batch)
    }

    fn notification<'a>(&self, n: Notification<'a>) -> impl Future<Output = Self::NotificationResponse> + Send + 'a {
        self.inner.notification(n)
    }
}

#[derive(Clone)]
struct GateLayer {
    tokens: Arc<Tokens>,
    metrics: Option<PrometheusHandle>,
    node: Arc<Node>,
    connections: Connections,
    stop: jsonrpsee::server::StopHandle,
    methods: jsonrpsee::Methods,
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            tokens: Arc::clone(&self.tokens),
            metrics: self.metrics.clone(),
            node: Arc::clone(&self.node),
            connections: self.connections.clone(),
            stop: self.stop.clone(),
            methods: self.methods.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
struct Gate<S> {
    inner: S,
    tokens: Arc<Tokens>,
    metrics: Option<PrometheusHandle>,
    node: Arc<Node>,
    connections: Connections,
    /// WebSockets close when the server stops.
    stop: jsonrpsee::server::StopHandle,
    /// The node's methods, which a WebSocket runs single calls on directly.
    methods: jsonrpsee::Methods,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

fn json_answer(status: http::StatusCode, text: String) -> HttpResponse {
    respond(status, "application/json", text)
}

impl<S> Service<HttpRequest<HttpBody>> for Gate<S>
where
    S: Service<HttpRequest<HttpBody>, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture<Result<HttpResponse, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: HttpRequest<HttpBody>) -> Self::Future {
        let get = request.method() == http::Method::GET;
        let path = request.uri().path().to_string();
        if get && path == "/health" {
            return Box::pin(async { Ok(respond(http::StatusCode::OK, "application/json", r#"{"status":"ok"}"#)) });
        }
        if get {
            if let Some(page) = crate::ui::asset(&path) {
                return Box::pin(async move { Ok(page.map(HttpBody::from)) });
            }
        }
        let websocket = crate::ws::is_upgrade(&request);
        // A browser's WebSocket cannot set headers: its token comes as the
        // subprotocol `bearer.<token>`, which the handshake's answer must name.
        let authorization = request.headers().get(http::header::AUTHORIZATION);
        let offered = match (websocket, authorization) {
            (true, None) => crate::ui::subprotocol_token(request.headers().get(http::header::SEC_WEBSOCKET_PROTOCOL)),
            _ => None,
        };
        let caller = match &offered {
            Some((token, _)) => self.tokens.caller(Some(token)),
            None => self.tokens.caller(bearer(authorization)),
        };
        if get && path == "/metrics" {
            let response = match (caller.check(Scope::Read), &self.metrics) {
                (Err(_), _) => unauthorized(),
                (Ok(()), Some(metrics)) => {
                    let mut text = metrics.render();
                    push_call_counts(&mut text, &self.node);
                    respond(http::StatusCode::OK, "text/plain; version=0.0.4", text)
                }
                (Ok(()), None) => respond(http::StatusCode::NOT_FOUND, "text/plain", "metrics are not recorded\n"),
            };
            return Box::pin(async move { Ok(response) });
        }
        if get && path.starts_with("/artifacts/") {
            let response = artifact(&self.node, &caller, &path["/artifacts/".len()..]);
            return Box::pin(async move { Ok(response) });
        }
        if websocket {
            let protocol = offered.and_then(|(_, protocol)| http::HeaderValue::from_str(&protocol).ok());
            let response = self.websocket(request, caller, protocol);
            return Box::pin(async move { Ok(response) });
        }
        if request.method() != http::Method::POST {
            let message = "JSON-RPC is POST / (or a WebSocket at /); the dashboard is GET /ui";
            let response = json_answer(
                http::StatusCode::METHOD_NOT_ALLOWED,
                frame::error_answer("null", Code::InvalidRequest, message),
            );
            return Box::pin(async move { Ok(response) });
        }
        request.extensions_mut().insert(caller);
        let limit = self.connections.max_request_bytes as usize;
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let bytes = match read_body(body, limit).await {
                Ok(bytes) => bytes,
                Err(refusal) => return Ok(refusal),
            };
            let (body, fixes) = match frame::vet(&bytes, frame::Transport::Http) {
                frame::Vetted::Answer(text) => return Ok(json_answer(http::StatusCode::OK, text)),
                frame::Vetted::Pass { body, fixes } => (body, fixes),
                frame::Vetted::Subscription { .. } => unreachable!("HTTP subscriptions are refused by vet"),
            };
            // The body is JSON whatever `Content-Type` said (`curl -d` sends a
            // form type, which jsonrpsee would refuse).
            parts.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            parts.headers.remove(http::header::CONTENT_LENGTH);
            parts.headers.remove(http::header::TRANSFER_ENCODING);
            let response =
                inner.call(http::Request::from_parts(parts, HttpBody::from(body))).await.map_err(Into::into)?;
            let (mut parts, body) = response.into_parts();
            let answer = body.collect().await?.to_bytes();
            let finished = frame::finish(&String::from_utf8_lossy(&answer), &fixes);
            parts.headers.remove(http::header::CONTENT_LENGTH);
            Ok(http::Response::from_parts(parts, HttpBody::from(finished)))
        })
    }
}

impl<S> Gate<S>
where
    S: Service<HttpRequest<HttpBody>, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    /// A WebSocket handshake: refused without a known token, or when the
    /// connections it may take are taken; else our own transport (`ws.rs`).
    fn websocket(
        &self,
        request: HttpRequest<HttpBody>,
        caller: Caller,
        protocol: Option<http::HeaderValue>,
    ) -> HttpResponse {
        if caller.0.is_none() {
            return unauthorized();
        }
        let busy = |message: &str| {
            let mut response = json_answer(
                http::StatusCode::SERVICE_UNAVAILABLE,
                frame::error_answer("null", Code::Conflict, message),
            );
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("5"));
            response
        };
        let mut permits = Vec::new();
        if caller.check(Scope::Admin).is_err() {
            match Arc::clone(&self.connections.guests).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => {
                    return busy("too many WebSockets without the admin scope are open (control.max_connections)")
                }
            }
        }
        match Arc::clone(&self.connections.all).try_acquire_owned() {
            Ok(permit) => permits.push(permit),
            Err(_) => return busy("the node's connection limit is reached (control.max_connections)"),
        }
        let mut methods = self.methods.clone();
        methods.extensions_mut().insert(caller.clone());
        let session = crate::ws::Session {
            node: Arc::clone(&self.node),
            inner: self.inner.clone(),
            methods,
            caller,
            protocol,
            max_message: self.connections.max_request_bytes as usize,
            permits,
            stop: self.stop.clone(),
        };
        crate::ws::accept(request, session)
    }
}

/// A request body, whole: refused with 413 (`REQUEST_TOO_LARGE`) past `limit`
/// bytes however it is sent (a `Content-Length` or chunks), with 408 when it
/// does not arrive within [`READ_TIMEOUT`].
async fn read_body(body: HttpBody, limit: usize) -> Result<Vec<u8>, HttpResponse> {
    let too_large = || {
        let message = format!("the request is over the limit of {limit} bytes (control.max_request_bytes)");
        json_answer(http::StatusCode::PAYLOAD_TOO_LARGE, frame::error_answer("null", Code::RequestTooLarge, &message))
    };
    let read = async {
        let mut body = body;
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                let message = "the request body could not be read";
                json_answer(http::StatusCode::BAD_REQUEST, frame::error_answer("null", Code::ParseError, message))
            })?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > limit {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(bytes)
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(read) => read,
        Err(_) => {
            let message = format!("the request body did not arrive within {} s", READ_TIMEOUT.as_secs());
            Err(json_answer(
                http::StatusCode::REQUEST_TIMEOUT,
                frame::error_answer("null", Code::InvalidRequest, &message),
            ))
        }
    }
}

/// Appends `zest_calls_total{module,version,outcome}` and
/// `zest_module_version_info{module,version,vsn}` from the node's ledger (the
/// runtime counts calls with plain atomics). Written here rather than through
/// the recorder, which keeps every series it was ever given: an info series
/// ends with its build, and a module's counts with the ledger's last memory of it.
fn push_call_counts(text: &mut String, node: &Node) {
    use std::fmt::Write;
    let modules = node.call_counts();
    if modules.is_empty() {
        return;
    }
    if !text.is_empty() && !text.ends_with("\n\n") {
        text.push('\n');
    }
    text.push_str(
        "# HELP zest_calls_total Calls of each module that ended, by the place of the build that ran them \
         (version: current, canary, old) and outcome (ok, failed); a module called by another counts too.\n\
         # TYPE zest_calls_total counter\n",
    );
    for calls in &modules {
        let module = label_value(&calls.module);
        for (place, (ok, failed)) in Serving::ALL.iter().zip(calls.counts) {
            for (outcome, value) in [("ok", ok), ("failed", failed)] {
                let place = place.as_str();
                let _ = writeln!(
                    text,
                    "zest_calls_total{{module=\"{module}\",version=\"{place}\",outcome=\"{outcome}\"}} {value}"
                );
            }
        }
    }
    text.push_str(
        "\n# HELP zest_module_version_info The vsn of each build a module runs now, by place (current, canary, old); \
         always 1.\n# TYPE zest_module_version_info gauge\n",
    );
    for calls in &modules {
        let module = label_value(&calls.module);
        for (place, vsn) in &calls.versions {
            let (place, vsn) = (place.as_str(), label_value(vsn));
            let _ =
                writeln!(text, "zest_module_version_info{{module=\"{module}\",version=\"{place}\",vsn=\"{vsn}\"}} 1");
        }
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    std::borrow::Cow::Owned(value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

/// `GET /artifacts/<sha256>`: a build this node holds, for a token with the
/// `cluster` (or `admin`) scope.
fn artifact(node: &Node, caller: &Caller, sha256: &str) -> HttpResponse {
    match caller.check(Scope::Cluster) {
        Err(Code::Unauthorized) => return unauthorized(),
        Err(_) => return respond(http::StatusCode::FORBIDDEN, "text/plain", "this token lacks the `cluster` scope\n"),
        Ok(()) => {}
    }
    match node.build(sha256) {
        Some(bytes) => {
            // How often this node served a build to another member: the
            // coordinator's share of a fleet's fetches (docs/cluster.md).
            metrics::counter!(zest_runtime::telemetry::BUILDS_SERVED).increment(1);
            respond(http::StatusCode::OK, "application/octet-stream", bytes.to_vec())
        }
        None => respond(http::StatusCode::NOT_FOUND, "text/plain", "this node holds no build with that sha256\n"),
    }
}

fn unauthorized() -> HttpResponse {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": error(Code::Unauthorized, TOKEN_REQUIRED)});
    let mut response = respond(http::StatusCode::UNAUTHORIZED, "application/json", body.to_string());
    response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    response
}
