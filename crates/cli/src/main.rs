//! `zest`: the node (`zest serve`) and its command-line client (`reload`,
//! `unload`, `status`, `call`, `send`), CONTRACT.md §8.
//!
//! Exit codes: 0 ok, 1 cannot reach the node or auth refused, 2 usage, 3 partial,
//! 4 error.

mod client;
mod serve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use jsonrpsee::core::params::ObjectParams;
use serde_json::{json, Value};
use zest_runtime::{Node, NodeConfig, ReloadOptions, Status};

use crate::client::{Paint, Target};

/// jemalloc, not glibc's allocator: under calls and reloads at once, glibc's
/// per-thread arenas fragment and the node's RSS crept up for as long as a soak
/// ran (1.12× in 10 minutes); with jemalloc it levels off within minutes
/// (`docs/reliability.md`, "Soak"). Embedders choose their own allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "zest", version, about = "Hot code upgrade for WebAssembly modules")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a node: with no flags, the bundled demo app, ./extensions and data in ./.zest.
    Serve {
        /// The node configuration file (CONTRACT.md §9); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:4780).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// An app directory to load (repeatable); replaces the bundled demo.
        #[arg(long = "app")]
        apps: Vec<PathBuf>,
        /// The extension root.
        #[arg(long)]
        extensions: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// An admin token for clients (instead of the generated one).
        #[arg(long)]
        token: Option<String>,
        /// Reload by itself what a changed file belongs to, and print each reload.
        #[arg(long)]
        watch: bool,
    },
    /// Reload a module, an app, an extension, or all (system.reload).
    Reload {
        #[command(subcommand)]
        scope: ReloadScope,
        #[command(flatten)]
        options: ReloadFlags,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Stream the node's events as they happen, a line each (system.subscribe_events).
    Events {
        #[command(flatten)]
        client: ClientFlags,
    },
    /// What changed each module's build, newest first (system.history).
    History {
        /// Only this module's entries.
        module: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: u64,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Put an earlier build back: the one the newest change replaced, or a history
    /// entry's (system.rollback).
    Rollback {
        #[command(subcommand)]
        target: TargetArg,
        /// A history id: that entry's build becomes current.
        #[arg(long, global = true)]
        to: Option<u64>,
        /// Restart processes that cannot migrate, and hard-purge.
        #[arg(long, global = true)]
        force: bool,
        /// All or nothing.
        #[arg(long, global = true)]
        atomic: bool,
        /// Wait this long for the reload lock (default: answer at once).
        #[arg(long, global = true)]
        lock_timeout_ms: Option<u64>,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Take an extension, or an app with its modules and processes, out of the
    /// node (system.unload); a rollback loads it back.
    Unload {
        #[command(subcommand)]
        target: UnloadArg,
        /// Wait this long for the reload lock (default: answer at once).
        #[arg(long, global = true)]
        lock_timeout_ms: Option<u64>,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Make a canary current for every call and process (system.promote).
    Promote {
        #[command(subcommand)]
        target: TargetArg,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Modules, versions, processes and extensions of the node.
    Status {
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Call MODULE.FUNCTION with JSON args (default null) and print its output.
    Call {
        module: String,
        function: String,
        args: Option<String>,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// The callable functions of MODULE and their types.
    Describe {
        module: String,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Send a JSON message (default null) to a process and print its reply.
    Send {
        process: String,
        message: Option<String>,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Load every .wat and .wasm file in DIR locally (no node) and call
    /// MODULE.FUNCTION once.
    Run {
        dir: PathBuf,
        module: String,
        function: String,
        #[arg(default_value = "null")]
        args: String,
        #[arg(long, default_value = ".zest")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TargetArg {
    /// One module.
    Module { name: String },
    /// Every module of an app.
    App { name: String },
}

#[derive(Debug, Subcommand)]
enum UnloadArg {
    /// The extension loaded from PATH (its record goes too: a restart does
    /// not load it again).
    Extension { path: String },
    /// Every module of app NAME, its processes with them.
    App { name: String },
}

#[derive(Debug, Subcommand)]
enum ReloadScope {
    /// One module (its app's manifest is read again).
    Module { name: String },
    /// Every module an app's manifest declares.
    App { name: String },
    /// One extension file (.wat, .wasm, .rs, .js or .py).
    Extension { path: String },
    /// Every app, the listed extensions, explicit code_change targets.
    All {
        /// Apps to reload, comma-separated (default: every loaded app).
        #[arg(long, value_delimiter = ',')]
        apps: Vec<String>,
        /// An extension to reload too (repeatable).
        #[arg(long = "extension")]
        extensions: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct ReloadFlags {
    /// Run the app's build first; its output streams while it runs.
    #[arg(long, global = true)]
    compile: bool,
    /// Reload unchanged modules too, and hard-purge.
    #[arg(long, global = true)]
    force: bool,
    /// All or nothing.
    #[arg(long, global = true)]
    atomic: bool,
    /// Let a build remove a callable function, or change its type.
    #[arg(long, global = true)]
    allow_breaking: bool,
    /// Wait this long for the reload lock (default: answer at once).
    #[arg(long, global = true)]
    lock_timeout_ms: Option<u64>,
    /// In a cluster: `all` members (the default), `local` (this node only), or
    /// member ids, comma-separated.
    #[arg(long, global = true, value_name = "all|local|ID,ID")]
    nodes: Option<String>,
    /// Stage everything and say what would change; commit nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Watch the new builds this long; revert by itself if they fail too often.
    #[arg(long, global = true, value_name = "MS")]
    trial_ms: Option<u64>,
    /// With --trial-ms: the failure rate that reverts (default 0.01).
    #[arg(long, global = true, value_name = "RATE")]
    max_failure_rate: Option<f64>,
    /// With --trial-ms: calls needed before the rate counts (default 20).
    #[arg(long, global = true)]
    min_calls: Option<u64>,
    /// Run the new builds beside the current ones for this share of calls and
    /// processes (1–99).
    #[arg(long, global = true, value_name = "PERCENT")]
    canary: Option<u64>,
}

#[derive(Debug, Args)]
struct ClientFlags {
    #[arg(long, global = true, default_value = "http://127.0.0.1:4780")]
    url: String,
    /// Default: ZEST_TOKEN, then ./.zest/admin.token.
    #[arg(long, global = true)]
    token: Option<String>,
    /// Print the raw JSON result.
    #[arg(long, global = true)]
    json: bool,
}

/// How a command failed, and so its exit code.
#[derive(Debug)]
pub enum CliError {
    /// 1: the node cannot be reached, or refused the token.
    Unreachable(String),
    /// 2: bad usage.
    Usage(String),
    /// 4: the request ran and failed.
    Failed(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        // Without an endpoint nothing can fail.
        let _ = logging(None);
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            let (message, code) = match err {
                CliError::Unreachable(m) => (m, 1),
                CliError::Usage(m) => (m, 2),
                CliError::Failed(m) => (m, 4),
            };
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// The log on stderr (filtered by `RUST_LOG`, default `info`) and, given an
/// OTLP endpoint and the node's id, zest's spans exported there
/// (`docs/control.md`, "Traces"); what flushes them.
fn logging(otlp: Option<(&str, &str)>) -> Result<Option<zest_control::traces::Exporting>, CliError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(log);
    match otlp {
        None => {
            registry.init();
            Ok(None)
        }
        Some((endpoint, node)) => {
            let (layer, exporting) = zest_control::traces::otlp_layer(endpoint, node).map_err(CliError::Failed)?;
            registry.with(layer).init();
            tracing::info!(endpoint, "exporting spans over OTLP/HTTP");
            Ok(Some(exporting))
        }
    }
}

fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Serve { config, listen, apps, extensions, data_dir, token, watch } => {
            let flags = zest_control::config::Flags { config, listen, apps, extensions, data_dir, token, watch };
            let config = zest_control::config::ServeConfig::load(&flags).map_err(CliError::Usage)?;
            // The node's id in its spans: its cluster id, or where it listens.
            let node = config.cluster.as_ref().map(|c| c.node.clone()).unwrap_or_else(|| config.listen.to_string());
            // Flushes the spans still queued when dropped, after the node stopped.
            let _traces = logging(config.otlp.as_deref().map(|endpoint| (endpoint, node.as_str())))?;
            serve::serve(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { scope, options, client } => reload(scope, options, client),
        Command::Events { client } => {
            client::events(&target(&client), client.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::History { module, limit, client } => {
            let mut params = ObjectParams::new();
            if let Some(module) = module {
                insert(&mut params, "module", json!(module));
            }
            insert(&mut params, "limit", json!(limit));
            let history = client::request(&target(&client), "system.history", params)?;
            if client.json {
                print_json(&history);
            } else {
                print!("{}", client::history_table(&history));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback { target: what, to, force, atomic, lock_timeout_ms, client } => {
            let mut params = target_params(&what);
            if let Some(to) = to {
                insert(&mut params, "to", json!(to));
            }
            insert(&mut params, "force", json!(force));
            insert(&mut params, "atomic", json!(atomic));
            if let Some(ms) = lock_timeout_ms {
                insert(&mut params, "lock_timeout_ms", json!(ms));
            }
            let result = client::request(&target(&client), "system.rollback", params)?;
            Ok(print_result(&result, client.json))
        }
        Command::Unload { target: what, lock_timeout_ms, client } => {
            let mut params = ObjectParams::new();
            match what {
                UnloadArg::Extension { path } => insert(&mut params, "extension", json!(absolute(&path))),
                UnloadArg::App { name } => insert(&mut params, "app", json!(name)),
            }
            if let Some(ms) = lock_timeout_ms {
                insert(&mut params, "lock_timeout_ms", json!(ms));
            }
            let result = client::request(&target(&client), "system.unload", params)?;
            Ok(print_result(&result, client.json))
        }
        Command::Promote { target: what, client } => {
            let result = client::request(&target(&client), "system.promote", target_params(&what))?;
            Ok(print_result(&result, client.json))
        }
        Command::Status { client } => {
            let status = client::request(&target(&client), "system.status", ObjectParams::new())?;
            if client.json {
                print_json(&status);
            } else {
                print!("{}", client::status_tables(&status, &Paint::stdout()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Call { module, function, args, client } => {
            let mut params = ObjectParams::new();
            insert(&mut params, "module", json!(module));
            insert(&mut params, "function", json!(function));
            insert(&mut params, "args", parse_json("args", args)?);
            print_json(&client::request(&target(&client), "module.call", params)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Describe { module, client } => {
            let mut params = ObjectParams::new();
            insert(&mut params, "module", json!(module));
            let description = client::request(&target(&client), "module.describe", params)?;
            if client.json {
                print_json(&description);
            } else {
                print!("{}", client::description(&description));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send { process, message, client } => {
            let mut params = ObjectParams::new();
            insert(&mut params, "process", json!(process));
            insert(&mut params, "message", parse_json("message", message)?);
            print_json(&client::request(&target(&client), "process.call", params)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { dir, module, function, args, data_dir } => {
            println!("{}", run_local(&dir, &module, &function, &args, data_dir)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn target_params(target: &TargetArg) -> ObjectParams {
    let mut params = ObjectParams::new();
    match target {
        TargetArg::Module { name } => insert(&mut params, "module", json!(name)),
        TargetArg::App { name } => insert(&mut params, "app", json!(name)),
    }
    params
}

/// Prints a reload result (summary or JSON); its exit code by its status.
fn print_result(result: &Value, json: bool) -> ExitCode {
    if json {
        print_json(result);
    } else {
        print!("{}", client::summary(result, &Paint::stdout()));
    }
    match result["status"].as_str() {
        Some("ok") => ExitCode::SUCCESS,
        Some("partial") => ExitCode::from(3),
        _ => ExitCode::from(4),
    }
}

fn target(client: &ClientFlags) -> Target {
    Target::new(client.url.clone(), client.token.clone())
}

fn insert(params: &mut ObjectParams, key: &str, value: Value) {
    params.insert(key, value).expect("JSON values serialise");
}

fn parse_json(what: &str, text: Option<String>) -> Result<Value, CliError> {
    match text {
        None => Ok(Value::Null),
        Some(text) => serde_json::from_str(&text).map_err(|err| CliError::Usage(format!("{what} is not JSON: {err}"))),
    }
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("JSON values serialise"));
}

fn reload(scope: ReloadScope, options: ReloadFlags, client: ClientFlags) -> Result<ExitCode, CliError> {
    let mut params = ObjectParams::new();
    let extension_paths = match &scope {
        ReloadScope::Extension { .. } => 1,
        ReloadScope::All { extensions, .. } => extensions.len(),
        _ => 0,
    };
    match scope {
        ReloadScope::Module { name } => {
            insert(&mut params, "scope", json!("module"));
            insert(&mut params, "module", json!(name));
        }
        ReloadScope::App { name } => {
            insert(&mut params, "scope", json!("app"));
            insert(&mut params, "app", json!(name));
        }
        ReloadScope::Extension { path } => {
            insert(&mut params, "scope", json!("extension"));
            insert(&mut params, "path", json!(absolute(&path)));
        }
        ReloadScope::All { apps, extensions } => {
            insert(&mut params, "scope", json!("all"));
            insert(&mut params, "apps", json!(apps));
            insert(&mut params, "extensions", json!(extensions.iter().map(|p| absolute(p)).collect::<Vec<_>>()));
        }
    }
    for (key, on) in [("compile", options.compile), ("force", options.force), ("atomic", options.atomic)] {
        insert(&mut params, key, json!(on));
    }
    if options.allow_breaking {
        insert(&mut params, "allow_breaking", json!(true));
    }
    if let Some(ms) = options.lock_timeout_ms {
        insert(&mut params, "lock_timeout_ms", json!(ms));
    }
    if let Some(nodes) = &options.nodes {
        let nodes = match nodes.trim() {
            "all" | "local" => json!(nodes.trim()),
            list => {
                let ids: Vec<&str> = list.split(',').map(str::trim).filter(|id| !id.is_empty()).collect();
                if ids.is_empty() {
                    return Err(CliError::Usage("--nodes needs all, local, or member ids (a,b)".into()));
                }
                json!(ids)
            }
        };
        insert(&mut params, "nodes", nodes);
    }
    if options.dry_run {
        insert(&mut params, "dry_run", json!(true));
    }
    if let Some(ms) = options.trial_ms {
        let mut trial = json!({"window_ms": ms});
        if let Some(rate) = options.max_failure_rate {
            trial["max_failure_rate"] = json!(rate);
        }
        if let Some(calls) = options.min_calls {
            trial["min_calls"] = json!(calls);
        }
        insert(&mut params, "trial", trial);
    } else if options.max_failure_rate.is_some() || options.min_calls.is_some() {
        return Err(CliError::Usage("--max-failure-rate and --min-calls go with --trial-ms".into()));
    }
    if let Some(percent) = options.canary {
        insert(&mut params, "canary", json!({"percent": percent}));
    }
    let target = target(&client);
    // Builds (an app's, or rustc for an extension) stream their output while they run.
    let builds = options.compile || extension_paths > 0;
    let result = if builds && !client.json {
        client::reload_streaming(&target, params)?
    } else {
        client::request(&target, "system.reload", params)?
    };
    Ok(print_result(&result, client.json))
}

/// An extension path from the client's working directory, so the node (which
/// may run elsewhere on the same machine) sees the same file.
fn absolute(path: &str) -> String {
    if path.trim().is_empty() || Path::new(path).is_absolute() {
        return path.to_string();
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(path).display().to_string(),
        Err(_) => path.to_string(),
    }
}

fn run_local(dir: &Path, module: &str, function: &str, args: &str, data_dir: PathBuf) -> Result<String, CliError> {
    let failed = |message: String| CliError::Failed(message);
    let node = Node::new(NodeConfig { data_dir: Some(data_dir), ..NodeConfig::default() })
        .map_err(|e| failed(e.to_string()))?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|err| failed(format!("cannot read the module directory {}: {err}", dir.display())))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let mut loaded = 0;
    for path in entries {
        let is_module = matches!(path.extension().and_then(|e| e.to_str()), Some("wat" | "wasm"));
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).filter(|_| is_module) else {
            continue;
        };
        let result = node.load_module(name, &path, &ReloadOptions::default());
        if result.status() == Status::Error {
            let failure = &result.errors[0];
            return Err(failed(format!("{}: {} ({})", path.display(), failure.message, failure.reason)));
        }
        loaded += 1;
    }
    if loaded == 0 {
        return Err(failed(format!("{} holds no .wat or .wasm module", dir.display())));
    }
    node.call(module, function, args).map_err(|err| failed(err.to_string()))
}
