//! What the transports share (`server.rs` for HTTP, `ws.rs` for WebSocket,
//! `frame.rs` for the framing both vet): the JSON-RPC method names of
//! CONTRACT.md §4, and a plain HTTP answer.

use jsonrpsee::server::{HttpBody, HttpResponse};

/// The methods a client may call; the server answers any other name with
/// `METHOD_NOT_FOUND`.
pub(crate) const METHODS: [&str; 15] = [
    "system.reload",
    "system.unload",
    "system.history",
    "system.rollback",
    "system.promote",
    "system.status",
    "module.call",
    "module.describe",
    "process.call",
    "system.subscribe_events",
    UNSUBSCRIBE,
    "cluster.prepare",
    "cluster.commit",
    "cluster.settle",
    "cluster.abort",
];

/// The notification method of `system.subscribe_events`, and how to unsubscribe.
pub const EVENT_NOTIFICATION: &str = "system.event";
pub const SUBSCRIBE: &str = "system.subscribe_events";
pub const UNSUBSCRIBE: &str = "system.unsubscribe_events";

/// An HTTP answer with `status`, `content_type` and `body`.
pub(crate) fn respond(status: http::StatusCode, content_type: &str, body: impl Into<HttpBody>) -> HttpResponse {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(body.into())
        .expect("static response parts are valid")
}
