//! The JSON shapes of CONTRACT.md §4–§6: `system.reload` params into a
//! [`ReloadRequest`], and reload results, node status and telemetry events out.
//! The runtime's types stay free of serde; this is their one wire mirror.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use zest_runtime::{
    AllScope, CodeChangeTarget, Event, EventBody, NodeStatus, ReloadOptions, ReloadRequest, ReloadResult, Scope,
    VersionInfo,
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
           "compiler": info.compiler.as_str()})
}

/// What `system.status` answers.
pub fn status(status: &NodeStatus, node: &NodeInfo) -> Value {
    json!({
        "node": {"version": env!("CARGO_PKG_VERSION"), "listen": node.listen, "started_at": time(node.started_at),
                 "uptime_ms": node.started_at.elapsed().map(|d| d.as_millis() as u64).unwrap_or(0)},
        "apps": status.apps.iter()
            .map(|app| json!({"name": app.name, "dir": app.dir.display().to_string(), "modules": app.modules}))
            .collect::<Vec<_>>(),
        "modules": status.modules.iter().map(|m| json!({
            "name": m.name, "app": m.app, "current": version(&m.current),
            "old": m.old.iter().map(version).collect::<Vec<_>>(),
            "pinned_by": m.pinned_by, "functions": m.functions,
        })).collect::<Vec<_>>(),
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
        EventBody::BuildOutput { .. } => json!({}),
    };
    let mut metadata = json!({"kind": event.kind.as_str(), "target": event.target, "request_id": event.request_id});
    match &event.body {
        EventBody::Stop { status, .. } => metadata["status"] = json!(status.as_str()),
        EventBody::Exception { error, .. } => metadata["error"] = json!(error),
        EventBody::BuildOutput { stream, line } => {
            metadata["stream"] = json!(stream.as_str());
            metadata["line"] = json!(line);
        }
        EventBody::Start { .. } => {}
    }
    json!({"event": event.name(), "seq": event.seq, "measurements": measurements, "metadata": metadata})
}

/// `system.reload` params (§4) into a request; `Err` is the invalid-params message.
pub fn reload_request(params: &Value) -> Result<ReloadRequest, String> {
    let empty = Map::new();
    let params = match params {
        Value::Object(map) => map,
        Value::Null => &empty,
        _ => return Err("params must be an object".into()),
    };
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
    let options =
        ReloadOptions { force: flag("force")?, atomic: flag("atomic")?, compile: flag("compile")?, lock_timeout };
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
    Ok(ReloadRequest { scope, options, request_id: None })
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
        let request = reload_request(&json!({"scope": "module", "moduleName": "clock", "force": true})).unwrap();
        assert_eq!(request.scope, Scope::Module("clock".into()));
        assert!(request.options.force && !request.options.atomic);
        assert!(matches!(reload_request(&json!({"scope": 7})).unwrap().scope, Scope::All(_)));
        assert!(matches!(reload_request(&Value::Null).unwrap().scope, Scope::All(_)));
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
}
