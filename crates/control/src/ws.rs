//! The WebSocket transport (CONTRACT.md §4), zest's own rather than
//! jsonrpsee's, so that a WebSocket client is held to the same rules as an HTTP
//! one and gets the same answers:
//!
//! ```text
//! frame ─▶ frame::vet ─┬─ an answer (PARSE_ERROR, INVALID_REQUEST, …) ─────────────┐
//!                      ├─ subscribe / unsubscribe: handled here (the event feed) ──┤
//!                      └─ a request ─┬─ one call of a known method: the methods ─┐   │
//!                                    └─ else: jsonrpsee, as an HTTP POST ─────────┴─ frame::finish ┴─▶ outbox ─▶ frame
//! ```
//!
//! - a single call of a known method runs on the node's methods directly (the
//!   connection's caller in their extensions), without the HTTP service stack:
//!   about 30 µs less a round trip (`docs/benchmarks.md`, "Control plane");
//!   batches, notifications and unknown methods are answered as over HTTP;
//! - every frame is vetted like an HTTP body; a message over the size limit
//!   is answered `REQUEST_TOO_LARGE` (one over twice the limit is not read:
//!   the answer goes out and the connection closes, 1009);
//! - requests run concurrently (at most [`IN_FLIGHT`] per connection; more
//!   waits, which stops reading: backpressure), answers go out in the order
//!   they finish;
//! - a subscription's events go out only while the client keeps up: one that
//!   stops reading loses events (logged), never the node's memory;
//! - a connection is pinged every [`PING_EVERY`]; one that sends nothing (not
//!   even a pong) for [`IDLE_LIMIT`] is closed.
//!
//! The connection holds its permits (the node's connection limit, and the
//! share non-admin callers may take) until it closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use jsonrpsee::core::BoxError;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tower::Service;
use zest_runtime::Node;

use crate::auth::{Caller, Scope};
use crate::frame::{self, error_answer, Transport, Vetted};
use crate::protocol::{respond, EVENT_NOTIFICATION, METHODS, SUBSCRIBE};
use crate::wire::{self, Code};

/// Requests one connection may have running at once.
pub const IN_FLIGHT: usize = 32;
/// Subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 16;
/// Messages waiting to be written to one connection.
const OUTBOX: usize = 1_024;
pub const PING_EVERY: Duration = Duration::from_secs(30);
pub const IDLE_LIMIT: Duration = Duration::from_secs(90);
/// How long a closing connection may take to say goodbye.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long one write may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `request` asks to become a WebSocket.
pub fn is_upgrade(request: &HttpRequest<HttpBody>) -> bool {
    request.headers().get(UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// What a connection needs besides its request.
pub struct Session<S> {
    pub node: Arc<Node>,
    /// jsonrpsee's service: a request frame the methods do not take directly
    /// (a batch, a notification, an unknown method) goes to it as an HTTP POST.
    pub inner: S,
    /// The node's methods, with this connection's caller in their extensions:
    /// a single call of a known method is run on them directly, without the
    /// HTTP service stack.
    pub methods: jsonrpsee::Methods,
    pub caller: Caller,
    /// The subprotocol the client offered and the answer names (`bearer.<token>`).
    pub protocol: Option<HeaderValue>,
    pub max_message: usize,
    pub permits: Vec<OwnedSemaphorePermit>,
    /// Resolves when the server stops: the connection closes (1001).
    pub stop: jsonrpsee::server::StopHandle,
}

impl<S> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("caller", &self.caller)
            .field("max_message", &self.max_message)
            .finish_non_exhaustive()
    }
}

/// Answers the handshake, and serves the connection on a task of its own.
pub fn accept<S>(mut request: HttpRequest<HttpBody>, session: Session<S>) -> HttpResponse
where
    S: Service<HttpRequest<HttpBody>, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    let key = request.headers().get(SEC_WEBSOCKET_KEY).map(|key| key.as_bytes().to_vec());
    let version_13 = request.headers().get("sec-websocket-version").is_some_and(|v| v.as_bytes() == b"13");
    let (Some(key), true, true) = (key, version_13, request.method() == http::Method::GET) else {
        let body = error_answer(
            "null",
            Code::InvalidRequest,
            "a WebSocket handshake is a GET with Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
        );
        return respond(http::StatusCode::BAD_REQUEST, "application/json", body);
    };
    let accept = tungstenite::handshake::derive_accept_key(&key);
    let mut response = http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, accept)
        .body(HttpBody::empty())
        .expect("static response parts are valid");
    if let Some(protocol) = &session.protocol {
        response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, protocol.clone());
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                // Messages up to twice the limit are read whole, so that
                // they can be answered REQUEST_TOO_LARGE on a connection
                // that stays open; larger ones close it (1009).
                let mut config = WebSocketConfig::default();
                config.max_message_size = Some(session.max_message.saturating_mul(2));
                config.max_frame_size = Some(session.max_message.saturating_mul(2));
                let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                serve(socket, session).await;
            }
            Err(err) => tracing::debug!(%err, "a WebSocket handshake did not complete"),
        }
    });
    response
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// One connection, until it closes. One task reads, answers what is answered
/// at once, and writes what other tasks (a long request, a subscription)
/// queue for it: the common case crosses no thread.
async fn serve<S>(socket: Socket, session: Session<S>)
where
    S: Service<HttpRequest<HttpBody>, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    let (mut sink, mut stream) = socket.split();
    let (outbox, mut queued) = mpsc::channel::<Message>(OUTBOX);
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut subscriptions: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut heard = Instant::now();
    let stopped = session.stop.clone().shutdown();
    tokio::pin!(stopped);
    // A write that does not complete in time (the client stopped reading)
    // ends the connection.
    macro_rules! write {
        ($message:expr) => {
            match tokio::time::timeout(WRITE_TIMEOUT, sink.send($message)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        };
    }
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            Some(message) = queued.recv() => {
                write!(message);
                continue;
            }
            () = &mut stopped => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(close(CloseCode::Away, "the node is stopping"))).await;
                break;
            }
            _ = ping.tick() => {
                if heard.elapsed() >= IDLE_LIMIT {
                    tracing::debug!("closing a WebSocket silent for {IDLE_LIMIT:?}");
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(close(CloseCode::Away, "idle"))).await;
                    break;
                }
                write!(Message::Ping(Vec::new().into()));
                continue;
            }
        };
        heard = Instant::now();
        let bytes = match frame {
            Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
            Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(tungstenite::Error::Capacity(err))) => {
                let message = format!("the message is over the limit of {} bytes ({err})", session.max_message);
                let _ = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    sink.send(Message::text(error_answer("null", Code::RequestTooLarge, &message))),
                )
                .await;
                let _ =
                    tokio::time::timeout(WRITE_TIMEOUT, sink.send(close(CloseCode::Size, "message too large"))).await;
                break;
            }
            Some(Err(err)) => {
                tracing::debug!(%err, "a WebSocket failed");
                break;
            }
        };
        if bytes.len() > session.max_message {
            let message =
                format!("the message is over the limit of {} bytes (control.max_request_bytes)", session.max_message);
            write!(Message::text(error_answer("null", Code::RequestTooLarge, &message)));
            continue;
        }
        match frame::vet(&bytes, Transport::WebSocket) {
            Vetted::Answer(text) => write!(Message::text(text)),
            Vetted::Subscription { method, id, params } => {
                subscriptions.retain(|_, task| !task.is_finished());
                let answer = if method == SUBSCRIBE {
                    subscribe(&session, &id, &params, &outbox, &mut subscriptions)
                } else {
                    unsubscribe(&id, &params, &mut subscriptions)
                };
                write!(Message::text(answer));
            }
            Vetted::Pass { body, fixes } => {
                // Waiting here stops reading: the client's requests back up.
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
                let (mut inner, caller) = (session.inner.clone(), session.caller.clone());
                // One call of a method the node has runs on the methods
                // directly; anything else is answered as over HTTP.
                let direct = fixes
                    .single_call()
                    .is_some_and(|method| METHODS.contains(&method))
                    .then(|| session.methods.clone());
                let mut answer = Box::pin(async move {
                    if let Some(methods) = direct {
                        if let Ok((answer, _)) = methods.raw_json_request(&body, 1).await {
                            drop(permit);
                            return frame::finish(answer.get(), &fixes);
                        }
                    }
                    let mut request = http::Request::post("/")
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(HttpBody::from(body))
                        .expect("static request parts are valid");
                    request.extensions_mut().insert(caller);
                    let answer = match inner.call(request).await {
                        Ok(response) => match response.into_body().collect().await {
                            Ok(bytes) => frame::finish(&String::from_utf8_lossy(&bytes.to_bytes()), &fixes),
                            Err(err) => internal(&err.to_string()),
                        },
                        Err(err) => internal(&err.into().to_string()),
                    };
                    drop(permit);
                    answer
                });
                // Most requests (calls, status) finish at their first poll and
                // are answered here; the rest (a reload) go on beside the
                // connection and queue their answer.
                match futures_util::poll!(answer.as_mut()) {
                    std::task::Poll::Ready(text) => {
                        if !text.is_empty() {
                            write!(Message::text(text));
                        }
                    }
                    std::task::Poll::Pending => {
                        let outbox = outbox.clone();
                        tokio::spawn(async move {
                            let text = answer.await;
                            if !text.is_empty() {
                                let _ = outbox.send(Message::text(text)).await;
                            }
                        });
                    }
                }
            }
        }
    }
    for (_, task) in subscriptions {
        task.abort();
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
    drop(session.permits);
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.to_string().into() }))
}

fn internal(message: &str) -> String {
    error_answer("null", Code::InternalError, &format!("the request could not be served: {message}"))
}

fn result(id: &str, result: Value) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#)
}

/// `system.subscribe_events`: answers the subscription id, then sends each
/// event as a `system.event` notification while the client keeps up.
fn subscribe<S>(
    session: &Session<S>,
    id: &str,
    params: &Value,
    outbox: &mpsc::Sender<Message>,
    subscriptions: &mut HashMap<String, JoinHandle<()>>,
) -> String {
    if let Err(code) = session.caller.check(Scope::Read) {
        let message = match code {
            Code::Unauthorized => "a valid bearer token is required".to_string(),
            _ => "this token lacks the `read` scope".to_string(),
        };
        return error_answer(id, code, &message);
    }
    let empty = match params {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        _ => false,
    };
    if !empty {
        return error_answer(id, Code::InvalidParams, &format!("{SUBSCRIBE} takes no params"));
    }
    if subscriptions.len() >= MAX_SUBSCRIPTIONS {
        let message = format!("at most {MAX_SUBSCRIPTIONS} subscriptions on one connection");
        return error_answer(id, Code::InvalidRequest, &message);
    }
    let subscription = format!("{:016x}", random_u64());
    let mut feed = session.node.telemetry().subscribe();
    let (outbox, name) = (outbox.clone(), subscription.clone());
    let task = tokio::spawn(async move {
        let mut dropped = 0u64;
        loop {
            let event = match feed.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    dropped += missed;
                    tracing::warn!(missed, "an event subscriber fell behind the feed; events were dropped for it");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let notification = json!({"jsonrpc": "2.0", "method": EVENT_NOTIFICATION,
                "params": {"subscription": name, "result": wire::event(&event)}});
            match outbox.try_send(Message::text(notification.to_string())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped,
                            "a WebSocket client is not reading its events; they are dropped for it"
                        );
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
    subscriptions.insert(subscription.clone(), task);
    result(id, json!(subscription))
}

/// `system.unsubscribe_events [id]`: true if it was a subscription of this
/// connection.
fn unsubscribe(id: &str, params: &Value, subscriptions: &mut HashMap<String, JoinHandle<()>>) -> String {
    let name = match params {
        Value::Array(items) if items.len() == 1 => items[0].as_str(),
        Value::Object(fields) if fields.len() == 1 => fields.get("subscription").and_then(Value::as_str),
        _ => None,
    };
    let Some(name) = name else {
        return error_answer(id, Code::InvalidParams, "params: [subscription id]");
    };
    match subscriptions.remove(name) {
        Some(task) => {
            task.abort();
            result(id, json!(true))
        }
        None => result(id, json!(false)),
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    u64::from_le_bytes(bytes)
}
