//! Round trips through the control plane (issue 6; results in
//! `docs/benchmarks.md`): `module.call` of the demo's `clock.now` and
//! `system.reload` of an unchanged module, over HTTP with keep-alive and over
//! WebSocket, p50 and p99, against a `zest serve` started as a child process;
//! and `module.call` of a component's `add` (CONTRACT.md §13: its JSON args
//! checked against its WIT types) beside the core module's call.
//! Target: `module.call` over WebSocket at most 100 µs p50.
//!
//! Run: `cargo bench -p zest --bench control` (`-- --quick` for fewer rounds).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let rounds = if quick { 2_000 } else { 20_000 };
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zest"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap().to_string();
    let token = std::fs::read_to_string(dir.path().join(".zest/admin.token")).unwrap().trim().to_string();
    let auth = format!("Bearer {token}");
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "module.call",
                      "params": {"module": "clock", "function": "now"}})
    .to_string();
    let reload = json!({"jsonrpc": "2.0", "id": 1, "method": "system.reload",
                        "params": {"scope": "module", "module": "clock"}})
    .to_string();

    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let http = |body: &str| -> Value {
        let mut response =
            agent.post(&url).header("authorization", &auth).content_type("application/json").send(body).unwrap();
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
    };
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(url.replace("http://", "ws://")).unwrap();
    request.headers_mut().insert("authorization", auth.parse().unwrap());
    let (mut ws, _) = tungstenite::connect(request).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = ws.get_ref() {
        stream.set_nodelay(true).unwrap();
    }
    let mut ws_call = |body: &str| -> Value {
        ws.send(tungstenite::Message::text(body)).unwrap();
        serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap()
    };

    println!("## Control plane round trips\n");
    println!("| request | transport | p50 | p99 | target |\n|---|---|---|---|---|");
    type Send<'a> = &'a mut dyn FnMut(&str) -> Value;
    let measure = |name: &str, transport: &str, send: Send<'_>, body: &str, n: usize, target: &str| {
        for _ in 0..n / 10 {
            send(body);
        }
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let answer = send(body);
            samples.push(started.elapsed().as_secs_f64() * 1e6);
            assert!(answer.get("result").is_some(), "{answer}");
        }
        let (p50, p99) = (percentile(&mut samples, 0.5), percentile(&mut samples, 0.99));
        println!("| {name} | {transport} | {p50:.1} µs | {p99:.1} µs | {target} |");
    };
    // A component, loaded as an extension: `keeper.add(a: u32, b: u32) -> u32`.
    let keeper = dir.path().join("extensions/keeper.wat");
    std::fs::write(&keeper, include_str!("../../runtime/tests/node/components/keeper.wat")).unwrap();
    let load = json!({"jsonrpc": "2.0", "id": 1, "method": "system.reload",
                      "params": {"scope": "extension", "path": keeper}});
    assert_eq!(http(&load.to_string())["result"]["status"], "ok");
    let add = json!({"jsonrpc": "2.0", "id": 1, "method": "module.call",
                     "params": {"module": "keeper", "function": "add", "args": [2, 3]}})
    .to_string();
    let mut http_send = |body: &str| http(body);
    measure("`module.call` clock.now", "HTTP keep-alive", &mut http_send, &call, rounds, "reported");
    measure("`module.call` clock.now", "WebSocket", &mut ws_call, &call, rounds, "≤ 100 µs p50");
    measure("`module.call` keeper.add (a component)", "HTTP keep-alive", &mut http_send, &add, rounds, "reported");
    measure("`module.call` keeper.add (a component)", "WebSocket", &mut ws_call, &add, rounds, "reported");
    measure("`system.reload` unchanged module", "HTTP keep-alive", &mut http_send, &reload, rounds / 10, "reported");
    measure("`system.reload` unchanged module", "WebSocket", &mut ws_call, &reload, rounds / 10, "reported");
    let _ = child.kill();
    let _ = child.wait();
}
