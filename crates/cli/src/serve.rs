//! `zest serve`: a node with its apps and extensions, behind the control plane,
//! until SIGTERM or SIGINT (SIGHUP reloads everything).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use zest_runtime::watch::WatchEvent;
use zest_runtime::{
    AllScope, AppManifest, Node, NodeConfig, ReloadOptions, ReloadRequest, ReloadResult, Scope, Status,
};

use zest_control::auth::{read_token, Tokens};
use zest_control::cluster::Cluster;
use zest_control::config::ServeConfig;
use zest_control::server;
use zest_control::wire::Nodes;

use crate::CliError;

/// How often the metrics recorder drains its histogram samples.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The bundled demo app, written to `<data_dir>/demo` on first start.
const DEMO: [(&str, &str); 4] = [
    ("zest.toml", include_str!("../../../examples/demo/zest.toml")),
    ("clock.wat", include_str!("../../../examples/demo/clock.wat")),
    ("front.wat", include_str!("../../../examples/demo/front.wat")),
    ("counter.wat", include_str!("../../../examples/demo/counter.wat")),
];

pub fn serve(config: ServeConfig) -> Result<(), CliError> {
    if !config.listen.ip().is_loopback() && config.tokens.is_empty() {
        return Err(CliError::Usage(format!(
            "refusing to listen on {} without a configured token: add [[control.tokens]] to the config or pass --token",
            config.listen
        )));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|err| {
        CliError::Failed(format!("cannot create the data directory {}: {err}", config.data_dir.display()))
    })?;
    // First: the node claims the data directory, so a second node started on
    // it stops here, before it writes anything there.
    let node = Node::new(NodeConfig {
        data_dir: Some(config.data_dir.clone()),
        limits: config.limits.clone(),
        extensions: config.extensions.clone(),
        ..NodeConfig::default()
    })
    .map_err(|err| CliError::Failed(err.to_string()))?;
    let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&zest_runtime::telemetry::DURATION_BUCKETS)
        .map_err(|err| CliError::Failed(format!("cannot configure the metrics buckets: {err}")))?;
    let metrics = match builder.install_recorder() {
        Ok(handle) => {
            zest_runtime::telemetry::describe(config.cluster.is_some());
            Some(handle)
        }
        Err(err) => {
            tracing::warn!(%err, "metrics are not recorded");
            None
        }
    };
    let cluster_token = match &config.cluster {
        Some(cluster) => Some(read_token(&cluster.token_file).map_err(CliError::Usage)?),
        None => None,
    };
    let (tokens, created) =
        Tokens::load(&config.tokens, cluster_token.as_deref(), &config.data_dir).map_err(CliError::Failed)?;
    if let Some(path) = created {
        eprintln!("admin token: {} (the CLI reads it from there)", path.display());
    }
    for root in &config.extensions.roots {
        if let Err(err) = std::fs::create_dir_all(root) {
            tracing::warn!(root = %root.display(), %err, "cannot create the extension root");
        }
    }
    let node = Arc::new(node);
    let apps = if config.apps.is_empty() { vec![bundled_demo(&config.data_dir)?] } else { config.apps.clone() };
    // A cluster member loads nothing its cluster unloaded (`system.unload`),
    // whatever its configuration lists or its data directory records.
    let unloaded = match &config.cluster {
        Some(settings) => match zest_control::cluster::unloaded_before_start(settings) {
            Ok(unloaded) => Some(unloaded),
            Err(problem) => {
                tracing::warn!(%problem, "cannot read what the cluster unloaded: loading every configured app; catching up takes out what it unloaded");
                None
            }
        },
        None => None,
    };
    for dir in &apps {
        let name = AppManifest::load(dir).ok().map(|manifest| manifest.name);
        if let (Some(name), Some(unloaded)) = (name, &unloaded) {
            if unloaded.apps.contains(&name) && node.keep_unloaded_app(dir).is_ok() {
                tracing::info!(app = %name, dir = %dir.display(),
                    "not loading this configured app: the cluster unloaded it (system.unload); a cluster reload or rollback of the app loads it again");
                continue;
            }
        }
        report_start(&format!("app {}", dir.display()), &node.load_app(dir));
    }
    let restored = node.restore_extensions();
    if !restored.results.is_empty() || !restored.errors.is_empty() {
        report_start("recorded extensions", &restored);
    }
    if let Some(unloaded) = &unloaded {
        if let Err(problem) = zest_control::cluster::take_out_before_start(&node, unloaded) {
            tracing::warn!(%problem, "cannot take out what the cluster unloaded yet; catching up will");
        }
    }
    // Stops when dropped, at the end of this function.
    let _watch = match &config.watch {
        Some(watch) => {
            let started = node.watch(watch.clone(), print_watch_event);
            let watch = started.map_err(|err| CliError::Failed(format!("cannot start watch mode: {err}")))?;
            eprintln!("watching apps and extensions for changes");
            Some(watch)
        }
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("zest-control")
        .build()
        .map_err(|err| CliError::Failed(format!("cannot start the async runtime: {err}")))?;
    runtime.block_on(async move {
        // Watched before the node says it is listening, so no signal finds the
        // default action (exit) in place.
        let signal_err = |err: std::io::Error| CliError::Failed(format!("cannot watch signals: {err}"));
        let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
        let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
        let mut hup = signal(SignalKind::hangup()).map_err(signal_err)?;
        let cannot_listen = |err: std::io::Error| CliError::Failed(format!("cannot listen on {}: {err}", config.listen));
        let listener = std::net::TcpListener::bind(config.listen).map_err(cannot_listen)?;
        let bound = listener.local_addr().map_err(cannot_listen)?;
        let cluster = match (&config.cluster, cluster_token) {
            (Some(settings), Some(token)) => {
                let advertise = settings.advertise.clone().unwrap_or_else(|| format!("http://{bound}"));
                let joined = Cluster::start(settings.clone(), Arc::clone(&node), advertise, token, &config.data_dir).await;
                Some(joined.map_err(CliError::Usage)?)
            }
            _ => None,
        };
        if let Some(metrics) = metrics.clone() {
            // Histogram samples wait in the recorder until drained; nothing
            // may scrape /metrics, so drain them on a timer (as the
            // exporter's own `install` would).
            tokio::spawn(async move {
                let mut every = tokio::time::interval(METRICS_UPKEEP);
                loop {
                    every.tick().await;
                    metrics.run_upkeep();
                }
            });
        }
        let limits = server::ServerLimits {
            max_request_bytes: config.max_request_bytes,
            max_connections: server::open_files_for(config.max_connections),
        };
        let started =
            server::start(Arc::clone(&node), listener, SystemTime::now(), Arc::new(tokens), metrics, limits, cluster.clone());
        let (handle, addr) = started.map_err(cannot_listen)?;
        println!("listening on http://{addr}");
        let _ = std::io::stdout().flush();
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let (node, cluster) = (Arc::clone(&node), cluster.clone());
                    tokio::task::spawn_blocking(move || {
                        // Every app, and every recorded extension; in a cluster,
                        // on this member only (`nodes: "local"`).
                        let extensions = node.status().extensions.into_iter().map(|e| e.record.path).collect();
                        let all = AllScope { extensions, ..AllScope::default() };
                        let options = ReloadOptions { lock_timeout: Duration::from_secs(60), ..ReloadOptions::default() };
                        let request = ReloadRequest { scope: Scope::All(all), options, request_id: None };
                        let outcome = match &cluster {
                            Some(cluster) => cluster.reload(&request, &Nodes::Local).map_err(|err| format!("{err:?}")),
                            None => node.reload(&request).map_err(|err| err.to_string()),
                        };
                        match outcome {
                            Ok(result) => report_start("SIGHUP reload", &result),
                            Err(err) => tracing::error!(%err, "SIGHUP reload did not run"),
                        }
                    });
                }
            }
        }
        eprintln!("shutting down: finishing calls in flight");
        let _ = handle.stop();
        handle.stopped().await;
        if let Some(cluster) = &cluster {
            cluster.leave().await;
        }
        let node = Arc::clone(&node);
        let _ = tokio::task::spawn_blocking(move || node.stop_all_processes()).await;
        eprintln!("stopped");
        Ok(())
    })
}

/// Writes the bundled demo app into `<data_dir>/demo` unless it is there (an
/// operator's edits survive restarts); returns its directory.
fn bundled_demo(data_dir: &Path) -> Result<PathBuf, CliError> {
    let dir = data_dir.join("demo");
    let fail = |err: std::io::Error| CliError::Failed(format!("cannot write the demo app to {}: {err}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(fail)?;
    for (file, text) in DEMO {
        let path = dir.join(file);
        if !path.exists() {
            std::fs::write(&path, text).map_err(fail)?;
        }
    }
    Ok(dir)
}

/// Prints what watch mode did, as it happens: a line per reload with the
/// reload's summary under it, or the problem.
fn print_watch_event(event: &WatchEvent) {
    let shown = |path: &Path| {
        let cwd = std::env::current_dir().unwrap_or_default();
        path.strip_prefix(&cwd).unwrap_or(path).display().to_string()
    };
    let paint = crate::client::Paint::stdout();
    let text = match event {
        WatchEvent::Reloaded { changed, target, request_id, result } => {
            let files: Vec<String> = changed.iter().map(|p| shown(p)).collect();
            let summary = crate::client::summary(&zest_control::wire::result(result), &paint);
            format!("watch: {} changed: reload {} [{request_id}]\n{summary}", files.join(", "), target.describe())
        }
        WatchEvent::NotRun { changed, target, error } => {
            let files: Vec<String> = changed.iter().map(|p| shown(p)).collect();
            format!("watch: {} changed: reload {} did not run: {error}\n", files.join(", "), target.describe())
        }
        WatchEvent::Missing { path, target, problem } => format!(
            "watch: {} {problem}; {} keeps serving what it had (a new file there reloads it)\n",
            shown(path),
            target.describe()
        ),
        WatchEvent::Unwatchable { dir, error } => {
            format!("watch: cannot watch {} ({error}); trying again every second\n", shown(dir))
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Logs how a start-up load went; failures are reported, never fatal.
fn report_start(what: &str, result: &ReloadResult) {
    match result.status() {
        Status::Ok => tracing::info!(target: "zest", "{what}: loaded {}", result.reloaded.join(", ")),
        status => {
            for failure in &result.errors {
                tracing::error!(target: "zest", "{what}: {}: {} ({})", failure.target, failure.message, failure.reason);
            }
            for skip in &result.skipped {
                tracing::warn!(target: "zest", "{what}: {} skipped ({})", skip.target, skip.reason);
            }
            tracing::warn!(target: "zest", "{what}: {}", status.as_str());
        }
    }
}
