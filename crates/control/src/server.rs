//! The control plane (CONTRACT.md §4): JSON-RPC 2.0 over HTTP `POST /` and
//! WebSocket `/` on one address, built on jsonrpsee, which does the framing,
//! batches, the size limit and subscriptions. On a cluster member the same
//! server carries the node-to-node methods (`cluster.prepare`, `.commit`,
//! `.settle`, `.abort`, scope `cluster`) and `system.reload` goes through the
//! cluster (`crate::cluster`).
//!
//! In front of it sits one HTTP layer, the [`Gate`]: it answers `GET /health`
//! (no auth), `GET /metrics` and `GET /artifacts/<sha256>` (the builds this
//! node holds, for other members), resolves the bearer token of every request and
//! WebSocket handshake into a [`Caller`] the methods check, refuses a WebSocket
//! handshake without a known token, and gives jsonrpsee's own protocol errors
//! (parse error, invalid request, unknown method, oversized request) the
//! `data.code` every error carries.

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
use zest_runtime::{CallError, LockError, Node, ProcessError, ReloadError};

use crate::auth::{bearer, Caller, Scope, Tokens};
use crate::cluster::{Cluster, Refusal};
use crate::wire::{self, Code, NodeInfo, Nodes};

/// The methods a client may call; any other name reaches [`NOT_FOUND_METHOD`].
const METHODS: [&str; 13] = [
    "system.reload",
    "system.history",
    "system.rollback",
    "system.promote",
    "system.status",
    "module.call",
    "process.call",
    "system.subscribe_events",
    UNSUBSCRIBE,
    "cluster.prepare",
    "cluster.commit",
    "cluster.settle",
    "cluster.abort",
];

/// Where [`KnownMethods`] sends calls of unknown methods, so their error carries
/// `data.code` on every transport.
const NOT_FOUND_METHOD: &str = "zest.method_not_found";

/// The notification method of `system.subscribe_events`, and how to unsubscribe.
pub const EVENT_NOTIFICATION: &str = "system.event";
pub const UNSUBSCRIBE: &str = "system.unsubscribe_events";

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

/// Starts the server on `listener` (bound beforehand, so that a cluster
/// member can advertise its address before it serves); `cluster` when the node
/// is a cluster member.
pub fn start(
    node: Arc<Node>,
    listener: std::net::TcpListener,
    started_at: std::time::SystemTime,
    tokens: Arc<Tokens>,
    metrics: Option<PrometheusHandle>,
    max_request_bytes: u32,
    cluster: Option<Arc<Cluster>>,
) -> std::io::Result<(ServerHandle, SocketAddr)> {
    let config =
        ServerConfig::builder().max_request_body_size(max_request_bytes).max_response_body_size(u32::MAX).build();
    let gate = tower::ServiceBuilder::new().layer(GateLayer { tokens, metrics, node: Arc::clone(&node) });
    let rpc = RpcServiceBuilder::new().layer_fn(|inner| KnownMethods { inner });
    listener.set_nonblocking(true)?;
    let server = Server::builder()
        .set_config(config)
        .set_http_middleware(gate)
        .set_rpc_middleware(rpc)
        .build_from_tcp(listener)?;
    let addr = server.local_addr()?;
    let info = NodeInfo { listen: addr.to_string(), started_at };
    let handle = server.start(methods(node, info, cluster));
    Ok((handle, addr))
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
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate { inner, tokens: Arc::clone(&self.tokens), metrics: self.metrics.clone(), node: Arc::clone(&self.node) }
    }
}

/// See the module documentation.
#[derive(Clone)]
struct Gate<S> {
    inner: S,
    tokens: Arc<Tokens>,
    metrics: Option<PrometheusHandle>,
    node: Arc<Node>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

fn respond(status: http::StatusCode, content_type: &str, body: impl Into<HttpBody>) -> HttpResponse {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(body.into())
        .expect("static response parts are valid")
}

impl<S> Service<HttpRequest<HttpBody>> for Gate<S>
where
    S: Service<HttpRequest<HttpBody>, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError> + 'static,
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
        let websocket = request
            .headers()
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
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
                    publish_call_counts(&self.node);
                    respond(http::StatusCode::OK, "text/plain; version=0.0.4", metrics.render())
                }
                (Ok(()), None) => respond(http::StatusCode::NOT_FOUND, "text/plain", "metrics are not recorded\n"),
            };
            return Box::pin(async move { Ok(response) });
        }
        if get && path.starts_with("/artifacts/") {
            let response = artifact(&self.node, &caller, &path["/artifacts/".len()..]);
            return Box::pin(async move { Ok(response) });
        }
        if websocket && caller.0.is_none() {
            return Box::pin(async { Ok(unauthorized()) });
        }
        request.extensions_mut().insert(caller);
        if request.method() == http::Method::POST && !websocket {
            // `curl -d` and friends send a form content type; the body is JSON
            // whatever the header says, and jsonrpsee would refuse it.
            let json = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if !json {
                request
                    .headers_mut()
                    .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            }
        }
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await.map_err(Into::into)?;
            if websocket {
                if let Some(protocol) = offered.and_then(|(_, protocol)| http::HeaderValue::from_str(&protocol).ok()) {
                    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        response.headers_mut().insert(http::header::SEC_WEBSOCKET_PROTOCOL, protocol);
                    }
                }
                return Ok(response);
            }
            with_error_codes(response).await
        })
    }
}

/// Sets `zest_calls_total{module,vsn,outcome}` from the node's ledger (the
/// runtime counts calls with plain atomics; the exporter sees them here).
fn publish_call_counts(node: &Node) {
    for (module, vsn, ok, failures) in node.call_counts() {
        metrics::counter!("zest_calls_total", "module" => module.clone(), "vsn" => vsn.clone(), "outcome" => "ok")
            .absolute(ok);
        metrics::counter!("zest_calls_total", "module" => module, "vsn" => vsn, "outcome" => "failed")
            .absolute(failures);
    }
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
        Some(bytes) => respond(http::StatusCode::OK, "application/octet-stream", bytes.to_vec()),
        None => respond(http::StatusCode::NOT_FOUND, "text/plain", "this node holds no build with that sha256\n"),
    }
}

fn unauthorized() -> HttpResponse {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": error(Code::Unauthorized, TOKEN_REQUIRED)});
    let mut response = respond(http::StatusCode::UNAUTHORIZED, "application/json", body.to_string());
    response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    response
}

/// Adds `data.code` to every error in a JSON-RPC response that lacks one
/// (jsonrpsee's own errors); anything else passes through untouched.
async fn with_error_codes(response: HttpResponse) -> Result<HttpResponse, BoxError> {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await?.to_bytes();
    // Most answers hold no error at all: those are not parsed again.
    let may_hold_error = bytes.windows(7).any(|window| window == b"\"error\"");
    let patched =
        may_hold_error.then(|| serde_json::from_slice::<Value>(&bytes).ok()).flatten().and_then(|mut value| {
            let mut changed = false;
            match &mut value {
                Value::Array(items) => items.iter_mut().for_each(|item| changed |= add_code(item)),
                item => changed = add_code(item),
            }
            changed.then(|| value.to_string())
        });
    let body = match patched {
        Some(text) => HttpBody::from(text),
        None => HttpBody::from(bytes.to_vec()),
    };
    let mut response = http::Response::from_parts(parts, body);
    response.headers_mut().remove(http::header::CONTENT_LENGTH);
    Ok(response)
}

fn add_code(response: &mut Value) -> bool {
    let Some(error) = response.get_mut("error").and_then(Value::as_object_mut) else {
        return false;
    };
    if error.get("data").and_then(|d| d.get("code")).is_some() {
        return false;
    }
    let code = Code::of_numeric(error.get("code").and_then(Value::as_i64).unwrap_or(-32603)).as_str();
    match error.get_mut("data") {
        Some(Value::Object(data)) => {
            data.insert("code".into(), json!(code));
        }
        Some(other) => {
            let detail = other.take();
            error.insert("data".into(), json!({"code": code, "detail": detail}));
        }
        None => {
            error.insert("data".into(), json!({"code": code}));
        }
    }
    true
}
