//! The control plane and the CLI against a real `zest serve` started as a child
//! process: every method over HTTP and WebSocket, every error code, each auth
//! scope, batches, limits, signals, and the client commands' exit codes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

use support::{Served, ZEST};

fn code(response: &Value) -> (i64, &str) {
    let error = &response["error"];
    (
        error["code"].as_i64().unwrap_or_else(|| panic!("no error in {response}")),
        error["data"]["code"].as_str().unwrap(),
    )
}

/// An app `slow` with a `build` command and module `slow` whose `get` spins.
fn slow_app(dir: &Path, build: &str) {
    let app = dir.join("slow");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("zest.toml"),
        format!("[app]\nname = \"slow\"\nbuild = {build:?}\n[[modules]]\nname = \"slow\"\npath = \"slow.wat\"\n"),
    )
    .unwrap();
    std::fs::write(app.join("slow.wat"), slow_module(1)).unwrap();
}

fn slow_module(v: u32) -> String {
    format!(
        r#"(module (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
  (data (i32.const 16) "{{\"v\":{v}}}")
  (func (export "get") (param i32 i32) (result i64) i64.const {packed})
  (func (export "spin") (param i32 i32) (result i64) (local $i i64)
    (loop $l (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $l (i64.lt_u (local.get $i) (i64.const 4000000000))))
    i64.const {packed})
  (func (export "boom") (param i32 i32) (result i64) unreachable))"#,
        packed = (16u64 << 32) | 7
    )
}

#[test]
fn every_method_works_over_http_with_the_admin_token_the_node_created() {
    let node = Served::start(&[], |_| {});
    assert_eq!(node.token.len(), 64, "a random admin token in .zest/admin.token");
    let status = &node.rpc("system.status", json!(null))["result"];
    let modules: Vec<&str> =
        status["modules"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(modules, ["clock", "counter", "front"]);
    assert_eq!(status["processes"][0]["name"], "counter");
    assert_eq!(status["processes"][0]["state"], "running");
    assert_eq!(status["modules"][0]["current"]["vsn"], "1.0.0");
    assert!(status["modules"][0]["current"]["loaded_at"].as_str().unwrap().starts_with("20"));

    let now = &node.rpc("module.call", json!({"module": "front", "function": "time"}))["result"];
    assert!(now["now_ms"].as_i64().unwrap() > 1_700_000_000_000, "{now}");
    let count =
        &node.rpc("process.call", json!({"process": "counter", "message": {"add": 5}, "timeout_ms": 1000}))["result"];
    assert_eq!(count, &json!({"count": 5}));
    let forever = json!({"process": "counter", "message": "get", "timeout_ms": u64::MAX});
    assert_eq!(node.rpc("process.call", forever)["result"], json!({"count": 5}), "a huge timeout is no timeout");

    let unchanged = &node.rpc("system.reload", json!({"scope": "module", "moduleName": "clock"}))["result"];
    assert_eq!((unchanged["status"].as_str(), unchanged["kind"].as_str()), (Some("ok"), Some("module")));
    assert_eq!(unchanged["metadata"]["unchanged"], json!(["clock"]));

    // The demo's counter keeps its count across an upgrade of its code.
    let counter = node.path(".zest/demo/counter.wat");
    let wat = std::fs::read_to_string(&counter).unwrap();
    std::fs::write(&counter, wat.replace(r#"(data (i32.const 0) "1")"#, r#"(data (i32.const 0) "2")"#)).unwrap();
    let upgraded = &node.rpc("system.reload", json!({"scope": "app", "app": "demo"}))["result"];
    assert_eq!(upgraded["status"], "ok", "{upgraded}");
    assert_eq!(upgraded["reloaded"], json!(["counter"]));
    assert_eq!(
        node.rpc("process.call", json!({"process": "counter", "message": "get"}))["result"],
        json!({"count": 5})
    );

    // The seed's two example requests, verbatim: they run and say what is wrong.
    let (_, first) = node.post_as(
        Some(&node.token),
        r#"{"jsonrpc":"2.0","id":1,"method":"system.reload","params":{"scope":"module","module":"LemonCore.Clock"}}"#,
    );
    assert_eq!(first["result"]["errors"][0]["reason"], "not_found", "{first}");
    let (_, second) = node.post_as(
        Some(&node.token),
        r#"{"jsonrpc":"2.0","id":2,"method":"system.reload","params":{"scope":"all","apps":["lemon_core"],"extensions":["/tmp/my_extension.ex"],"compile":true}}"#,
    );
    let result = &second["result"];
    assert_eq!((result["kind"].as_str(), result["status"].as_str()), (Some("system"), Some("error")), "{second}");
    let reasons: Vec<&str> =
        result["errors"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["app_not_found", "forbidden_path"]);
    assert_eq!(result["metadata"]["counts"]["extensions"], 1);
    assert_eq!(node.stop(), 0);
}

#[test]
fn every_error_code_and_protocol_error_carries_its_data_code() {
    let node = Served::start(&["--app", "slow"], |dir| slow_app(dir, "sleep 1"));
    let t = node.token.clone();
    let (_, parse) = node.post_as(Some(&t), "{not json");
    assert_eq!(code(&parse), (-32700, "PARSE_ERROR"));
    let (_, invalid) = node.post_as(Some(&t), r#"{"jsonrpc":"1.0","id":1,"method":"system.status"}"#);
    assert_eq!(code(&invalid), (-32600, "INVALID_REQUEST"));
    assert_eq!(code(&node.rpc("system.banana", json!({}))), (-32601, "METHOD_NOT_FOUND"));
    let missing = node.rpc("system.reload", json!({"scope": "module"}));
    assert_eq!(code(&missing), (-32602, "INVALID_PARAMS"));
    assert!(missing["error"]["message"].as_str().unwrap().contains("module is required for scope=module"));
    let banana = node.rpc("system.reload", json!({"scope": "banana"}));
    assert_eq!(banana["error"]["message"], "Invalid scope 'banana'. Expected one of: module, app, extension, all");
    assert_eq!(code(&node.rpc_as(None, "system.status", json!(null))), (-32001, "UNAUTHORIZED"));
    assert_eq!(code(&node.rpc_as(Some("wrong"), "system.status", json!(null))), (-32001, "UNAUTHORIZED"));
    assert_eq!(code(&node.rpc("module.call", json!({"module": "nope", "function": "get"}))), (-32004, "NOT_FOUND"));
    assert_eq!(code(&node.rpc("module.call", json!({"module": "slow", "function": "nope"}))), (-32004, "NOT_FOUND"));
    assert_eq!(code(&node.rpc("process.call", json!({"process": "nope", "message": 1}))), (-32004, "NOT_FOUND"));
    let bad_timeout = node.rpc("process.call", json!({"process": "nope", "message": 1, "timeout_ms": "soon"}));
    assert_eq!(code(&bad_timeout), (-32602, "INVALID_PARAMS"));
    let boom = node.rpc("module.call", json!({"module": "slow", "function": "boom"}));
    assert_eq!(code(&boom), (-32010, "CALL_FAILED"));
    assert!(boom["error"]["message"].as_str().unwrap().contains("trapped"), "{boom}");

    // A reload holding the lock (its build sleeps) makes a second one a CONFLICT.
    let holder = {
        let (url, token) = (node.url.clone(), t.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "system.reload",
                              "params": {"scope": "app", "app": "slow", "compile": true}});
            agent.post(&url).header("authorization", &format!("Bearer {token}")).send(body.to_string()).unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let conflict = node.rpc("system.reload", json!({"scope": "app", "app": "slow"}));
    assert_eq!(code(&conflict), (-32009, "CONFLICT"));
    assert_eq!(conflict["error"]["message"], "A reload is already in progress");
    let waited = node.rpc("system.reload", json!({"scope": "app", "app": "slow", "lock_timeout_ms": 10000}));
    assert_eq!(waited["result"]["status"], "ok", "{waited}");
    holder.join().unwrap();
}

#[test]
fn token_scopes_decide_what_each_caller_may_do_over_http_and_websocket() {
    let node = Served::start(&["--config", "node.toml"], |dir| {
        std::fs::write(dir.join("reader.token"), "reader-secret\n").unwrap();
        std::fs::write(dir.join("caller.token"), "caller-secret\n").unwrap();
        std::fs::write(dir.join("admin.token"), "admin-secret\n").unwrap();
        std::fs::write(
            dir.join("node.toml"),
            "[[control.tokens]]\ntoken_file = \"reader.token\"\nscopes = [\"read\"]\n\
             [[control.tokens]]\ntoken_file = \"caller.token\"\nscopes = [\"call\"]\n\
             [[control.tokens]]\ntoken_file = \"admin.token\"\nscopes = [\"admin\"]\n\
             [control]\nmax_request_bytes = 2048\n",
        )
        .unwrap();
    });
    assert!(!node.path(".zest/admin.token").exists(), "no token is generated when tokens are configured");
    let call = json!({"module": "front", "function": "time"});
    let reload = json!({"scope": "module", "module": "clock"});
    for (token, status_ok, call_ok, reload_ok) in [
        ("reader-secret", true, false, false),
        ("caller-secret", false, true, false),
        ("admin-secret", true, true, true),
    ] {
        let outcome = |response: Value| {
            if response.get("result").is_some() {
                Ok(())
            } else {
                Err(code(&response).1.to_string())
            }
        };
        let forbidden = Err("FORBIDDEN".to_string());
        let expect = |ok: bool| if ok { Ok(()) } else { forbidden.clone() };
        assert_eq!(outcome(node.rpc_as(Some(token), "system.status", json!(null))), expect(status_ok), "{token}");
        assert_eq!(outcome(node.rpc_as(Some(token), "module.call", call.clone())), expect(call_ok), "{token}");
        assert_eq!(outcome(node.rpc_as(Some(token), "system.reload", reload.clone())), expect(reload_ok), "{token}");
    }

    // /health needs nothing; /metrics needs a token that may read.
    assert_eq!(node.get("/health", None), (200, r#"{"status":"ok"}"#.to_string()));
    assert_eq!(node.get("/metrics", None).0, 401);
    let (status, metrics) = node.get("/metrics", Some("reader-secret"));
    assert_eq!(status, 200);
    assert!(metrics.contains(r#"zest_reloads_total{kind="module",status="ok",role="coordinator"} 1"#), "{metrics}");
    // Calls are counted per module and place (front calls clock), in one family.
    assert_eq!(metrics.matches("\n# TYPE zest_calls_total counter\n").count(), 1, "{metrics}");
    for module in ["front", "clock"] {
        let answered = format!("zest_calls_total{{module=\"{module}\",version=\"current\",outcome=\"ok\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&answered));
        let count: u64 = line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0);
        assert!(count >= 1, "{module}'s answered calls are counted:\n{metrics}");
    }

    // A WebSocket handshake without a known token is refused outright.
    let ws_url = node.url.replace("http://", "ws://");
    let refused = tungstenite::connect(&ws_url).unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(&ws_url).unwrap();
    request.headers_mut().insert("authorization", "Bearer wrong".parse().unwrap());
    assert!(tungstenite::connect(request).unwrap_err().to_string().contains("401"));

    // A batch answers each call; an oversized request is refused with its code.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "module.call", "params": call},
        {"jsonrpc": "2.0", "id": 2, "method": "system.nope"},
        {"jsonrpc": "2.0", "id": 3, "method": "system.reload", "params": reload},
    ]);
    let (_, answers) = node.post_as(Some("caller-secret"), &batch.to_string());
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 3);
    let by_id = |id: i64| answers.iter().find(|a| a["id"] == id).unwrap();
    assert!(by_id(1)["result"]["now_ms"].is_i64());
    assert_eq!(code(by_id(2)).1, "METHOD_NOT_FOUND");
    assert_eq!(code(by_id(3)).1, "FORBIDDEN");
    let huge = json!({"jsonrpc": "2.0", "id": 1, "method": "module.call",
                      "params": {"module": "front", "function": "time", "args": "x".repeat(4096)}});
    let (status, refused) = node.post_as(Some("caller-secret"), &huge.to_string());
    assert_eq!(status, 413);
    assert_eq!(code(&refused).1, "REQUEST_TOO_LARGE");
}

#[test]
fn a_websocket_client_calls_and_watches_a_reload_as_events() {
    let node = Served::start(&[], |_| {});
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(node.url.replace("http://", "ws://")).unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", node.token).parse().unwrap());
    let (mut ws, _) = tungstenite::connect(request).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = ws.get_ref() {
        // A missing answer fails the test instead of hanging it.
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let send = |ws: &mut tungstenite::WebSocket<_>, value: Value| {
        ws.send(tungstenite::Message::text(value.to_string())).unwrap()
    };
    // The subscription is in place once it is answered; only then reload.
    send(&mut ws, json!({"jsonrpc": "2.0", "id": 1, "method": "system.subscribe_events"}));
    let subscribed: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert!(subscribed["result"].is_string() || subscribed["result"].is_number(), "{subscribed}");
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 2, "method": "module.call", "params": {"module": "front", "function": "time"}}),
    );
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 3, "method": "system.reload", "params": {"scope": "module", "module": "clock", "force": true}}),
    );
    let mut events = Vec::new();
    let (mut called, mut reloaded) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(called && reloaded && events.len() >= 2) {
        assert!(Instant::now() < deadline, "events so far: {events:?}");
        let message: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
        match (message["id"].as_i64(), message["method"].as_str()) {
            (Some(2), _) => called = message["result"]["now_ms"].is_i64(),
            (Some(3), _) => reloaded = message["result"]["reloaded"] == json!(["clock"]),
            (_, Some("system.event")) => events.push(message["params"]["result"].clone()),
            _ => {}
        }
    }
    // Errors over WebSocket carry their data.code too.
    send(&mut ws, json!({"jsonrpc": "2.0", "id": 4, "method": "system.banana"}));
    loop {
        let message: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
        if message["id"] == 4 {
            assert_eq!(code(&message), (-32601, "METHOD_NOT_FOUND"));
            assert_eq!(message["error"]["message"], "Method not found: system.banana");
            break;
        }
    }
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names[..2], ["zest.reload.start", "zest.reload.stop"]);
    assert_eq!(events[1]["metadata"]["kind"], "module");
    assert_eq!(events[1]["metadata"]["target"], "clock");
    assert_eq!(events[1]["metadata"]["status"], "ok");
    assert!(events[1]["measurements"]["duration_ms"].is_number());
    assert_eq!(events[0]["metadata"]["request_id"], events[1]["metadata"]["request_id"]);
}

#[test]
fn the_cli_finds_the_token_prints_tables_and_summaries_and_exits_by_the_contract() {
    let node = Served::start(&[], |_| {});
    let (code, out, _) = node.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("zest 0.1.0 at {}, up ", node.url.trim_start_matches("http://"))), "{out}");
    assert!(out.contains("\nMODULE") && out.contains("counter") && out.contains("PROCESS"), "{out}");
    let (code, out, _) = node.cli(&["status", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["processes"][0]["name"], "counter");

    let (code, out, _) = node.cli(&["send", "counter", r#"{"add":2}"#]);
    assert_eq!((code, serde_json::from_str::<Value>(&out).unwrap()), (0, json!({"count": 2})));
    let (code, out, _) = node.cli(&["call", "front", "time"]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Value>(&out).unwrap()["now_ms"].is_i64());

    // Edit, reload, see the summary; the process keeps its state.
    let clock = node.path(".zest/demo/clock.wat");
    let wat = std::fs::read_to_string(&clock).unwrap();
    std::fs::write(&clock, wat.replace("1.0.0", "1.0.1")).unwrap();
    let (code, out, _) = node.cli(&["reload", "module", "clock"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok module clock") && out.contains("reloaded: clock"), "{out}");
    let (code, out, _) = node.cli(&["reload", "all", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["kind"], "system");

    let (code, out, _) = node.cli(&["reload", "module", "nope"]);
    assert_eq!(code, 4, "an error result exits 4");
    assert!(out.contains("error") && out.contains("not_found"), "{out}");
    let (code, _, err) = node.cli(&["call", "nope", "get"]);
    assert_eq!(code, 4);
    assert!(err.contains("NOT_FOUND"), "{err}");
    let (code, _, err) = node.cli(&["call", "front", "time", "{not json"]);
    assert_eq!(code, 2);
    assert!(err.contains("args is not JSON"), "{err}");
    let (code, _, _) = node.cli(&["reload", "sideways"]);
    assert_eq!(code, 2, "usage");
    let (code, _, err) = node.cli(&["status", "--token", "wrong"]);
    assert_eq!(code, 1);
    assert!(err.contains("UNAUTHORIZED"), "{err}");

    let output = Command::new(ZEST).args(["status", "--url", "http://127.0.0.1:1"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach the node at http://127.0.0.1:1"));
}

#[test]
fn a_reload_left_partial_exits_3_and_compile_streams_the_build_output() {
    let node = Served::start(&["--config", "node.toml", "--app", "slow"], |dir| {
        slow_app(dir, "echo building the slow app; sleep 0.3; echo built");
        // The spinning call below must outlast a reload and a SIGTERM, and
        // finish: its deadline is far above the spin (seconds, more on a slow
        // machine), so the test does not depend on the machine's speed.
        std::fs::write(dir.join("node.toml"), "[limits]\ndrain_timeout_ms = 100\ncall_timeout_ms = 60000\n").unwrap();
    });
    let (code, out, err) = node.cli(&["reload", "app", "slow", "--compile"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("| building the slow app") && err.contains("| built"), "the build's lines stream: {err}");
    assert!(out.contains("build: echo building"), "{out}");

    // A call still running on the old version after the drain timeout: `in_use`.
    let spinner = {
        let (url, token) = (node.url.clone(), node.token.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "module.call", "params": {"module": "slow", "function": "spin"}});
            agent.post(&url).header("authorization", &format!("Bearer {token}")).send(body.to_string()).unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(node.path("slow/slow.wat"), slow_module(2)).unwrap();
    let (code, out, _) = node.cli(&["reload", "module", "slow"]);
    assert_eq!(code, 3, "partial exits 3: {out}");
    assert!(out.starts_with("partial") && out.contains("skipped slow: in_use"), "{out}");

    // SIGTERM while that call runs (about 2 s of spinning): it finishes and is
    // answered, then the node stops.
    assert!(!spinner.is_finished(), "the call is still running when the node is told to stop");
    let code = node.stop();
    let mut answer = spinner.join().unwrap();
    let answer: Value = serde_json::from_str(&answer.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(answer["result"], json!({"v": 1}), "the call in flight finished on the old version: {answer}");
    assert_eq!(code, 0);
}

#[test]
fn signals_reload_on_hup_and_stop_cleanly_on_term() {
    let node = Served::start(&[], |_| {});
    let ticker = node.path("extensions/ticker.wat");
    std::fs::write(&ticker, slow_module(1)).unwrap();
    let loaded = node.rpc("system.reload", json!({"scope": "extension", "path": ticker}));
    assert_eq!(loaded["result"]["metadata"]["compiled_modules"], json!(["ticker"]), "{loaded}");
    std::fs::write(&ticker, slow_module(2)).unwrap();
    let clock = node.path(".zest/demo/clock.wat");
    let wat = std::fs::read_to_string(&clock).unwrap();
    std::fs::write(&clock, wat.replace(r#"(data (i32.const 512) "1.0.0")"#, r#"(data (i32.const 512) "9.9.9")"#))
        .unwrap();
    node.signal(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = node.rpc("system.status", json!(null));
        let tick = node.rpc("module.call", json!({"module": "ticker", "function": "get"}));
        if status["result"]["modules"][0]["current"]["vsn"] == "9.9.9" && tick["result"] == json!({"v": 2}) {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload the app and the extension: {status} {tick}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(node.stop(), 0, "SIGTERM stops the node cleanly");
}

#[test]
fn a_fresh_directory_serve_with_no_flags_runs_the_demo_on_the_default_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = Served::spawn(dir.path().to_path_buf(), Some(dir), &["serve"], ".zest/admin.token");
    assert_eq!(node.url, "http://127.0.0.1:4780");
    assert!(node.path("extensions").is_dir(), "./extensions is made for the operator");
    assert!(node.path(".zest/demo/zest.toml").is_file());
    let (code, out, _) = node.cli(&["send", "counter", r#"{"add":1}"#]);
    assert_eq!((code, out.trim()), (0, "{\n  \"count\": 1\n}"));
    assert_eq!(node.stop(), 0);
}

#[test]
fn serve_refuses_a_public_address_without_a_configured_token_and_bad_config_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(ZEST).args(["serve", "--listen", "0.0.0.0:0"]).current_dir(dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("refusing to listen on 0.0.0.0:0 without a configured token")
    );
    std::fs::write(dir.path().join("node.toml"), "[limits]\nmemory_mb = 0\n").unwrap();
    let output = Command::new(ZEST).args(["serve", "--config", "node.toml"]).current_dir(dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("node.toml: limits.memory_mb: must be greater than 0"), "{stderr}");
}

#[test]
fn a_component_extension_is_described_called_and_kept_from_breaking_callers() {
    let node = Served::start(&[], |_| {});
    let keeper = include_str!("../../runtime/tests/node/components/keeper.wat");
    let path = node.path("extensions/keeper.wat");
    std::fs::write(&path, keeper).unwrap();
    let path = path.display().to_string();
    let (exit, out, err) = node.cli(&["reload", "extension", &path]);
    assert_eq!(exit, 0, "{out}{err}");

    let (exit, described, err) = node.cli(&["describe", "keeper"]);
    assert_eq!(exit, 0, "{err}");
    assert!(described.starts_with("keeper (component c1)\n"), "{described}");
    assert!(described.contains("\n  add(a: u32, b: u32) -> u32\n"), "{described}");
    assert!(described.contains("\n  mirror(d: direction) -> direction\n"), "{described}");
    let described = &node.rpc("module.describe", json!({"module": "keeper"}))["result"];
    let add = described["functions"].as_array().unwrap().iter().find(|f| f["name"] == "add").unwrap();
    assert_eq!(
        add,
        &json!({"name": "add", "params": [{"name": "a", "type": "u32"}, {"name": "b", "type": "u32"}],
                            "result": "u32"})
    );
    let clock = &node.rpc("module.describe", json!({"module": "clock"}))["result"];
    assert_eq!(
        (clock["kind"].as_str(), clock["functions"][0]["params"][0]["type"].as_str()),
        (Some("module"), Some("json"))
    );
    assert_eq!(code(&node.rpc("module.describe", json!({"module": "nope"}))), (-32004, "NOT_FOUND"));
    let status = node.status();
    let kind = |name: &str| {
        let module = status["modules"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap();
        module["current"]["kind"].as_str().unwrap().to_string()
    };
    assert_eq!((kind("keeper").as_str(), kind("clock").as_str()), ("component", "module"));

    let (exit, out, _) = node.cli(&["call", "keeper", "add", "[2, 3]"]);
    assert_eq!((exit, out.trim()), (0, "5"));
    let wrong = node.rpc("module.call", json!({"module": "keeper", "function": "add", "args": ["2", 3]}));
    assert_eq!(code(&wrong), (-32602, "INVALID_PARAMS"));
    assert!(wrong["error"]["message"].as_str().unwrap().contains("parameter `a`: expected u32"), "{wrong}");

    // A build without `echo` is a breaking change: refused (exit 4) unless allowed.
    let without_echo =
        keeper.replace(r#"(func (export "echo") (param "text" string)"#, r#"(func (param "text" string)"#);
    std::fs::write(node.path("extensions/keeper.wat"), without_echo).unwrap();
    let (exit, out, _) = node.cli(&["reload", "extension", &path]);
    assert_eq!(exit, 4, "{out}");
    assert!(out.contains("breaking_change") && out.contains("`echo` func(text: string) -> string is removed"), "{out}");
    assert_eq!(
        node.rpc("module.call", json!({"module": "keeper", "function": "echo", "args": ["hi"]}))["result"],
        "hi"
    );
    let (exit, out, _) = node.cli(&["reload", "extension", &path, "--allow-breaking"]);
    assert_eq!(exit, 0, "{out}");
    assert_eq!(
        code(&node.rpc("module.call", json!({"module": "keeper", "function": "echo", "args": ["hi"]}))).1,
        "NOT_FOUND"
    );
}

#[test]
fn status_reports_the_source_toolchains_and_a_missing_one_names_what_to_install() {
    let node = Served::start(&["--config", "node.toml"], |dir| {
        std::fs::create_dir(dir.join("extensions")).unwrap();
        std::fs::write(dir.join("extensions/hello.py"), "def hi():\n    return 1\n").unwrap();
        let config = "[extensions]\nroots = [\"extensions\"]\njavascript = \"tools/componentize-qjs\"\n";
        std::fs::write(dir.join("node.toml"), config).unwrap();
    });
    let status = &node.rpc("system.status", json!(null))["result"];
    let javascript = &status["toolchains"]["javascript"];
    assert!(javascript["configured"].as_str().unwrap().ends_with("/tools/componentize-qjs"), "{javascript}");
    assert_eq!(javascript["path"], json!(null));
    let error = javascript["error"].as_str().unwrap();
    assert!(error.contains("npm install -g componentize-qjs") && error.contains("extensions.javascript"), "{error}");
    let python = &status["toolchains"]["python"];
    assert_eq!((python["configured"].as_str(), python["tool"].as_str()), (Some("auto"), Some("componentize-py")));

    // A .js file with the tool missing: compile_failed, saying what to install.
    std::fs::write(node.dir.join("extensions/hello.js"), "export function hi() { return 1; }\n").unwrap();
    let result = &node.rpc("system.reload", json!({"scope": "extension", "path": "extensions/hello.js"}))["result"];
    assert_eq!(result["errors"][0]["reason"], "compile_failed", "{result}");
    let message = result["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("npm install -g componentize-qjs"), "{message}");
}
