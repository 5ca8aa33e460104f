//! `system.unload` and `zest unload` against a real `zest serve` child: the
//! params and every refusal, the result, a SIGKILL right after the answer
//! (the extension must not come back at restart), calls running during the
//! unload, other modules served without a failure while extensions are
//! unloaded and loaded back under load, and the CLI's summaries and exit
//! codes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

use support::Served;

/// An extension module: `get` answers `{"n":N}`; `nap` waits `ms` on the
/// wall clock first.
fn extension_wat(n: u32, ms: u64) -> String {
    let out = format!("{{\"n\":{n}}}");
    format!(
        r#"(module
  (import "zest" "now_ms" (func $now (result i64)))
  (memory (export "memory") 1)
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)
  (data (i32.const 16) "{escaped}")
  (func (export "get") (param i32 i32) (result i64) i64.const {packed})
  (func (export "nap") (param i32 i32) (result i64) (local $until i64)
    (local.set $until (i64.add (call $now) (i64.const {ms})))
    (loop $wait (br_if $wait (i64.lt_s (call $now) (local.get $until))))
    i64.const {packed}))"#,
        escaped = out.replace('"', "\\\""),
        packed = (16u64 << 32) | out.len() as u64,
    )
}

fn with_extensions<'a>(names: &'a [&'a str]) -> impl FnOnce(&std::path::Path) + 'a {
    move |dir| {
        std::fs::create_dir_all(dir.join("extensions")).unwrap();
        for (n, name) in names.iter().enumerate() {
            std::fs::write(dir.join(format!("extensions/{name}.wat")), extension_wat(n as u32, 400)).unwrap();
        }
    }
}

fn load(node: &Served, path: &str) {
    let result = node.reload(json!({"scope": "extension", "path": path}));
    assert_eq!(result["status"], "ok", "{result}");
}

fn code(response: &Value) -> (i64, &str) {
    let error = &response["error"];
    (
        error["code"].as_i64().unwrap_or_else(|| panic!("no error in {response}")),
        error["data"]["code"].as_str().unwrap(),
    )
}

fn modules(status: &Value) -> Vec<String> {
    status["modules"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
}

fn only_reason(result: &Value) -> &str {
    assert_eq!(result["status"], "error", "{result}");
    assert_eq!(result["errors"].as_array().unwrap().len(), 1, "{result}");
    result["errors"][0]["reason"].as_str().unwrap()
}

#[test]
fn an_unloaded_extension_stays_gone_after_a_sigkill_right_after_the_answer() {
    let node = Served::start(&[], with_extensions(&["ext", "keep"]));
    load(&node, "extensions/ext.wat");
    load(&node, "extensions/keep.wat");
    let called = node.rpc("module.call", json!({"module": "ext", "function": "get"}));
    assert_eq!(called["result"], json!({"n": 0}), "{called}");

    let result = node.reload_like("system.unload", json!({"extension": "extensions/ext.wat"}));
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!((result["kind"].as_str(), result["target"].as_str()), (Some("extension"), Some("extensions/ext.wat")));
    assert_eq!(result["metadata"]["unloaded"], json!(["ext"]));
    // SIGKILL the moment the answer is in.
    let (dir, temp) = node.kill_keeping_dir();

    let node = Served::spawn(dir, temp, &["serve", "--listen", "127.0.0.1:0"], ".zest/admin.token");
    let status = node.status();
    assert!(!modules(&status).contains(&"ext".to_string()), "it came back: {status}");
    assert!(modules(&status).contains(&"keep".to_string()), "{status}");
    let names: Vec<&str> =
        status["extensions"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["keep"]);
    let called = node.rpc("module.call", json!({"module": "ext", "function": "get"}));
    assert_eq!(code(&called), (-32004, "NOT_FOUND"), "{called}");
    assert!(called["error"]["message"].as_str().unwrap().contains("ext"), "{called}");

    // The history says so, with the build it unloaded and no build after.
    let history = node.rpc("system.history", json!({"module": "ext"}));
    let newest = &history["result"]["entries"][0];
    assert_eq!((newest["action"].as_str(), &newest["to"]), (Some("unload"), &Value::Null), "{history}");
    assert!(newest["from"]["sha256"].is_string(), "{history}");

    // A rollback loads it back, recorded again.
    let back = node.reload_like("system.rollback", json!({"module": "ext"}));
    assert_eq!(back["status"], "ok", "{back}");
    let called = node.rpc("module.call", json!({"module": "ext", "function": "get"}));
    assert_eq!(called["result"], json!({"n": 0}), "{called}");
    let names = node.status()["extensions"].as_array().unwrap().len();
    assert_eq!(names, 2);
}

#[test]
fn bad_params_and_targets_are_refused_clearly_and_change_nothing() {
    let node = Served::start(&[], with_extensions(&["ext", "other"]));
    load(&node, "extensions/ext.wat");
    std::fs::write(node.path("outside.wat"), extension_wat(9, 0)).unwrap();

    for (params, needle) in [
        (json!({"module": "clock"}), "unknown param `module`"),
        (json!({"app": "demo", "dry_run": true}), "unknown param `dry_run`"),
        (json!({}), "extension (a path) or app (a name) is required"),
        (json!({"extension": "extensions/ext.wat", "app": "demo"}), "not both"),
        (json!({"app": 7}), "app must be a string"),
        (json!({"app": "demo", "lock_timeout_ms": -1}), "lock_timeout_ms"),
    ] {
        let answer = node.rpc("system.unload", params.clone());
        assert_eq!(code(&answer), (-32602, "INVALID_PARAMS"), "{params}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{params}: {message}");
    }
    for (params, reason) in [
        (json!({"extension": "extensions/other.wat"}), "not_found"),
        (json!({"extension": "outside.wat"}), "forbidden_path"),
        (json!({"extension": ""}), "empty_path"),
        (json!({"app": "nope"}), "app_not_found"),
    ] {
        let result = node.reload_like("system.unload", params.clone());
        assert_eq!(only_reason(&result), reason, "{params}: {result}");
    }
    let read_only = node.rpc_as(None, "system.unload", json!({"app": "demo"}));
    assert_eq!(code(&read_only), (-32001, "UNAUTHORIZED"));
    let called = node.rpc("module.call", json!({"module": "ext", "function": "get"}));
    assert_eq!(called["result"], json!({"n": 0}), "nothing was unloaded: {called}");

    // Twice: the second finds nothing.
    let first = node.reload_like("system.unload", json!({"extension": "extensions/ext.wat"}));
    assert_eq!(first["status"], "ok", "{first}");
    let second = node.reload_like("system.unload", json!({"extension": "extensions/ext.wat"}));
    assert_eq!(only_reason(&second), "not_found", "{second}");
}

#[test]
fn an_unload_during_a_reload_is_a_conflict_and_calls_running_during_an_unload_finish() {
    let node = Served::start(&[], with_extensions(&["sleepy"]));
    load(&node, "extensions/sleepy.wat");
    assert_eq!(node.rpc("module.call", json!({"module": "sleepy", "function": "get"}))["result"], json!({"n": 0}));
    let (_, metrics) = node.get("/metrics", Some(&node.token));
    assert!(metrics.contains("module=\"sleepy\""), "its calls are counted while it is loaded: {metrics}");
    std::thread::scope(|scope| {
        // A call that runs 400 ms; the unload comes 100 ms into it.
        let running = scope.spawn(|| node.rpc("module.call", json!({"module": "sleepy", "function": "nap"})));
        std::thread::sleep(Duration::from_millis(100));
        // Meanwhile a second request finds the lock held by the unload.
        let conflicting = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            node.rpc("system.unload", json!({"app": "demo"}))
        });
        let started = Instant::now();
        let result = node.reload_like("system.unload", json!({"extension": "extensions/sleepy.wat"}));
        assert_eq!(result["status"], "ok", "{result}");
        assert!(started.elapsed() >= Duration::from_millis(200), "the unload waited for the call in flight");
        assert_eq!(running.join().unwrap()["result"], json!({"n": 0}), "the call in flight finished");
        let conflict = conflicting.join().unwrap();
        assert_eq!(code(&conflict), (-32009, "CONFLICT"), "{conflict}");
        assert_eq!(conflict["error"]["message"], "A reload is already in progress");
    });
    let called = node.rpc("module.call", json!({"module": "sleepy", "function": "get"}));
    assert_eq!(code(&called), (-32004, "NOT_FOUND"), "{called}");
    // The demo is untouched by the refused request, and no series of the
    // unloaded module is left in the metrics.
    assert!(modules(&node.status()).contains(&"clock".to_string()));
    let (status, metrics) = node.get("/metrics", Some(&node.token));
    assert_eq!(status, 200);
    assert!(!metrics.contains("module=\"sleepy\""), "{metrics}");
}

#[test]
fn other_modules_serve_every_call_while_an_extension_is_unloaded_and_loaded_back_under_load() {
    let node = Served::start(&[], with_extensions(&["churn"]));
    load(&node, "extensions/churn.wat");
    let stop = AtomicBool::new(false);
    let (served, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let answer = node.rpc("module.call", json!({"module": "front", "function": "time"}));
                    if answer["result"]["now_ms"].is_i64() {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!("a call failed: {answer}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        for round in 0..10 {
            let unloaded = node.reload_like("system.unload", json!({"extension": "extensions/churn.wat"}));
            assert_eq!(unloaded["status"], "ok", "round {round}: {unloaded}");
            let back = node.reload_like("system.rollback", json!({"module": "churn"}));
            assert_eq!(back["status"], "ok", "round {round}: {back}");
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(served.load(Ordering::Relaxed) > 20, "the load ran: {}", served.load(Ordering::Relaxed));
}

#[test]
fn zest_unload_summarises_like_a_reload_and_exits_by_the_contract() {
    let node = Served::start(&[], with_extensions(&["ext"]));
    load(&node, "extensions/ext.wat");
    let (exit, out, err) = node.cli(&["unload", "extension", "extensions/ext.wat"]);
    assert_eq!(exit, 0, "{out}{err}");
    assert!(out.contains("extension") && out.contains("unloaded: ext"), "{out}");
    let (exit, out, _) = node.cli(&["unload", "extension", "extensions/ext.wat"]);
    assert_eq!(exit, 4, "already unloaded is an error: {out}");
    assert!(out.contains("not_found"), "{out}");

    let (exit, out, err) = node.cli(&["unload", "app", "demo", "--json"]);
    assert_eq!(exit, 0, "{out}{err}");
    let result: Value = serde_json::from_str(&out).unwrap();
    let mut unloaded: Vec<&str> =
        result["metadata"]["unloaded"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    unloaded.sort();
    assert_eq!(unloaded, ["clock", "counter", "front"]);
    assert_eq!(result["results"].as_array().unwrap().len(), 3, "one child per module");
    let sent = node.rpc("process.call", json!({"process": "counter", "message": {"add": 1}}));
    assert_eq!(code(&sent), (-32004, "NOT_FOUND"), "its process went with it: {sent}");
    assert!(node.status()["apps"].as_array().unwrap().is_empty());

    let (exit, _, _) = node.cli(&["unload", "app", "demo"]);
    assert_eq!(exit, 4, "app_not_found");
    let (exit, _, err) = node.cli(&["unload", "module", "clock"]);
    assert_eq!(exit, 2, "not a target of unload: {err}");
    let (exit, _, _) = node.cli(&["unload", "app", "demo", "--token", "wrong"]);
    assert_eq!(exit, 1);

    // The app comes back with a rollback, its counter started afresh.
    let back = node.reload_like("system.rollback", json!({"app": "demo"}));
    assert_eq!(back["status"], "ok", "{back}");
    let sent = node.rpc("process.call", json!({"process": "counter", "message": {"add": 1}}));
    assert!(sent.get("result").is_some(), "{sent}");
}

#[test]
fn in_a_cluster_an_app_reload_unloads_a_dropped_module_on_every_member() {
    let mut fleet = support::Fleet::start(&["a", "b"]);
    for id in ["a", "b"] {
        let called = fleet.member(id).rpc("module.call", json!({"module": "front", "function": "time"}));
        assert!(called["result"]["now_ms"].is_i64(), "{id}: {called}");
    }
    // A reload for everyone records the app, front included, as the desired state.
    let first = fleet.member("a").reload(json!({"scope": "app", "app": "demo"}));
    assert_eq!(first["metadata"]["cluster"]["phase"], "committed", "{first}");
    // The coordinator's manifest no longer declares front; b's own copy still does.
    let manifest = fleet.member_dir("a").join("app/zest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let dropped = text.replace("[[modules]]\nname = \"front\"\npath = \"front.wat\"\n", "");
    assert_ne!(dropped, text, "the demo manifest changed; update the test");
    std::fs::write(&manifest, dropped).unwrap();

    let result = fleet.member("a").reload(json!({"scope": "app", "app": "demo"}));
    assert_eq!(result["status"], "ok", "{result}");
    let revision = result["metadata"]["cluster"]["revision"].as_i64().unwrap();
    assert_eq!(result["metadata"]["unloaded"], json!(["front"]), "listed once for the cluster: {result}");
    assert_eq!(result["metadata"]["cluster"]["phase"], "committed", "{result}");
    for id in ["a", "b"] {
        let member = fleet.member(id);
        let called = member.rpc("module.call", json!({"module": "front", "function": "time"}));
        assert_eq!(code(&called), (-32004, "NOT_FOUND"), "{id}: {called}");
        assert!(!modules(&member.status()).contains(&"front".to_string()), "{id}");
        let clock = member.rpc("module.call", json!({"module": "clock", "function": "now"}));
        assert!(clock.get("result").is_some(), "{id}: the rest serves: {clock}");
    }

    // b restarts with a copy of the app that no longer declares front: the
    // desired state does not load it back either (as a module of no app).
    let b_manifest = fleet.member_dir("b").join("app/zest.toml");
    let text = std::fs::read_to_string(&b_manifest).unwrap();
    std::fs::write(&b_manifest, text.replace("[[modules]]\nname = \"front\"\npath = \"front.wat\"\n", "")).unwrap();
    fleet.take("b").kill();
    fleet.spawn("b", &[]);
    let caught_up = support::eventually(Duration::from_secs(15), || {
        let status = fleet.member("b").status();
        (status["cluster"]["revision"].as_i64() == Some(revision)).then_some(status)
    })
    .expect("b caught up with the commit");
    assert!(!modules(&caught_up).contains(&"front".to_string()), "front came back: {caught_up}");
    let called = fleet.member("b").rpc("module.call", json!({"module": "front", "function": "time"}));
    assert_eq!(code(&called), (-32004, "NOT_FOUND"), "{called}");
}

/// Writes extension `shout.wat` under member a's extension root and loads it
/// through a on every member; its path.
fn load_shout_everywhere(fleet: &support::Fleet) -> String {
    let extension = fleet.member_dir("a").join("extensions/shout.wat");
    std::fs::create_dir_all(extension.parent().unwrap()).unwrap();
    std::fs::write(&extension, extension_wat(7, 0)).unwrap();
    let path = extension.display().to_string();
    let loaded = fleet.member("a").reload(json!({"scope": "extension", "path": path}));
    assert_eq!(loaded["metadata"]["cluster"]["phase"], "committed", "{loaded}");
    path
}

#[test]
fn in_a_cluster_system_unload_takes_an_extension_and_an_app_out_of_every_member_and_the_desired_state() {
    let mut fleet = support::Fleet::start(&["a", "b", "c"]);
    let path = load_shout_everywhere(&fleet);
    let ids = ["a", "b", "c"];
    for id in ids {
        let called = fleet.member(id).rpc("module.call", json!({"module": "shout", "function": "get"}));
        assert_eq!(called["result"], json!({"n": 7}), "{id}: {called}");
    }

    // An unknown app: refused as the local unload refuses it, nothing changed anywhere.
    let unknown = fleet.member("a").rpc("system.unload", json!({"app": "nope"}));
    let unknown = &unknown["result"];
    assert_eq!(unknown["status"], "error", "{unknown}");
    assert_eq!(unknown["errors"][0]["reason"], "app_not_found", "{unknown}");
    assert_eq!(unknown["metadata"]["cluster"]["phase"], "aborted", "{unknown}");
    for id in ids {
        let status = fleet.member(id).status();
        assert!(modules(&status).contains(&"clock".to_string()), "{id}: {status}");
        assert!(modules(&status).contains(&"shout".to_string()), "{id}: {status}");
    }

    // The path is checked against the coordinator's extension roots.
    let outside = fleet.member("b").rpc("system.unload", json!({"extension": path}));
    assert_eq!(outside["result"]["errors"][0]["reason"], "forbidden_path", "{outside}");
    assert_eq!(outside["result"]["metadata"]["cluster"]["phase"], "aborted", "{outside}");

    // The extension, through a: gone everywhere (b and c hold a's path in
    // their records; the name from a's record finds it there).
    let result = fleet.member("a").rpc("system.unload", json!({"extension": path}));
    let result = &result["result"];
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["metadata"]["unloaded"], json!(["shout"]), "{result}");
    assert_eq!(result["metadata"]["cluster"]["phase"], "committed", "{result}");
    assert_eq!(result["metadata"]["cluster"]["nodes"], json!(ids), "{result}");
    let children: Vec<(&str, &str)> = result["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|child| (child["kind"].as_str().unwrap(), child["target"].as_str().unwrap()))
        .collect();
    assert_eq!(children, vec![("node", "a"), ("node", "b"), ("node", "c")], "{result}");
    for id in ids {
        let member = fleet.member(id);
        let called = member.rpc("module.call", json!({"module": "shout", "function": "get"}));
        assert_eq!(code(&called), (-32004, "NOT_FOUND"), "{id}: {called}");
        assert_eq!(member.status()["extensions"], json!([]), "{id}");
    }
    let again = fleet.member("a").rpc("system.unload", json!({"extension": path}));
    assert_eq!(again["result"]["errors"][0]["reason"], "not_found", "{again}");

    // The app, through b: its modules and processes gone everywhere.
    let result = fleet.member("b").rpc("system.unload", json!({"app": "demo"}));
    let result = &result["result"];
    assert_eq!(result["status"], "ok", "{result}");
    let unloaded = result["metadata"]["unloaded"].as_array().unwrap();
    assert!(unloaded.contains(&json!("clock")) && unloaded.contains(&json!("front")), "{result}");
    let revision = result["metadata"]["cluster"]["revision"].as_i64().unwrap();
    assert_eq!(result["results"].as_array().unwrap().len(), 3, "{result}");
    for id in ids {
        let member = fleet.member(id);
        for module in ["clock", "front"] {
            let called = member.rpc("module.call", json!({"module": module, "function": "now"}));
            assert_eq!(code(&called), (-32004, "NOT_FOUND"), "{id}: {called}");
        }
        assert_eq!(member.status()["apps"], json!([]), "{id}");
    }

    // c restarts: the extension's record is gone from its data directory and
    // from the desired state, so neither its boot nor its catch-up loads it.
    fleet.take("c").kill();
    fleet.spawn("c", &[]);
    let caught_up = support::eventually(Duration::from_secs(15), || {
        let status = fleet.member("c").status();
        (status["cluster"]["revision"].as_i64() >= Some(revision)).then_some(status)
    })
    .expect("c caught up with the commit");
    assert!(!modules(&caught_up).contains(&"shout".to_string()), "the extension came back: {caught_up}");
    assert_eq!(caught_up["extensions"], json!([]), "{caught_up}");
    let called = fleet.member("c").rpc("module.call", json!({"module": "shout", "function": "get"}));
    assert_eq!(code(&called), (-32004, "NOT_FOUND"), "{called}");
}

/// `cluster.unloaded` of a member's status: the apps and extensions its
/// cluster unloaded, as it last read them.
fn marks(status: &Value) -> (Value, Value) {
    let unloaded = &status["cluster"]["unloaded"];
    (unloaded["apps"].clone(), unloaded["extensions"].clone())
}

fn called_ok(member: &Served, module: &str, function: &str) -> bool {
    member.rpc("module.call", json!({"module": module, "function": function})).get("result").is_some()
}

#[test]
fn in_a_cluster_what_was_unloaded_stays_out_of_a_member_restarted_with_it_configured_and_of_one_away_until_a_reload() {
    let mut fleet = support::Fleet::start(&["a", "b", "c"]);
    let path = load_shout_everywhere(&fleet);

    // Both b and c are away during the unloads: b killed (it starts again
    // later, its configuration listing the app and its data directory
    // recording the extension), c frozen until its lease lapses (it comes
    // back running, holding both).
    let b = fleet.take("b");
    fleet.member("c").signal(libc::SIGSTOP);
    b.kill();
    let alone = support::eventually(Duration::from_secs(8), || {
        let members = fleet.member("a").status()["cluster"]["members"].clone();
        (members.as_array()?.len() == 1).then_some(())
    });
    if alone.is_none() {
        fleet.member("c").signal(libc::SIGCONT);
        panic!("b and c never left the members");
    }
    let first = fleet.member("a").rpc("system.unload", json!({"extension": path}));
    let second = fleet.member("a").rpc("system.unload", json!({"app": "demo"}));
    fleet.member("c").signal(libc::SIGCONT);
    let (first, second) = (&first["result"], &second["result"]);
    assert_eq!(first["metadata"]["unloaded"], json!(["shout"]), "{first}");
    assert_eq!(second["status"], "partial", "{second}");
    assert_eq!(second["metadata"]["cluster"]["nodes"], json!(["a"]), "{second}");
    let skipped = json!([{"target": "b", "reason": "node_unreachable"}, {"target": "c", "reason": "node_unreachable"}]);
    assert_eq!(second["skipped"], skipped, "{second}");
    let revision = second["metadata"]["cluster"]["revision"].as_i64().unwrap();

    // c comes back holding both: its catch-up takes them out.
    let c = support::eventually(Duration::from_secs(15), || {
        let status = fleet.member("c").status();
        (status["cluster"]["revision"].as_i64() >= Some(revision)).then_some(status)
    })
    .expect("c caught up with the unload");
    assert_eq!((&c["apps"], &c["extensions"]), (&json!([]), &json!([])), "c kept what the cluster unloaded: {c}");
    assert_eq!(marks(&c), (json!(["demo"]), json!(["shout"])), "{c}");
    for module in ["clock", "shout"] {
        let called = fleet.member("c").rpc("module.call", json!({"module": module, "function": "get"}));
        assert_eq!(code(&called), (-32004, "NOT_FOUND"), "c: {called}");
    }

    // b starts again: it loads neither the app its configuration lists nor
    // the extension its records hold — not even before it catches up.
    fleet.spawn("b", &[]);
    let b = fleet.member("b").status();
    assert_eq!((&b["apps"], &b["extensions"]), (&json!([]), &json!([])), "b loaded what the cluster unloaded: {b}");
    assert!(!modules(&b).contains(&"clock".to_string()) && !modules(&b).contains(&"shout".to_string()), "{b}");
    let b = support::eventually(Duration::from_secs(15), || {
        let status = fleet.member("b").status();
        (status["cluster"]["revision"].as_i64() >= Some(revision)).then_some(status)
    })
    .expect("b caught up");
    assert_eq!(marks(&b), (json!(["demo"]), json!(["shout"])), "{b}");
    assert_eq!((&b["apps"], &b["extensions"]), (&json!([]), &json!([])), "{b}");
    let token = fleet.member("b").token.clone();
    let (exit, out, err) = fleet.member("b").cli(&["status", "--token", &token]);
    assert_eq!(exit, 0, "{err}");
    assert!(out.contains("unloaded by the cluster (apps): demo\n"), "{out}");
    assert!(out.contains("unloaded by the cluster (extensions): shout\n"), "{out}");

    // A cluster reload of the app, through b (which kept it unloaded from its
    // own configuration): back on every member, and its mark is gone.
    let back = fleet.member("b").reload(json!({"scope": "app", "app": "demo"}));
    assert_eq!(back["status"], "ok", "{back}");
    assert_eq!(back["metadata"]["cluster"]["nodes"], json!(["a", "b", "c"]), "{back}");
    for id in ["a", "b", "c"] {
        let member = fleet.member(id);
        assert!(called_ok(member, "clock", "now"), "{id}: the app is not back");
        let status = support::eventually(Duration::from_secs(10), || {
            let status = member.status();
            (marks(&status).0 == json!([])).then_some(status)
        })
        .unwrap_or_else(|| panic!("{id} still shows the app unloaded: {}", member.status()));
        assert_eq!(marks(&status).1, json!(["shout"]), "{id}: the extension stays unloaded: {status}");
        assert!(!modules(&status).contains(&"shout".to_string()), "{id}: {status}");
    }
    // And a member restarted now loads it from its configuration again.
    fleet.take("c").kill();
    fleet.spawn("c", &[]);
    assert!(called_ok(fleet.member("c"), "clock", "now"), "c did not load its configured app");
}

#[test]
fn in_a_cluster_a_rollback_of_an_unload_loads_it_back_on_every_member_and_clears_its_mark() {
    let mut fleet = support::Fleet::start(&["a", "b"]);
    let path = load_shout_everywhere(&fleet);
    let unloaded = fleet.member("a").rpc("system.unload", json!({"app": "demo"}));
    assert_eq!(unloaded["result"]["status"], "ok", "{unloaded}");
    let unloaded = fleet.member("a").rpc("system.unload", json!({"extension": path}));
    assert_eq!(unloaded["result"]["status"], "ok", "{unloaded}");

    // The app, through b, with b's own history id of the unload.
    let history = fleet.member("b").rpc("system.history", json!({"module": "clock"}));
    let newest = &history["result"]["entries"][0];
    assert_eq!(newest["action"], "unload", "{history}");
    let back = fleet.member("b").reload_like("system.rollback", json!({"app": "demo", "to": newest["id"]}));
    assert_eq!(back["status"], "ok", "{back}");
    assert_eq!(back["metadata"]["rollback"], true, "{back}");
    assert_eq!(back["metadata"]["cluster"]["phase"], "committed", "{back}");
    // The extension, through a, by the default (the newest entry's `from`).
    let ext = fleet.member("a").reload_like("system.rollback", json!({"module": "shout"}));
    assert_eq!(ext["status"], "ok", "{ext}");
    assert_eq!(ext["metadata"]["cluster"]["phase"], "committed", "{ext}");
    for id in ["a", "b"] {
        let member = fleet.member(id);
        assert!(called_ok(member, "clock", "now"), "{id}: the app is not back");
        let sent = member.rpc("process.call", json!({"process": "counter", "message": {"add": 1}}));
        assert!(sent.get("result").is_some(), "{id}: its process is not back: {sent}");
        let called = member.rpc("module.call", json!({"module": "shout", "function": "get"}));
        assert_eq!(called["result"], json!({"n": 7}), "{id}: {called}");
        let status = support::eventually(Duration::from_secs(10), || {
            let status = member.status();
            (marks(&status) == (json!([]), json!([]))).then_some(status)
        });
        assert!(status.is_some(), "{id} still shows marks: {}", member.status());
    }
    // Desired again: a member restarted now loads both.
    fleet.take("b").kill();
    fleet.spawn("b", &[]);
    let b = support::eventually(Duration::from_secs(15), || {
        let member = fleet.member("b");
        (called_ok(member, "clock", "now") && called_ok(member, "shout", "get")).then_some(())
    });
    assert!(b.is_some(), "b did not load the app and extension back: {}", fleet.member("b").status());
}
