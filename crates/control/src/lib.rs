//! zest-control: the control plane of a node (CONTRACT.md §4, §9).
//!
//! - [`server`]: JSON-RPC 2.0 over HTTP and WebSocket on one address (jsonrpsee),
//!   with the `Gate` HTTP layer for health, metrics and tokens;
//! - [`auth`]: bearer tokens, their scopes, the generated admin token;
//! - [`config`]: the node configuration file and the flags over it;
//! - [`traces`]: spans exported over OpenTelemetry (OTLP) and the trace
//!   context members hand each other;
//! - [`wire`]: the JSON of reload results, status and events, and `system.reload`
//!   params; the one place runtime types meet serde.
//!
//! The `zest` binary (`crates/cli`) starts a server with [`server::start`] and
//! speaks to one as a client.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod frame;
mod protocol;
pub mod server;
pub mod traces;
pub mod ui;
pub mod wire;
pub mod ws;
