//! The client commands of CONTRACT.md §8: `reload`, `status`, `call`, `send`,
//! speaking JSON-RPC to a node. Exit codes: 0 ok, 1 cannot reach the node or
//! auth refused, 2 usage, 3 partial, 4 error.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use jsonrpsee::core::client::{ClientT, Error as ClientError, SubscriptionClientT};
use jsonrpsee::core::params::ObjectParams;
use jsonrpsee::http_client::HttpClientBuilder;
use jsonrpsee::ws_client::WsClientBuilder;
use serde_json::Value;
use zest_control::wire::Code;

use crate::CliError;

/// Long enough for a reload with a build (`limits.build_timeout_ms` is 10 min).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub token: Option<String>,
}

impl Target {
    /// `--token`, else `ZEST_TOKEN`, else `./.zest/admin.token`.
    pub fn new(url: String, token: Option<String>) -> Target {
        let token = token
            .or_else(|| std::env::var("ZEST_TOKEN").ok().filter(|t| !t.trim().is_empty()))
            .or_else(|| std::fs::read_to_string(Path::new(".zest/admin.token")).ok())
            .map(|t| t.trim().to_string());
        Target { url, token }
    }

    fn headers(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(token) = &self.token {
            if let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(http::header::AUTHORIZATION, value);
            }
        }
        headers
    }

    fn ws_url(&self) -> String {
        if let Some(rest) = self.url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.url.clone()
        }
    }
}

/// Maps a client error to the message and exit code the user sees.
fn failure(target: &Target, err: ClientError) -> CliError {
    match err {
        ClientError::Call(call) => {
            let code = Code::of_numeric(call.code().into());
            let message = format!("{} ({})", call.message(), code.as_str());
            match code {
                Code::Unauthorized | Code::Forbidden => CliError::Unreachable(message),
                Code::InvalidParams => CliError::Usage(message),
                _ => CliError::Failed(message),
            }
        }
        ClientError::Transport(err) => {
            let text = err.to_string();
            if text.contains("401") {
                CliError::Unreachable(format!(
                    "{} refused the token (UNAUTHORIZED); pass --token, set ZEST_TOKEN, or run where .zest/admin.token is",
                    target.url
                ))
            } else {
                CliError::Unreachable(format!("cannot reach the node at {}: {text}", target.url))
            }
        }
        ClientError::RequestTimeout => CliError::Unreachable(format!("{} did not answer in time", target.url)),
        other => CliError::Unreachable(format!("{}: {other}", target.url)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| CliError::Failed(format!("cannot start the async runtime: {err}")))
}

/// One request over HTTP.
pub fn request(target: &Target, method: &str, params: ObjectParams) -> Result<Value, CliError> {
    runtime()?.block_on(async {
        let client = HttpClientBuilder::default()
            .set_headers(target.headers())
            .request_timeout(REQUEST_TIMEOUT)
            .max_response_size(u32::MAX)
            .build(&target.url)
            .map_err(|err| CliError::Usage(format!("bad --url {}: {err}", target.url)))?;
        client.request::<Value, _>(method, params).await.map_err(|err| failure(target, err))
    })
}

/// `system.reload` over WebSocket, printing each line of the build's output (the
/// `zest.build.output` events of this node) to stderr as it arrives.
pub fn reload_streaming(target: &Target, params: ObjectParams) -> Result<Value, CliError> {
    runtime()?.block_on(async {
        let builder = WsClientBuilder::default().request_timeout(REQUEST_TIMEOUT).max_response_size(u32::MAX);
        let (client, mut events) = subscribe(target, builder).await?;
        let printer = tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                if event["event"] == "zest.build.output" {
                    eprintln!("  | {}", event["metadata"]["line"].as_str().unwrap_or(""));
                }
            }
        });
        let result = client.request::<Value, _>("system.reload", params).await.map_err(|err| failure(target, err));
        // Let the last lines arrive before the summary.
        tokio::time::sleep(Duration::from_millis(50)).await;
        printer.abort();
        result
    })
}

/// A WebSocket client of `target` (built by `builder`) subscribed to its
/// events; the subscription lives as long as the client.
async fn subscribe(
    target: &Target,
    builder: WsClientBuilder,
) -> Result<(jsonrpsee::ws_client::WsClient, jsonrpsee::core::client::Subscription<Value>), CliError> {
    let client =
        builder.set_headers(target.headers()).build(target.ws_url()).await.map_err(|err| failure(target, err))?;
    let events = client
        .subscribe::<Value, _>("system.subscribe_events", jsonrpsee::rpc_params![], zest_control::server::UNSUBSCRIBE)
        .await
        .map_err(|err| failure(target, err))?;
    Ok((client, events))
}

/// `zest events`: subscribes over WebSocket and prints each event as it
/// comes, until the node goes away (an error) or the user stops it.
pub fn events(target: &Target, json: bool) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let (_client, mut events) = subscribe(target, WsClientBuilder::default()).await?;
        let paint = Paint::stdout();
        let mut out = std::io::stdout();
        let _ = writeln!(out, "subscribed to {} (Ctrl-C to stop)", target.ws_url());
        let _ = out.flush();
        while let Some(event) = events.next().await {
            let event = event.map_err(|err| CliError::Failed(format!("the event stream broke: {err}")))?;
            let line = if json { event.to_string() } else { event_line(&event, &paint) };
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                // stdout closed (piped into `head`, say): done.
                return Ok(());
            }
        }
        Err(CliError::Unreachable(format!("{} closed the event stream", target.url)))
    })
}

/// One event as a line: sequence, name, what it is about, what happened,
/// and the request it belongs to.
pub fn event_line(event: &Value, paint: &Paint) -> String {
    let meta = &event["metadata"];
    let text = |value: &Value| value.as_str().unwrap_or("").to_string();
    let name = text(&event["event"]);
    let detail = match name.as_str() {
        "zest.reload.stop" => {
            format!("{} {} ms", paint.status(&text(&meta["status"])), event["measurements"]["duration_ms"])
        }
        "zest.reload.exception" => format!("{} {}", paint.status("error"), text(&meta["error"])),
        "zest.build.output" => format!("{}| {}", text(&meta["stream"]), text(&meta["line"])),
        "zest.reload.reverted" => format!(
            "reverted ({} of {} calls failed): {}",
            event["measurements"]["failures"],
            event["measurements"]["calls"],
            paint.status(&text(&meta["status"]))
        ),
        "zest.reload.permanent" => format!(
            "permanent ({} of {} calls failed)",
            event["measurements"]["failures"], event["measurements"]["calls"]
        ),
        "zest.cluster.abort" => format!("{}: {}", text(&meta["reason"]), text(&meta["message"])),
        "zest.cluster.commit" => format!("revision {}", event["measurements"]["revision"]),
        _ => String::new(),
    };
    let mut about = format!("{} {}", text(&meta["kind"]), text(&meta["target"]));
    if let Some(nodes) = meta["nodes"].as_array() {
        let ids: Vec<String> = nodes.iter().map(text).collect();
        about.push_str(&format!(" on {}", ids.join(",")));
    }
    let request = paint.dim(&format!("[{}]", text(&meta["request_id"])));
    let parts = [format!("{:>5} {name:<22}", event["seq"].to_string()), about, detail, request];
    parts.into_iter().filter(|part| !part.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Colours for a terminal, nothing otherwise (or with `NO_COLOR`).
pub struct Paint {
    on: bool,
}

impl Paint {
    pub fn stdout() -> Paint {
        Paint { on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
    }

    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn status(&self, status: &str) -> String {
        match status {
            "ok" | "running" => self.wrap("32", status),
            "partial" | "suspended" => self.wrap("33", status),
            _ => self.wrap("31", status),
        }
    }

    pub fn dim(&self, text: &str) -> String {
        self.wrap("2", text)
    }
}

/// The readable summary of a reload result.
pub fn summary(result: &Value, paint: &Paint) -> String {
    let mut out = String::new();
    summarise(result, paint, 0, &mut out);
    out
}

fn list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn summarise(result: &Value, paint: &Paint, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    let text = |key: &str| result[key].as_str().unwrap_or("").to_string();
    out.push_str(&format!(
        "{pad}{} {} {} {}\n",
        paint.status(&text("status")),
        text("kind"),
        text("target"),
        paint.dim(&format!("({} ms)", result["duration_ms"]))
    ));
    let reloaded = list(&result["reloaded"]);
    if !reloaded.is_empty() && depth == 0 {
        // With the versions each swap went between, when the result says.
        let swaps = result["metadata"]["swaps"].as_array().cloned().unwrap_or_default();
        let named: Vec<String> = reloaded
            .iter()
            .map(|module| match swaps.iter().find(|swap| swap["module"] == module.as_str()) {
                Some(swap) => format!(
                    "{module} ({} -> {})",
                    swap["old_vsn"].as_str().unwrap_or("new"),
                    swap["new_vsn"].as_str().unwrap_or("?")
                ),
                None => module.clone(),
            })
            .collect();
        let verb = if result["metadata"]["rollback"] == true { "rolled back" } else { "reloaded" };
        out.push_str(&format!("{pad}  {verb}: {}\n", named.join(", ")));
    }
    let unchanged = list(&result["metadata"]["unchanged"]);
    if !unchanged.is_empty() && depth == 0 {
        out.push_str(&format!("{pad}  unchanged: {}\n", unchanged.join(", ")));
    }
    let unloaded = list(&result["metadata"]["unloaded"]);
    if !unloaded.is_empty() && depth == 0 {
        out.push_str(&format!("{pad}  unloaded: {}\n", unloaded.join(", ")));
    }
    if result["metadata"]["dry_run"] == true && depth == 0 {
        out.push_str(&format!("{pad}  dry run: nothing was committed\n"));
        for entry in result["metadata"]["plan"].as_array().into_iter().flatten() {
            let from = entry["from"]["vsn"].as_str().unwrap_or("(new)");
            out.push_str(&format!(
                "{pad}  would reload {}: {} -> {}\n",
                entry["module"].as_str().unwrap_or(""),
                from,
                entry["to"]["vsn"].as_str().unwrap_or("")
            ));
            for (key, sign) in [("exports_added", "+"), ("exports_removed", "-")] {
                for name in list(&entry[key]) {
                    out.push_str(&format!("{pad}      {sign} {name}\n"));
                }
            }
            for change in entry["functions_changed"].as_array().into_iter().flatten() {
                let field = |key: &str| change[key].as_str().unwrap_or("").to_string();
                out.push_str(&format!("{pad}      ~ {}: {} -> {}\n", field("name"), field("from"), field("to")));
            }
            for process in entry["processes"].as_array().into_iter().flatten() {
                let how = if process["code_change"] == true { "migrates" } else { "cannot migrate" };
                out.push_str(&format!("{pad}      process {}: {how}\n", process["name"].as_str().unwrap_or("")));
            }
        }
    }
    if let Some(compile) = result["metadata"].get("compile").filter(|c| c["ran"] == true) {
        out.push_str(&format!(
            "{pad}  build: {} (exit {}, {} ms)\n",
            compile["command"].as_str().unwrap_or(""),
            compile["exit_code"],
            compile["duration_ms"]
        ));
    }
    if depth == 0 {
        for skip in result["skipped"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{pad}  skipped {}: {}\n",
                skip["target"].as_str().unwrap_or(""),
                skip["reason"].as_str().unwrap_or("")
            ));
        }
        for error in result["errors"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{pad}  {} {}: {}\n",
                paint.status("error"),
                error["target"].as_str().unwrap_or(""),
                error["reason"].as_str().unwrap_or("")
            ));
            for line in error["message"].as_str().unwrap_or("").lines() {
                out.push_str(&format!("{pad}      {line}\n"));
            }
        }
    }
    for child in result["results"].as_array().into_iter().flatten() {
        summarise(child, paint, depth + 1, out);
    }
}

/// History entries as a table, newest first.
pub fn history_table(history: &Value) -> String {
    let build = |b: &Value| match b["vsn"].as_str() {
        Some(vsn) => {
            let sha = b["sha256"].as_str().unwrap_or("");
            format!("{vsn} ({})", sha.get(..12).unwrap_or(sha))
        }
        None => "-".to_string(),
    };
    let rows: Vec<Vec<String>> = history["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                e["id"].to_string(),
                e["at"].as_str().unwrap_or("").into(),
                e["module"].as_str().unwrap_or("").into(),
                e["action"].as_str().unwrap_or("").into(),
                build(&e["from"]),
                build(&e["to"]),
                e["request_id"].as_str().unwrap_or("").into(),
            ]
        })
        .collect();
    table(&["ID", "AT", "MODULE", "ACTION", "FROM", "TO", "REQUEST"], &rows)
}

/// The status as tables.
/// `zest describe`: the module, then one line per callable with its type.
pub fn description(description: &Value) -> String {
    let text = |value: &Value| value.as_str().unwrap_or("").to_string();
    let mut out =
        format!("{} ({} {})\n", text(&description["module"]), text(&description["kind"]), text(&description["vsn"]));
    for function in description["functions"].as_array().into_iter().flatten() {
        let params: Vec<String> = function["params"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|param| format!("{}: {}", text(&param["name"]), text(&param["type"])))
            .collect();
        let result = function["result"].as_str().map(|result| format!(" -> {result}")).unwrap_or_default();
        out.push_str(&format!("  {}({}){result}\n", text(&function["name"]), params.join(", ")));
    }
    out
}

pub fn status_tables(status: &Value, paint: &Paint) -> String {
    let node = &status["node"];
    let mut out = format!(
        "{}\n\n",
        paint.dim(&format!(
            "zest {} at {}, up {}",
            node["version"].as_str().unwrap_or("?"),
            node["listen"].as_str().unwrap_or("?"),
            uptime(node["uptime_ms"].as_u64().unwrap_or(0))
        ))
    );
    let rows = |key: &str| status[key].as_array().cloned().unwrap_or_default();
    let modules: Vec<Vec<String>> = rows("modules")
        .iter()
        .map(|m| {
            vec![
                m["name"].as_str().unwrap_or("").into(),
                m["current"]["vsn"].as_str().unwrap_or("").into(),
                m["app"].as_str().unwrap_or("-").into(),
                m["current"]["loaded_at"].as_str().unwrap_or("").into(),
                m["old"].as_array().map_or(0, Vec::len).to_string(),
                list(&m["pinned_by"]).join(","),
                match m.get("canary") {
                    Some(canary) => format!("{} at {}%", canary["vsn"].as_str().unwrap_or(""), canary["share"]),
                    None => String::new(),
                },
                m["trial"]["until"].as_str().map(|until| format!("until {until}")).unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(&["MODULE", "VSN", "APP", "LOADED AT", "OLD", "PINNED BY", "CANARY", "TRIAL"], &modules));
    let processes: Vec<Vec<String>> = rows("processes")
        .iter()
        .map(|p| {
            vec![
                p["name"].as_str().unwrap_or("").into(),
                p["module"].as_str().unwrap_or("").into(),
                p["vsn"].as_str().unwrap_or("-").into(),
                paint.status(p["state"].as_str().unwrap_or("")),
                p["queued"].to_string(),
                p["handled"].to_string(),
                p["restarts"].to_string(),
            ]
        })
        .collect();
    if !processes.is_empty() {
        out.push('\n');
        out.push_str(&table(&["PROCESS", "MODULE", "VSN", "STATE", "QUEUED", "HANDLED", "RESTARTS"], &processes));
    }
    let extensions: Vec<Vec<String>> = rows("extensions")
        .iter()
        .map(|e| {
            vec![
                e["name"].as_str().unwrap_or("").into(),
                e["format"].as_str().unwrap_or("").into(),
                if e["loaded"] == true { "yes".into() } else { paint.status("no") },
                e["path"].as_str().unwrap_or("").into(),
            ]
        })
        .collect();
    if !extensions.is_empty() {
        out.push('\n');
        out.push_str(&table(&["EXTENSION", "FORMAT", "LOADED", "PATH"], &extensions));
    }
    if let Some(cluster) = status.get("cluster").filter(|c| c.is_object()) {
        out.push('\n');
        out.push_str(&cluster_table(cluster, paint));
    }
    out
}

/// The cluster block: this member's view of its cluster, and the members.
fn cluster_table(cluster: &Value, paint: &Paint) -> String {
    let me = cluster["node"].as_str().unwrap_or("");
    let mut heading = format!(
        "cluster {} — this is {}, applied revision {}",
        cluster["name"].as_str().unwrap_or("?"),
        me,
        cluster["revision"]
    );
    if cluster["available"] == false {
        let problem = cluster["problem"].as_str().unwrap_or("etcd is unreachable");
        heading.push_str(&format!(", {}", paint.wrap("31", &format!("etcd unavailable: {problem}"))));
    }
    if cluster["diverged"] == true {
        heading.push_str(&format!(", {}", paint.wrap("33", "diverged (a local reload)")));
    }
    let rows: Vec<Vec<String>> = cluster["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let node = m["node"].as_str().unwrap_or("").to_string();
            vec![
                if node == me { format!("{node} *") } else { node },
                m["advertise"].as_str().unwrap_or("").into(),
                m["since"].as_str().unwrap_or("").into(),
            ]
        })
        .collect();
    let mut out = format!("{heading}\n{}", table(&["MEMBER", "ADVERTISE", "SINCE"], &rows));
    // What the cluster unloaded (`system.unload`): not loaded here, even when
    // this member's configuration lists it, until a reload or rollback of it.
    let names = |key: &str| -> Vec<&str> {
        cluster["unloaded"][key].as_array().into_iter().flatten().filter_map(Value::as_str).collect()
    };
    for (what, names) in [("apps", names("apps")), ("extensions", names("extensions"))] {
        if !names.is_empty() {
            out.push_str(&format!("unloaded by the cluster ({what}): {}\n", names.join(", ")));
        }
    }
    out
}

fn uptime(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        _ => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
    }
}

/// Left-aligned columns; widths count visible characters (colour codes excluded).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let visible = |s: &str| {
        let mut n = 0;
        let mut in_escape = false;
        for c in s.chars() {
            match (in_escape, c) {
                (false, '\x1b') => in_escape = true,
                (true, 'm') => in_escape = false,
                (false, _) => n += 1,
                _ => {}
            }
        }
        n
    };
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(visible(cell));
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i + 1 < cells.len() {
                text.push_str(&" ".repeat(widths[i] - visible(cell) + 2));
            }
        }
        text.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}
