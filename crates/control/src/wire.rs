//! The JSON shapes of CONTRACT.md §4–§6 and §10: `system.reload` params into a
//! [`ReloadRequest`]; reload results, node status and telemetry events out; and
//! both ways for what members of a cluster send each other and keep in etcd —
//! results, blueprints, manifests, extension records. The runtime's types stay
//! free of serde; this is their one wire mirror.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use zest_runtime::app::{ModuleDecl, ProcessDecl};
use zest_runtime::{
    AllScope, AppManifest, Blueprint, BlueprintUnit, BuildId, BuildRef, ClusterOutcome, CodeChangeTarget,
    CompileReport, Compiler, Counts, Event, EventBody, ExtensionRecord, Failure, HistoryEntry, Kind, ModuleDescription,
    NodeStatus, Phase, Reason, ReloadOptions, ReloadRequest, ReloadResult, RollbackRequest, RollbackTarget, Scope,
    Skip, Swap, TrialSpec, UnloadRequest, UnloadTarget, VersionInfo,
};

/// The `data.code` of every JSON-RPC error: CONTRACT.md §4's, plus two for
/// errors jsonrpsee raises itself (`PARSE_ERROR`, `REQUEST_TOO_LARGE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    CallFailed,
    RequestTooLarge,
    InternalError,
}

/// Each code, its string and its JSON-RPC number: the one table of both.
const CODES: [(Code, &str, i32); 11] = [
    (Code::ParseError, "PARSE_ERROR", -32700),
    (Code::InvalidRequest, "INVALID_REQUEST", -32600),
    (Code::MethodNotFound, "METHOD_NOT_FOUND", -32601),
    (Code::InvalidParams, "INVALID_PARAMS", -32602),
    (Code::Unauthorized, "UNAUTHORIZED", -32001),
    (Code::Forbidden, "FORBIDDEN", -32003),
    (Code::NotFound, "NOT_FOUND", -32004),
    (Code::Conflict, "CONFLICT", -32009),
    (Code::CallFailed, "CALL_FAILED", -32010),
    (Code::RequestTooLarge, "REQUEST_TOO_LARGE", -32007),
    (Code::InternalError, "INTERNAL_ERROR", -32603),
];

impl Code {
    fn entry(self) -> (Code, &'static str, i32) {
        *CODES.iter().find(|(code, ..)| *code == self).expect("every code is in the table")
    }

    pub fn as_str(self) -> &'static str {
        self.entry().1
    }

    pub fn numeric(self) -> i32 {
        self.entry().2
    }

    /// The code of a JSON-RPC number; an unknown one is an internal error.
    pub fn of_numeric(numeric: i64) -> Code {
        CODES.iter().find(|(.., n)| i64::from(*n) == numeric).map_or(Code::InternalError, |(code, ..)| *code)
    }
}

/// Milliseconds with microsecond precision, as a JSON number.
fn ms(duration: Duration) -> Value {
    json!((duration.as_secs_f64() * 1e6).round() / 1e3)
}

fn time(at: SystemTime) -> Value {
    json!(humantime::format_rfc3339_millis(at).to_string())
}

/// A reload result (§5), children included.
pub fn result(result: &ReloadResult) -> Value {
    let mut metadata = Map::new();
    metadata.insert("unchanged".into(), json!(result.metadata.unchanged));
    if !result.metadata.swaps.is_empty() {
        let swaps: Vec<Value> = result
            .metadata
            .swaps
            .iter()
            .map(|swap| {
                json!({"module": swap.module, "old_vsn": swap.old_vsn, "new_vsn": swap.new_vsn,
                       "sha256": swap.sha256, "compiler": swap.compiler.as_str(),
                       "compiled": swap.compiled})
            })
            .collect();
        metadata.insert("swaps".into(), Value::Array(swaps));
    }
    if let Some(compile) = &result.metadata.compile {
        let mut report = json!({"ran": compile.ran});
        if compile.ran {
            report["command"] = json!(compile.command);
            report["duration_ms"] = ms(compile.duration);
            report["exit_code"] = json!(compile.exit_code);
            if compile.timed_out {
                report["timed_out"] = json!(true);
            }
        }
        metadata.insert("compile".into(), report);
    }
    if let Some(counts) = &result.metadata.counts {
        metadata.insert(
            "counts".into(),
            json!({"apps": counts.apps, "extensions": counts.extensions, "code_change": counts.code_change,
                   "ok": counts.ok, "partial": counts.partial, "error": counts.error}),
        );
    }
    if !result.metadata.compiled_modules.is_empty() {
        metadata.insert("compiled_modules".into(), json!(result.metadata.compiled_modules));
    }
    if !result.metadata.unloaded.is_empty() {
        metadata.insert("unloaded".into(), json!(result.metadata.unloaded));
    }
    if result.metadata.rollback {
        metadata.insert("rollback".into(), json!(true));
    }
    if result.metadata.dry_run {
        metadata.insert("dry_run".into(), json!(true));
        let plan: Vec<Value> = result
            .metadata
            .plan
            .iter()
            .map(|entry| {
                let build = |(vsn, sha256): &(String, String)| json!({"vsn": vsn, "sha256": sha256});
                json!({"module": entry.module, "from": entry.from.as_ref().map(build), "to": build(&entry.to),
                       "exports_added": entry.exports_added, "exports_removed": entry.exports_removed,
                       "functions_changed": entry.functions_changed.iter()
                           .map(|change| json!({"name": change.name, "from": change.from, "to": change.to}))
                           .collect::<Vec<_>>(),
                       "processes": entry.processes.iter()
                           .map(|(name, can)| json!({"name": name, "code_change": can})).collect::<Vec<_>>()})
            })
            .collect();
        metadata.insert("plan".into(), Value::Array(plan));
    }
    if let Some(cluster) = &result.metadata.cluster {
        metadata.insert(
            "cluster".into(),
            json!({"nodes": cluster.nodes, "phase": cluster.phase.as_str(), "revision": cluster.revision}),
        );
    }
    json!({
        "kind": result.kind.as_str(),
        "target": result.target,
        "status": result.status().as_str(),
        "reloaded": result.reloaded,
        "skipped": result.skipped.iter().map(|s| json!({"target": s.target, "reason": s.reason.as_str()})).collect::<Vec<_>>(),
        "errors": result.errors.iter()
            .map(|f| json!({"target": f.target, "reason": f.reason.as_str(), "message": f.message}))
            .collect::<Vec<_>>(),
        "duration_ms": ms(result.duration),
        "results": result.results.iter().map(self::result).collect::<Vec<_>>(),
        "metadata": metadata,
    })
}

fn version(info: &VersionInfo) -> Value {
    json!({"vsn": info.vsn, "sha256": info.sha256, "loaded_at": time(info.loaded_at),
           "source": info.source.display().to_string(),
           "compiler": info.compiler.as_str(), "kind": info.kind.as_str()})
}

/// What `module.describe` answers: each callable with its parameters' and
/// result's types.
pub fn description(description: &ModuleDescription) -> Value {
    let functions: Vec<Value> = description
        .functions
        .iter()
        .map(|(name, signature)| {
            let params: Vec<Value> =
                signature.params.iter().map(|(name, ty)| json!({"name": name, "type": ty})).collect();
            json!({"name": name, "params": params, "result": signature.result})
        })
        .collect();
    json!({"module": description.module, "vsn": description.vsn, "kind": description.kind.as_str(),
           "functions": functions})
}

/// What `system.status` answers.
pub fn status(status: &NodeStatus, node: &NodeInfo) -> Value {
    json!({
        "node": {"version": env!("CARGO_PKG_VERSION"), "listen": node.listen, "started_at": time(node.started_at),
                 "uptime_ms": node.started_at.elapsed().map(|d| d.as_millis() as u64).unwrap_or(0)},
        "apps": status.apps.iter()
            .map(|app| json!({"name": app.name, "dir": app.dir.display().to_string(), "modules": app.modules}))
            .collect::<Vec<_>>(),
        "modules": status.modules.iter().map(module_status).collect::<Vec<_>>(),
        "extensions": status.extensions.iter().map(|e| json!({
            "name": e.record.name, "path": e.record.path.display().to_string(),
            "format": e.record.format.as_str(),
            "source_sha256": e.record.source_sha256, "loaded": e.loaded,
        })).collect::<Vec<_>>(),
        "processes": status.processes.iter().map(|p| json!({
            "name": p.name, "module": p.module, "vsn": p.vsn, "state": p.state.as_str(),
            "queued": p.queued, "handled": p.handled, "restarts": p.restarts,
        })).collect::<Vec<_>>(),
    })
}

/// `system.status`'s `"toolchains"`: per language, what is configured
/// (`"auto"` or a path) and the tool found (`path`, `version`) or the `error`
/// saying what to install.
pub fn toolchains(toolchains: &[zest_runtime::ToolchainStatus]) -> Value {
    let entries = toolchains.iter().map(|t| {
        let configured = t.configured.as_ref().map_or("auto".to_string(), |path| path.display().to_string());
        let entry = match &t.found {
            Ok(tool) => json!({"configured": configured, "tool": t.language.tool(),
                               "path": tool.path.display().to_string(), "version": tool.version}),
            Err(err) => json!({"configured": configured, "tool": t.language.tool(), "path": null,
                               "error": err.to_string()}),
        };
        (t.language.as_str().to_string(), entry)
    });
    Value::Object(entries.collect())
}

fn module_status(m: &zest_runtime::ModuleStatus) -> Value {
    let mut current = version(&m.current);
    current["share"] = json!(m.share);
    current["calls"] = json!(m.calls);
    current["failures"] = json!(m.failures);
    let mut module = json!({
        "name": m.name, "app": m.app, "current": current,
        "old": m.old.iter().map(version).collect::<Vec<_>>(),
        "pinned_by": m.pinned_by, "functions": m.functions,
    });
    if let Some(canary) = &m.canary {
        module["canary"] = json!({"vsn": canary.version.vsn, "sha256": canary.version.sha256,
                                  "share": canary.share, "calls": canary.calls, "failures": canary.failures});
    }
    if let Some(until) = m.trial_until {
        module["trial"] = json!({"until": time(until)});
    }
    module
}

/// About the serving node, for status.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub listen: String,
    pub started_at: SystemTime,
}

/// A telemetry event (§6).
pub fn event(event: &Event) -> Value {
    let measurements = match &event.body {
        EventBody::Start { system_time } => json!({"system_time": time(*system_time)}),
        EventBody::Stop { duration, .. } | EventBody::Exception { duration, .. } => {
            json!({"duration_ms": ms(*duration)})
        }
        EventBody::BuildOutput { .. } | EventBody::ClusterPrepare { .. } | EventBody::ClusterAbort { .. } => json!({}),
        EventBody::ClusterCommit { revision, .. } => json!({"revision": revision}),
        EventBody::Reverted { calls, failures, .. } | EventBody::Permanent { calls, failures } => {
            json!({"calls": calls, "failures": failures})
        }
    };
    let mut metadata = json!({"kind": event.kind.as_str(), "target": event.target, "request_id": event.request_id});
    match &event.body {
        EventBody::Stop { status, .. } => metadata["status"] = json!(status.as_str()),
        EventBody::Exception { error, .. } => metadata["error"] = json!(error),
        EventBody::BuildOutput { stream, line } => {
            metadata["stream"] = json!(stream.as_str());
            metadata["line"] = json!(line);
        }
        EventBody::ClusterPrepare { nodes } | EventBody::ClusterCommit { nodes, .. } => {
            metadata["nodes"] = json!(nodes);
        }
        EventBody::ClusterAbort { nodes, reason, message } => {
            metadata["nodes"] = json!(nodes);
            metadata["reason"] = json!(reason.as_str());
            metadata["message"] = json!(message);
        }
        EventBody::Reverted { status, .. } => metadata["status"] = json!(status.as_str()),
        EventBody::Start { .. } | EventBody::Permanent { .. } => {}
    }
    json!({"event": event.name(), "seq": event.seq, "measurements": measurements, "metadata": metadata})
}

/// The params `system.reload` takes; any other is refused, naming it.
pub const RELOAD_PARAMS: [&str; 17] = [
    "scope",
    "module",
    "moduleName",
    "app",
    "path",
    "apps",
    "extensions",
    "code_change",
    "compile",
    "force",
    "atomic",
    "lock_timeout_ms",
    "nodes",
    "dry_run",
    "trial",
    "canary",
    "allow_breaking",
];

/// Which members a cluster reload reaches (`nodes`, CONTRACT.md §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nodes {
    All,
    Local,
    Listed(Vec<String>),
}

/// The params of `method` as an object (absent or null: empty), refusing any
/// key not in `known` with a message naming it.
pub fn params_object<'a>(
    method: &str,
    params: &'a Value,
    known: &[&str],
    empty: &'a Map<String, Value>,
) -> Result<&'a Map<String, Value>, String> {
    let params = match params {
        Value::Object(map) => map,
        Value::Null => empty,
        _ => return Err(format!("{method} params must be an object")),
    };
    if let Some(unknown) = params.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(format!("unknown param `{unknown}`: {method} takes {}", known.join(", ")));
    }
    Ok(params)
}

/// `system.reload` params (§4) into a request and the members it reaches;
/// `Err` is the invalid-params message.
pub fn reload_request(params: &Value) -> Result<(ReloadRequest, Nodes), String> {
    let empty = Map::new();
    let params = params_object("system.reload", params, &RELOAD_PARAMS, &empty)?;
    let string = |key: &str| -> Result<Option<String>, String> {
        match params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{key} must be a string")),
        }
    };
    let flag = |key: &str| -> Result<bool, String> {
        match params.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("{key} must be a boolean")),
        }
    };
    let strings = |key: &str| -> Result<Vec<String>, String> {
        match params.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string).ok_or_else(|| format!("{key} must be a list of strings")))
                .collect(),
            Some(_) => Err(format!("{key} must be a list of strings")),
        }
    };
    let lock_timeout = match params.get("lock_timeout_ms") {
        None | Some(Value::Null) => Duration::ZERO,
        Some(value) => match value.as_u64() {
            Some(ms) => Duration::from_millis(ms),
            None => return Err("lock_timeout_ms must be an integer ≥ 0".into()),
        },
    };
    let mut options = ReloadOptions {
        force: flag("force")?,
        atomic: flag("atomic")?,
        compile: flag("compile")?,
        lock_timeout,
        dry_run: flag("dry_run")?,
        allow_breaking: flag("allow_breaking")?,
        trial: trial_spec(params.get("trial"))?,
        canary: canary_percent(params.get("canary"))?,
        ..ReloadOptions::default()
    };
    let scope = match params.get("scope") {
        Some(Value::String(scope)) => scope.as_str(),
        _ => "all",
    };
    let scope = match scope {
        "module" => {
            let module = match string("module")? {
                Some(module) => Some(module),
                None => string("moduleName")?,
            };
            Scope::Module(module.ok_or("module is required for scope=module")?)
        }
        "app" => Scope::App(string("app")?.ok_or("app is required for scope=app")?),
        "extension" => Scope::Extension(PathBuf::from(string("path")?.ok_or("path is required for scope=extension")?)),
        "all" => Scope::All(AllScope {
            apps: strings("apps")?,
            extensions: strings("extensions")?.into_iter().map(PathBuf::from).collect(),
            code_change: code_change_targets(params.get("code_change"))?,
        }),
        other => return Err(format!("Invalid scope '{other}'. Expected one of: module, app, extension, all")),
    };
    let nodes = nodes_of(params.get("nodes"))?;
    let scope_name = match &scope {
        Scope::Module(_) => "module",
        Scope::App(_) => "app",
        Scope::Extension(_) => "extension",
        Scope::All(_) => "all",
    };
    if options.canary.is_some() && !matches!(scope, Scope::Module(_) | Scope::App(_)) {
        return Err(format!("canary applies to scope module or app, not {scope_name}"));
    }
    if options.trial.is_some() && matches!(scope, Scope::All(_)) {
        return Err("trial applies to scope module, app or extension, not all".into());
    }
    if options.dry_run && (options.trial.is_some() || options.canary.is_some()) {
        options.trial = None;
        options.canary = None;
    }
    Ok((ReloadRequest { scope, options, request_id: None }, nodes))
}

/// `nodes`: `"all"` (also when absent), `"local"`, or member ids.
fn nodes_of(value: Option<&Value>) -> Result<Nodes, String> {
    let bad = || "nodes must be \"all\", \"local\" or a non-empty list of member ids".to_string();
    match value {
        None | Some(Value::Null) => Ok(Nodes::All),
        Some(Value::String(all)) if all == "all" => Ok(Nodes::All),
        Some(Value::String(local)) if local == "local" => Ok(Nodes::Local),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .map(Nodes::Listed)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// `trial` of `system.reload`: `{"window_ms", "max_failure_rate"?, "min_calls"?}`.
fn trial_spec(value: Option<&Value>) -> Result<Option<TrialSpec>, String> {
    let trial = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(value) => value,
    };
    let empty = Map::new();
    let fields = params_object("trial", trial, &["window_ms", "max_failure_rate", "min_calls"], &empty)?;
    let window = match fields.get("window_ms").and_then(Value::as_u64) {
        Some(ms) if ms > 0 => Duration::from_millis(ms),
        _ => return Err("trial.window_ms is required, an integer ≥ 1".into()),
    };
    let max_failure_rate = match fields.get("max_failure_rate") {
        None | Some(Value::Null) => 0.01,
        Some(value) => match value.as_f64() {
            Some(rate) if (0.0..=1.0).contains(&rate) => rate,
            _ => return Err("trial.max_failure_rate must be a number from 0 to 1".into()),
        },
    };
    let min_calls = match fields.get("min_calls") {
        None | Some(Value::Null) => 20,
        Some(value) => value.as_u64().ok_or("trial.min_calls must be an integer ≥ 0")?,
    };
    Ok(Some(TrialSpec { window, max_failure_rate, min_calls }))
}

/// `canary` of `system.reload`: `{"percent": 1..99}`.
fn canary_percent(value: Option<&Value>) -> Result<Option<u8>, String> {
    let canary = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(value) => value,
    };
    let empty = Map::new();
    let fields = params_object("canary", canary, &["percent"], &empty)?;
    match fields.get("percent").and_then(Value::as_u64) {
        Some(percent @ 1..=99) => Ok(Some(percent as u8)),
        _ => Err("canary.percent is required, an integer from 1 to 99".into()),
    }
}

/// `system.rollback` params into a request (`INVALID_PARAMS` message on error).
pub fn rollback_request(params: &Value) -> Result<(RollbackRequest, Nodes), String> {
    let empty = Map::new();
    let known = ["module", "app", "to", "force", "atomic", "lock_timeout_ms", "nodes"];
    let params = params_object("system.rollback", params, &known, &empty)?;
    let target = target_of(params)?;
    let flag = |key: &str| -> Result<bool, String> {
        match params.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("{key} must be a boolean")),
        }
    };
    let to = match params.get("to") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().ok_or("to must be a history id (an integer)")?),
    };
    let lock_timeout = match params.get("lock_timeout_ms") {
        None | Some(Value::Null) => Duration::ZERO,
        Some(value) => Duration::from_millis(value.as_u64().ok_or("lock_timeout_ms must be an integer ≥ 0")?),
    };
    let options =
        ReloadOptions { force: flag("force")?, atomic: flag("atomic")?, lock_timeout, ..ReloadOptions::default() };
    let nodes = nodes_of(params.get("nodes"))?;
    Ok((RollbackRequest { target, to, options, request_id: None }, nodes))
}

/// `system.unload` params: `{"extension": PATH}` or `{"app": NAME}`, and
/// `lock_timeout_ms`; any other param (`module` too: an app's module leaves
/// with its app or its manifest) is refused by name.
pub fn unload_request(params: &Value) -> Result<UnloadRequest, String> {
    let empty = Map::new();
    let params = params_object("system.unload", params, &["extension", "app", "lock_timeout_ms"], &empty)?;
    let text = |key: &str| match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key} must be a string")),
    };
    let target = match (text("extension")?, text("app")?) {
        (Some(path), None) => UnloadTarget::Extension(PathBuf::from(path)),
        (None, Some(app)) => UnloadTarget::App(app),
        (Some(_), Some(_)) => return Err("give extension or app, not both".into()),
        (None, None) => return Err("extension (a path) or app (a name) is required".into()),
    };
    let lock_timeout = match params.get("lock_timeout_ms") {
        None | Some(Value::Null) => Duration::ZERO,
        Some(value) => Duration::from_millis(value.as_u64().ok_or("lock_timeout_ms must be an integer ≥ 0")?),
    };
    Ok(UnloadRequest { target, lock_timeout, request_id: None })
}

/// `system.promote` params: the target and how long to wait for the lock.
pub fn promote_request(params: &Value) -> Result<(RollbackTarget, ReloadOptions), String> {
    let empty = Map::new();
    let params = params_object("system.promote", params, &["module", "app", "lock_timeout_ms"], &empty)?;
    let target = target_of(params)?;
    let lock_timeout = match params.get("lock_timeout_ms") {
        None | Some(Value::Null) => Duration::ZERO,
        Some(value) => Duration::from_millis(value.as_u64().ok_or("lock_timeout_ms must be an integer ≥ 0")?),
    };
    Ok((target, ReloadOptions { lock_timeout, ..ReloadOptions::default() }))
}

fn target_of(params: &Map<String, Value>) -> Result<RollbackTarget, String> {
    let text = |key: &str| match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key} must be a string")),
    };
    match (text("module")?, text("app")?) {
        (Some(module), None) => Ok(RollbackTarget::Module(module)),
        (None, Some(app)) => Ok(RollbackTarget::App(app)),
        (Some(_), Some(_)) => Err("give module or app, not both".into()),
        (None, None) => Err("module or app is required".into()),
    }
}

/// `system.history` params: `{"module"?, "limit"? (default 50)}`.
pub fn history_request(params: &Value) -> Result<(Option<String>, usize), String> {
    let empty = Map::new();
    let params = params_object("system.history", params, &["module", "limit"], &empty)?;
    let module = match params.get("module") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("module must be a string".into()),
    };
    let limit = match params.get("limit") {
        None | Some(Value::Null) => 50,
        Some(value) => match value.as_u64() {
            Some(limit) if limit >= 1 => limit.min(10_000) as usize,
            _ => return Err("limit must be an integer ≥ 1".into()),
        },
    };
    Ok((module, limit))
}

/// History entries (CONTRACT.md §11).
pub fn history(entries: &[HistoryEntry]) -> Value {
    let build = |b: &BuildId| json!({"vsn": b.vsn, "sha256": b.sha256});
    let entries: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({"id": e.id, "at": time(e.at()), "module": e.module, "action": e.action.as_str(),
                   "from": e.from.as_ref().map(build), "to": e.to.as_ref().map(build), "request_id": e.request_id})
        })
        .collect();
    json!({"entries": entries})
}

/// `code_change` targets. A target that is an object is passed on even when
/// its fields are wrong: the reload reports it as `invalid_code_change_target`.
fn code_change_targets(value: Option<&Value>) -> Result<Vec<CodeChangeTarget>, String> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err("code_change must be a list of {server, module, old_vsn?, extra?}".into()),
    };
    items
        .iter()
        .map(|item| {
            let Value::Object(target) = item else {
                return Err("each code_change target must be an object {server, module, old_vsn?, extra?}".into());
            };
            let text = |key: &str| target.get(key).and_then(Value::as_str).unwrap_or("").to_string();
            Ok(CodeChangeTarget {
                server: text("server"),
                module: text("module"),
                old_vsn: target.get("old_vsn").and_then(Value::as_str).map(str::to_string),
                extra: target.get("extra").cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// The kind of a result or unit from its wire name.
pub fn kind_of(text: &str) -> Option<Kind> {
    [Kind::Module, Kind::App, Kind::Extension, Kind::CodeChange, Kind::System, Kind::Node]
        .into_iter()
        .find(|kind| kind.as_str() == text)
}

fn text_of(value: &Value, key: &str) -> Result<String, String> {
    value.get(key).and_then(Value::as_str).map(str::to_string).ok_or_else(|| format!("{key} must be a string"))
}

fn texts_of(value: &Value, key: &str) -> Result<Vec<String>, String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or_else(|| format!("{key} must hold strings")))
            .collect(),
        Some(_) => Err(format!("{key} must be a list")),
    }
}

fn items_of<'a>(value: &'a Value, key: &str) -> Result<&'a [Value], String> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("{key} must be a list")),
    }
}

fn reason_of(value: &Value) -> Result<Reason, String> {
    let text = text_of(value, "reason")?;
    Reason::parse(&text).ok_or_else(|| format!("unknown reason {text:?}"))
}

/// A reload result read back (a member's answer to its coordinator): the
/// inverse of [`result`].
pub fn parse_result(value: &Value) -> Result<ReloadResult, String> {
    let kind = text_of(value, "kind")?;
    let kind = kind_of(&kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    let mut result = ReloadResult::new(kind, text_of(value, "target")?);
    result.reloaded = texts_of(value, "reloaded")?;
    for skip in items_of(value, "skipped")? {
        result.skipped.push(Skip { target: text_of(skip, "target")?, reason: reason_of(skip)? });
    }
    for error in items_of(value, "errors")? {
        result.errors.push(Failure::new(text_of(error, "target")?, reason_of(error)?, text_of(error, "message")?));
    }
    let ms = value.get("duration_ms").and_then(Value::as_f64).unwrap_or(0.0).max(0.0);
    result.duration = Duration::from_secs_f64(ms / 1e3);
    result.results = items_of(value, "results")?.iter().map(parse_result).collect::<Result<_, _>>()?;
    let metadata = value.get("metadata").cloned().unwrap_or(Value::Null);
    result.metadata.unchanged = texts_of(&metadata, "unchanged")?;
    result.metadata.compiled_modules = texts_of(&metadata, "compiled_modules")?;
    result.metadata.unloaded = texts_of(&metadata, "unloaded")?;
    for swap in items_of(&metadata, "swaps")? {
        let compiler = match swap.get("compiler").and_then(Value::as_str) {
            Some("winch") => Compiler::Winch,
            _ => Compiler::Cranelift,
        };
        result.metadata.swaps.push(Swap {
            module: text_of(swap, "module")?,
            old_vsn: swap.get("old_vsn").and_then(Value::as_str).map(str::to_string),
            new_vsn: text_of(swap, "new_vsn")?,
            sha256: text_of(swap, "sha256")?,
            from: None,
            source: PathBuf::new(),
            compiler,
            compiled: swap.get("compiled").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    if let Some(compile) = metadata.get("compile").filter(|c| c.is_object()) {
        let ms = compile.get("duration_ms").and_then(Value::as_f64).unwrap_or(0.0).max(0.0);
        result.metadata.compile = Some(CompileReport {
            ran: compile.get("ran").and_then(Value::as_bool).unwrap_or(false),
            command: compile.get("command").and_then(Value::as_str).map(str::to_string),
            duration: Duration::from_secs_f64(ms / 1e3),
            exit_code: compile.get("exit_code").and_then(Value::as_i64).map(|code| code as i32),
            timed_out: compile.get("timed_out").and_then(Value::as_bool).unwrap_or(false),
            tail: Vec::new(),
        });
    }
    if let Some(counts) = metadata.get("counts").filter(|c| c.is_object()) {
        let n = |key: &str| counts.get(key).and_then(Value::as_u64).unwrap_or(0) as usize;
        result.metadata.counts = Some(Counts {
            apps: n("apps"),
            extensions: n("extensions"),
            code_change: n("code_change"),
            ok: n("ok"),
            partial: n("partial"),
            error: n("error"),
        });
    }
    if let Some(cluster) = metadata.get("cluster").filter(|c| c.is_object()) {
        let phase = match cluster.get("phase").and_then(Value::as_str) {
            Some("committed") => Phase::Committed,
            _ => Phase::Aborted,
        };
        result.metadata.cluster = Some(ClusterOutcome {
            nodes: texts_of(cluster, "nodes")?,
            phase,
            revision: cluster.get("revision").and_then(Value::as_i64),
        });
    }
    Ok(result)
}

/// An app manifest as a blueprint and etcd carry it.
pub fn manifest(manifest: &AppManifest) -> Value {
    json!({
        "name": manifest.name,
        "dir": manifest.dir.display().to_string(),
        "file": manifest.file.display().to_string(),
        "build": manifest.build,
        "watch": manifest.watch,
        "modules": manifest.modules.iter()
            .map(|m| json!({"name": m.name, "path": m.path.display().to_string()}))
            .collect::<Vec<_>>(),
        "processes": manifest.processes.iter()
            .map(|p| json!({"name": p.name, "module": p.module, "init": p.init}))
            .collect::<Vec<_>>(),
    })
}

pub fn parse_manifest(value: &Value) -> Result<AppManifest, String> {
    let modules = items_of(value, "modules")?
        .iter()
        .map(|m| Ok(ModuleDecl { name: text_of(m, "name")?, path: PathBuf::from(text_of(m, "path")?) }))
        .collect::<Result<_, String>>()?;
    let processes = items_of(value, "processes")?
        .iter()
        .map(|p| {
            Ok(ProcessDecl {
                name: text_of(p, "name")?,
                module: text_of(p, "module")?,
                init: p.get("init").cloned().unwrap_or(Value::Null),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(AppManifest {
        name: text_of(value, "name")?,
        dir: PathBuf::from(text_of(value, "dir")?),
        file: PathBuf::from(text_of(value, "file")?),
        build: value.get("build").and_then(Value::as_str).map(str::to_string),
        // Absent in what members before watch mode wrote: none.
        watch: texts_of(value, "watch")?,
        modules,
        processes,
    })
}

/// An extension record as a blueprint and etcd carry it (the records file's form).
pub fn record(record: &ExtensionRecord) -> Value {
    serde_json::to_value(record).expect("records serialise")
}

pub fn parse_record(value: &Value) -> Result<ExtensionRecord, String> {
    serde_json::from_value(value.clone()).map_err(|err| format!("an extension record: {err}"))
}

/// A blueprint (what a cluster member prepares) as JSON.
pub fn blueprint(blueprint: &Blueprint) -> Value {
    let units: Vec<Value> = blueprint
        .units
        .iter()
        .map(|unit| {
            json!({
                "kind": unit.kind.as_str(),
                "target": unit.target,
                "builds": unit.builds.iter().map(build_ref).collect::<Vec<_>>(),
                "app": unit.app.as_ref().map(manifest),
                "extension": unit.extension.as_ref().map(record),
                "unloads": unit.unloads,
            })
        })
        .collect();
    let code_change: Vec<Value> = blueprint
        .code_change
        .iter()
        .map(|t| json!({"server": t.server, "module": t.module, "old_vsn": t.old_vsn, "extra": t.extra}))
        .collect();
    json!({
        "kind": blueprint.kind.as_str(), "target": blueprint.target, "units": units,
        "code_change": code_change, "force": blueprint.force, "atomic": blueprint.atomic,
        "allow_breaking": blueprint.allow_breaking,
    })
}

pub fn build_ref(build: &BuildRef) -> Value {
    json!({"module": build.module, "sha256": build.sha256, "vsn": build.vsn,
           "source": build.source.display().to_string()})
}

pub fn parse_build_ref(value: &Value) -> Result<BuildRef, String> {
    Ok(BuildRef {
        module: text_of(value, "module")?,
        sha256: text_of(value, "sha256")?,
        vsn: text_of(value, "vsn")?,
        source: PathBuf::from(text_of(value, "source")?),
    })
}

pub fn parse_blueprint(value: &Value) -> Result<Blueprint, String> {
    let kind_named = |value: &Value| -> Result<Kind, String> {
        let text = text_of(value, "kind")?;
        kind_of(&text).ok_or_else(|| format!("unknown kind {text:?}"))
    };
    let units = items_of(value, "units")?
        .iter()
        .map(|unit| {
            Ok(BlueprintUnit {
                kind: kind_named(unit)?,
                target: text_of(unit, "target")?,
                builds: items_of(unit, "builds")?.iter().map(parse_build_ref).collect::<Result<_, _>>()?,
                app: match unit.get("app") {
                    None | Some(Value::Null) => None,
                    Some(app) => Some(parse_manifest(app)?),
                },
                extension: match unit.get("extension") {
                    None | Some(Value::Null) => None,
                    Some(record) => Some(parse_record(record)?),
                },
                // Absent in what members before unloads sent: none.
                unloads: texts_of(unit, "unloads")?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Blueprint {
        kind: kind_named(value)?,
        target: text_of(value, "target")?,
        units,
        code_change: code_change_targets(value.get("code_change"))?,
        force: value.get("force").and_then(Value::as_bool).unwrap_or(false),
        atomic: value.get("atomic").and_then(Value::as_bool).unwrap_or(false),
        allow_breaking: value.get("allow_breaking").and_then(Value::as_bool).unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_contract_strings_and_numbers() {
        assert_eq!((Code::Conflict.as_str(), Code::Conflict.numeric()), ("CONFLICT", -32009));
        assert_eq!((Code::Forbidden.as_str(), Code::Forbidden.numeric()), ("FORBIDDEN", -32003));
        for (code, _, numeric) in CODES {
            assert_eq!(Code::of_numeric(numeric.into()), code);
        }
        assert_eq!(Code::of_numeric(-1), Code::InternalError);
    }

    #[test]
    fn params_follow_the_seed_names_and_defaults() {
        let (request, nodes) =
            reload_request(&json!({"scope": "module", "moduleName": "clock", "force": true})).unwrap();
        assert_eq!(nodes, Nodes::All);
        assert_eq!(request.scope, Scope::Module("clock".into()));
        assert!(request.options.force && !request.options.atomic);
        assert!(matches!(reload_request(&json!({"scope": 7})).unwrap().0.scope, Scope::All(_)));
        assert!(matches!(reload_request(&Value::Null).unwrap().0.scope, Scope::All(_)));
        assert_eq!(reload_request(&json!({"scope": "module"})).unwrap_err(), "module is required for scope=module");
        assert_eq!(reload_request(&json!({"scope": "app"})).unwrap_err(), "app is required for scope=app");
        assert_eq!(reload_request(&json!({"scope": "extension"})).unwrap_err(), "path is required for scope=extension");
        assert_eq!(
            reload_request(&json!({"scope": "banana"})).unwrap_err(),
            "Invalid scope 'banana'. Expected one of: module, app, extension, all"
        );
        assert!(reload_request(&json!({"lock_timeout_ms": -1})).is_err());
        assert!(reload_request(&json!({"force": "yes"})).is_err());
    }

    #[test]
    fn an_unknown_param_is_refused_by_name_so_a_misspelt_option_never_reloads() {
        let err = reload_request(&json!({"scope": "module", "module": "clock", "dry_rn": true})).unwrap_err();
        assert!(err.starts_with("unknown param `dry_rn`: system.reload takes scope, module"), "{err}");
    }

    #[test]
    fn nodes_is_all_local_or_a_non_empty_list_of_ids() {
        let nodes = |value: Value| reload_request(&json!({"nodes": value})).map(|(_, nodes)| nodes);
        assert_eq!(nodes(json!("all")), Ok(Nodes::All));
        assert_eq!(nodes(json!("local")), Ok(Nodes::Local));
        assert_eq!(nodes(json!(["a", "c"])), Ok(Nodes::Listed(vec!["a".into(), "c".into()])));
        for bad in [json!([]), json!("some"), json!(3), json!([1])] {
            assert!(nodes(bad.clone()).unwrap_err().contains("nodes must be"), "{bad}");
        }
    }

    #[test]
    fn results_blueprints_and_manifests_survive_the_wire_both_ways() {
        let mut child = ReloadResult::new(Kind::Module, "clock");
        child.reloaded.push("clock".into());
        child.skipped.push(Skip { target: "clock".into(), reason: Reason::InUse });
        child.metadata.swaps.push(Swap {
            module: "clock".into(),
            old_vsn: Some("1".into()),
            new_vsn: "2".into(),
            sha256: "ab".repeat(32),
            from: None,
            source: PathBuf::new(),
            compiler: Compiler::Winch,
            compiled: true,
        });
        let mut node = ReloadResult::new(Kind::Node, "b");
        node.errors.push(Failure::new("b", Reason::NodeUnreachable, "no answer"));
        node.results.push(child);
        node.metadata.cluster =
            Some(ClusterOutcome { nodes: vec!["a".into(), "b".into()], phase: Phase::Aborted, revision: None });
        node.duration = Duration::from_micros(1500);
        assert_eq!(parse_result(&result(&node)).unwrap(), node);

        let manifest = AppManifest {
            name: "demo".into(),
            dir: PathBuf::from("/apps/demo"),
            file: PathBuf::from("/apps/demo/zest.toml"),
            build: Some("make".into()),
            watch: vec!["src/**/*.rs".into()],
            modules: vec![ModuleDecl { name: "clock".into(), path: PathBuf::from("/apps/demo/clock.wat") }],
            processes: vec![ProcessDecl {
                name: "counter".into(),
                module: "counter".into(),
                init: json!({"start": 0}),
            }],
        };
        let blueprint = Blueprint {
            kind: Kind::App,
            target: "demo".into(),
            units: vec![BlueprintUnit {
                kind: Kind::App,
                target: "demo".into(),
                builds: vec![BuildRef {
                    module: "clock".into(),
                    sha256: "cd".repeat(32),
                    vsn: "1.0.1".into(),
                    source: PathBuf::from("/apps/demo/clock.wat"),
                }],
                app: Some(manifest),
                extension: None,
                unloads: vec!["front".into()],
            }],
            code_change: vec![],
            force: false,
            atomic: true,
            allow_breaking: true,
        };
        assert_eq!(parse_blueprint(&self::blueprint(&blueprint)).unwrap(), blueprint);
        assert!(parse_result(
            &json!({"kind": "module", "target": "x", "errors": [{"target": "x", "reason": "nope", "message": ""}]})
        )
        .unwrap_err()
        .contains("unknown reason"));
    }
}
