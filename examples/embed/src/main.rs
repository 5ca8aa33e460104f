//! A live Rust service whose request handlers are zest modules.
//!
//! An axum server holds an embedded [`Node`]; `GET` or `POST /<name>` calls
//! module `<name>`'s `handle` function with the request as JSON
//! (`{"method", "path", "query", "body"}`) and answers with what it returns.
//! The node watches the handlers' directory: save a handler and the next
//! request runs the new code, while requests keep flowing — no restart, no
//! dropped connection. A handler that fails to build leaves the old one
//! serving (the service prints why).
//!
//! A handler may be a WebAssembly component (`handlers/notes.wat`): it gets
//! the request's fields as its parameters, and may import what the service
//! gives its handlers — here a key-value store (`example:service/kv@1.0.0`,
//! [`kv_store`]), which the service keeps, so what a handler stored there
//! survives every new version of it.
//!
//! ```sh
//! cargo run -p zest-embed-example -- --listen 127.0.0.1:3000
//! curl localhost:3000/hello
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use clap::Parser;
use serde_json::{json, Value};
use zest_runtime::wasmtime::StoreContextMut;
use zest_runtime::watch::{WatchConfig, WatchEvent};
use zest_runtime::{CallError, Capabilities, HostState, Node, NodeConfig, Status};

#[derive(Debug, Parser)]
#[command(about = "An HTTP service whose handlers are zest modules, changed while it serves")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The handlers: an app directory (`zest.toml` and its modules).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/handlers"))]
    handlers: PathBuf,
    /// The node's data directory (compile cache, history).
    #[arg(long, default_value = ".zest-embed")]
    data_dir: PathBuf,
    /// How long writes to a handler must be quiet before it reloads.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("warn").init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let config = NodeConfig { data_dir: Some(args.data_dir.clone()), ..NodeConfig::default() };
    let node = Node::with_capabilities(config, kv_store()).map_err(|err| format!("cannot start the node: {err}"))?;
    let loaded = node.load_app(&args.handlers);
    if loaded.status() != Status::Ok {
        let problems: Vec<String> = loaded.errors.iter().map(|e| format!("{}: {}", e.target, e.message)).collect();
        return Err(format!("cannot load the handlers in {}: {}", args.handlers.display(), problems.join("; ")));
    }
    println!("handlers: {}", loaded.reloaded.join(", "));

    // Save a handler, and it reloads by itself.
    let watch = WatchConfig { debounce: Duration::from_millis(args.debounce_ms) };
    let _watch = node.watch(watch, report).map_err(|err| format!("cannot watch the handlers: {err}"))?;

    let app = Router::new().route("/{name}", any(handle)).with_state(Arc::new(node));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", args.listen))?;
    let addr = listener.local_addr().map_err(|err| err.to_string())?;
    println!("listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|err| format!("the server failed: {err}"))
}

/// The service's key-value store, as a WIT interface its handlers may import:
/// `get: func(key: string) -> option<string>`, `set: func(key: string, value:
/// string)`. Each handler has keys of its own (the store is keyed by module).
fn kv_store() -> Capabilities {
    let store: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    Capabilities::default().interface("example:service/kv@1.0.0", move |kv| {
        let keys = Arc::clone(&store);
        kv.func_wrap("get", move |caller: StoreContextMut<'_, HostState>, (key,): (String,)| {
            let keys = keys.lock().unwrap_or_else(PoisonError::into_inner);
            Ok((keys.get(&format!("{}/{key}", caller.data().module())).cloned(),))
        })?;
        let keys = Arc::clone(&store);
        kv.func_wrap("set", move |caller: StoreContextMut<'_, HostState>, (key, value): (String, String)| {
            let mut keys = keys.lock().unwrap_or_else(PoisonError::into_inner);
            keys.insert(format!("{}/{key}", caller.data().module()), value);
            Ok(())
        })
    })
}

/// One request: the module named by the path handles it.
async fn handle(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let body = String::from_utf8_lossy(&body).into_owned();
    let request = json!({"method": method.as_str(), "path": format!("/{name}"), "query": query, "body": body});
    // A handler runs to completion on this thread (calls take microseconds;
    // the node bounds each with its call deadline).
    let answer = tokio::task::block_in_place(|| node.call(&name, "handle", &request.to_string()));
    match answer {
        Ok(output) => ([(header::CONTENT_TYPE, "application/json")], output).into_response(),
        Err(err @ (CallError::ModuleNotFound { .. } | CallError::FunctionNotFound { .. })) => {
            error(StatusCode::NOT_FOUND, err)
        }
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

fn error(status: StatusCode, err: CallError) -> Response {
    let body: Value = json!({"error": err.to_string()});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Prints what the watcher did: the service's log of its own upgrades.
fn report(event: &WatchEvent) {
    match event {
        WatchEvent::Reloaded { target, result, .. } => {
            let swaps: Vec<String> = result
                .metadata
                .swaps
                .iter()
                .map(|s| format!("{} {} -> {}", s.module, s.old_vsn.as_deref().unwrap_or("new"), s.new_vsn))
                .collect();
            match result.status() {
                Status::Ok if swaps.is_empty() => println!("reloaded {}: nothing changed", target.describe()),
                Status::Ok => println!("reloaded {}: {}", target.describe(), swaps.join(", ")),
                status => {
                    let errors: Vec<String> =
                        result.errors.iter().map(|e| format!("{}: {}", e.target, e.message)).collect();
                    println!(
                        "reload of {} {}; the old code keeps serving: {}",
                        target.describe(),
                        status.as_str(),
                        errors.join("; ")
                    );
                }
            }
        }
        WatchEvent::NotRun { target, error, .. } => println!("reload of {} did not run: {error}", target.describe()),
        WatchEvent::Missing { path, problem, .. } => {
            println!("{} {problem}; the old code keeps serving", path.display())
        }
        WatchEvent::Unwatchable { dir, error } => println!("cannot watch {}: {error}", dir.display()),
    }
}
