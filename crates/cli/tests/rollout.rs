//! History, rollback, trials, canaries and dry runs (CONTRACT.md §11) through a
//! real `zest serve`: the JSON-RPC methods, the CLI, the metrics, bad input, and
//! a node killed at random moments while it writes its history.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{eventually, Served};

fn clock_vsn(node: &Served) -> String {
    support::module_vsn(&node.status(), "clock")
}

/// Rewrites the demo clock's five-character vsn.
fn set_clock(node: &Served, vsn: &str) {
    support::set_clock(&node.path(".zest/demo"), vsn);
}

/// A clock whose `now` traps.
fn break_clock(node: &Served) {
    let path = node.path(".zest/demo/clock.wat");
    let wat = std::fs::read_to_string(&path).unwrap();
    let broken = wat.replace("(local.set $n (call $now_ms))", "unreachable");
    assert_ne!(broken, wat, "the demo clock moved; update the test");
    std::fs::write(&path, broken).unwrap();
}

fn code(response: &Value) -> &str {
    response["error"]["data"]["code"].as_str().unwrap_or_else(|| panic!("not an error: {response}"))
}

#[test]
fn a_misspelt_option_is_refused_and_a_dry_run_changes_nothing() {
    let node = Served::start(&[], |_| {});
    set_clock(&node, "1.0.1");
    let misspelt = node.rpc("system.reload", json!({"scope": "module", "module": "clock", "dry_rn": true}));
    assert_eq!(code(&misspelt), "INVALID_PARAMS");
    assert!(misspelt["error"]["message"].as_str().unwrap().contains("`dry_rn`"), "{misspelt}");
    assert_eq!(clock_vsn(&node), "1.0.0", "nothing reloaded");

    let dry = node.reload(json!({"scope": "module", "module": "clock", "dry_run": true}));
    assert_eq!((dry["status"].as_str(), &dry["metadata"]["dry_run"]), (Some("ok"), &json!(true)), "{dry}");
    let plan = &dry["metadata"]["plan"][0];
    assert_eq!(
        (plan["module"].as_str(), plan["from"]["vsn"].as_str(), plan["to"]["vsn"].as_str()),
        (Some("clock"), Some("1.0.0"), Some("1.0.1"))
    );
    assert_eq!(clock_vsn(&node), "1.0.0", "nothing committed");
    let (exit, out, _) = node.cli(&["reload", "module", "clock", "--dry-run"]);
    assert_eq!(exit, 0);
    assert!(out.contains("would reload clock: 1.0.0 -> 1.0.1"), "{out}");
    assert!(node.rpc("system.history", json!({}))["result"]["entries"].as_array().unwrap().is_empty());

    for (params, needle) in [
        (json!({"scope": "module", "module": "clock", "canary": {"percent": 100}}), "canary.percent"),
        (json!({"scope": "module", "module": "clock", "canary": {"percent": 0}}), "canary.percent"),
        (
            json!({"scope": "extension", "path": "x.wat", "canary": {"percent": 5}}),
            "canary applies to scope module or app",
        ),
        (json!({"scope": "module", "module": "clock", "trial": {"window_ms": 0}}), "trial.window_ms"),
        (json!({"scope": "all", "trial": {"window_ms": 100}}), "trial applies"),
        (json!({"scope": "module", "module": "clock", "trial": {"window_ms": 9, "rate": 1}}), "`rate`"),
    ] {
        let refused = node.rpc("system.reload", params.clone());
        assert_eq!(code(&refused), "INVALID_PARAMS", "{params}");
        assert!(refused["error"]["message"].as_str().unwrap().contains(needle), "{params}: {refused}");
    }
    assert_eq!(clock_vsn(&node), "1.0.0");
    let no_target = node.rpc("system.rollback", json!({}));
    assert_eq!(code(&no_target), "INVALID_PARAMS");
    let (exit, _, err) = node.cli(&["reload", "module", "clock", "--canary", "101"]);
    assert_eq!(exit, 2, "{err}");
}

#[test]
fn history_rollback_and_promote_from_the_cli_and_the_wire() {
    let node = Served::start(&[], |_| {});
    set_clock(&node, "1.0.1");
    let (exit, _, err) = node.cli(&["reload", "module", "clock"]);
    assert_eq!(exit, 0, "{err}");
    set_clock(&node, "1.0.2");
    assert_eq!(node.cli(&["reload", "module", "clock"]).0, 0);
    let entries = node.rpc("system.history", json!({"module": "clock", "limit": 1}))["result"]["entries"].clone();
    assert_eq!(entries.as_array().unwrap().len(), 1);
    assert_eq!((entries[0]["id"].as_u64(), entries[0]["action"].as_str()), (Some(2), Some("reload")));
    assert_eq!(entries[0]["from"]["vsn"], "1.0.1");
    assert_eq!(entries[0]["to"]["vsn"], "1.0.2");
    assert!(entries[0]["request_id"].is_string() && entries[0]["at"].is_string());
    let (_, table, _) = node.cli(&["history", "clock"]);
    assert!(table.starts_with("ID") && table.contains("1.0.1") && table.contains("reload"), "{table}");

    let back = node.reload_like("system.rollback", json!({"module": "clock"}));
    assert_eq!((back["status"].as_str(), &back["metadata"]["rollback"]), (Some("ok"), &json!(true)), "{back}");
    assert_eq!(clock_vsn(&node), "1.0.1");
    let (exit, out, _) = node.cli(&["rollback", "module", "clock", "--to", "1"]);
    assert_eq!(exit, 0, "{out}");
    assert!(out.contains("unchanged: clock"), "entry 1's build already serves: {out}");
    assert_eq!(clock_vsn(&node), "1.0.1");
    let (exit, _, _) = node.cli(&["rollback", "module", "front"]);
    assert_eq!(exit, 4, "nothing to roll back to is an error result");

    // A canary from the CLI, promoted.
    set_clock(&node, "1.0.3");
    let (exit, out, err) = node.cli(&["reload", "module", "clock", "--canary", "50"]);
    assert_eq!(exit, 0, "{out}{err}");
    let status = node.status();
    let clock = status["modules"].as_array().unwrap().iter().find(|m| m["name"] == "clock").unwrap().clone();
    assert_eq!((clock["canary"]["vsn"].as_str(), clock["canary"]["share"].as_u64()), (Some("1.0.3"), Some(50)));
    assert_eq!(clock["current"]["share"], 50);
    let (exit, out, _) = node.cli(&["promote", "module", "clock"]);
    assert_eq!(exit, 0, "{out}");
    assert_eq!(clock_vsn(&node), "1.0.3");
    let (exit, _, _) = node.cli(&["promote", "module", "clock"]);
    assert_eq!(exit, 4, "no canary to promote");
    let actions: Vec<String> = node.rpc("system.history", json!({}))["result"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["promote", "canary", "rollback", "reload", "reload"]);
}

#[test]
fn a_trial_reverts_a_failing_build_and_the_metrics_count_calls_by_version() {
    let node = Served::start(&[], |_| {});
    break_clock(&node);
    let (exit, out, err) =
        node.cli(&["reload", "module", "clock", "--trial-ms", "30000", "--min-calls", "5", "--force"]);
    assert_eq!(exit, 0, "{out}{err}");
    assert!(node.status()["modules"][0]["trial"]["until"].is_string(), "status shows the trial");
    let broken = support::module_vsn(&node.status(), "clock");
    let started = Instant::now();
    let mut failed = 0;
    for _ in 0..20 {
        let call = node.rpc("module.call", json!({"module": "front", "function": "time"}));
        if call.get("error").is_some() {
            failed += 1;
        }
    }
    assert!(failed >= 5, "the broken build fails its calls ({failed})");
    let reverted = eventually(Duration::from_secs(5), || {
        let call = node.rpc("module.call", json!({"module": "front", "function": "time"}));
        call["result"]["now_ms"].is_i64().then_some(())
    });
    assert!(reverted.is_some(), "reverted within {:?}", started.elapsed());
    let history = node.rpc("system.history", json!({"module": "clock"}))["result"]["entries"].clone();
    assert_eq!(history[0]["action"], "revert");
    let (_, metrics) = node.get("/metrics", Some(&node.token.clone()));
    // The broken build's failures counted while it was current.
    let value = |line: &str| -> u64 {
        let found = metrics.lines().find(|l| l.starts_with(line)).unwrap_or_else(|| panic!("{line}: {metrics}"));
        found.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("zest_calls_total{module=\"clock\",version=\"current\",outcome=\"failed\"}") >= 5, "{metrics}");
    assert!(value("zest_calls_total{module=\"front\",version=\"current\",outcome=\"ok\"}") >= 1, "{metrics}");
    let info = format!("zest_module_version_info{{module=\"clock\",version=\"current\",vsn=\"{broken}\"}} 1");
    assert!(metrics.contains(&info), "the build reverted to has the broken one's vsn: {metrics}");
    assert!(metrics.contains("zest_reload_reverts_total{kind=\"module\"} 1"), "{metrics}");
}

#[test]
fn a_node_killed_at_random_moments_while_it_writes_history_always_starts_again_with_a_readable_history() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["serve", "--listen", "127.0.0.1:0"];
    let mut last_id = 0;
    for round in 0..8u64 {
        let node = Served::spawn(dir.path().to_path_buf(), None, &args, ".zest/admin.token");
        let history = node.rpc("system.history", json!({"limit": 10000}));
        let entries =
            history["result"]["entries"].as_array().unwrap_or_else(|| panic!("round {round}: {history}")).clone();
        let ids: Vec<u64> = entries.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "round {round}: ids strictly decrease: {ids:?}");
        assert!(ids.first().copied().unwrap_or(0) >= last_id, "round {round}: no entry lost that was answered");
        let call = node.rpc("module.call", json!({"module": "front", "function": "time"}));
        assert!(call["result"]["now_ms"].is_i64(), "round {round}: calls work: {call}");
        // Reload as fast as possible, and die at a random moment of it.
        let url = node.url.clone();
        let token = node.token.clone();
        let reloader = std::thread::spawn(move || {
            let agent: ureq::Agent =
                ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
            let mut answered = 0u64;
            for i in 0.. {
                let body = json!({"jsonrpc": "2.0", "id": i, "method": "system.reload",
                                  "params": {"scope": "module", "module": "clock", "force": true}});
                let sent = agent.post(&url).header("authorization", &format!("Bearer {token}")).send(body.to_string());
                let text = sent.ok().and_then(|mut response| response.body_mut().read_to_string().ok());
                match text {
                    Some(text) if text.contains("\"ok\"") => answered += 1,
                    _ => break,
                }
            }
            answered
        });
        std::thread::sleep(Duration::from_millis(50 + (round * 37) % 150));
        node.kill();
        let answered = reloader.join().unwrap();
        last_id = last_id.max(ids.first().copied().unwrap_or(0)) + answered;
    }
}
