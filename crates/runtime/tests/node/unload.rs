//! Unloading (`system.unload`, and app reloads whose manifest drops a module):
//! a purge that removes the name. Calls in flight finish on their version,
//! new calls get `ModuleNotFound`, processes stop after the message they are
//! handling and their queued messages get `NotFound`, nothing is left in the
//! registry, the ledger or the records; the history says `unload` and a
//! rollback loads the build back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use zest_runtime::{
    Action, CallError, EventBody, ExtensionsConfig, Kind, Limits, LockError, Node, NodeConfig, ProcessError, Reason,
    ReloadError, ReloadOptions, ReloadRequest, ReloadResult, RollbackRequest, RollbackTarget, Scope, Status,
    UnloadRequest, UnloadTarget,
};

use super::support::{counter, module, versioned, write_at};

/// A node with the extension root `<tmp>/extensions`, data in `<tmp>/data`,
/// and apps written under `<tmp>`.
struct Host {
    dir: tempfile::TempDir,
    node: Node,
}

impl Host {
    fn new() -> Host {
        Host::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Host {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("extensions")).unwrap();
        let node = Host::start(dir.path(), limits);
        Host { dir, node }
    }

    fn start(dir: &Path, limits: Limits) -> Node {
        let config = NodeConfig {
            data_dir: Some(dir.join("data")),
            extensions: ExtensionsConfig { roots: vec![dir.join("extensions")], ..ExtensionsConfig::default() },
            limits,
            ..NodeConfig::default()
        };
        Node::new(config).unwrap()
    }

    /// The node stopped and started afresh on the same directories, its
    /// recorded extensions loaded again as `zest serve` does.
    fn restart(self) -> Host {
        let Host { dir, node } = self;
        drop(node);
        let node = Host::start(dir.path(), Limits::default());
        let restored = node.restore_extensions();
        assert_ne!(restored.status(), Status::Error, "{restored:#?}");
        Host { dir, node }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn write(&self, relative: &str, text: &str) -> PathBuf {
        write_at(self.path(relative), text)
    }

    fn load_extension(&self, relative: &str, wat: &str) -> PathBuf {
        let path = self.write(relative, wat);
        let request = ReloadRequest::new(Scope::Extension(path.clone()));
        let result = self.node.reload(&request).unwrap();
        assert_eq!(result.status(), Status::Ok, "{result:#?}");
        path
    }

    /// Writes app `name` declaring `modules` (and `processes`: name, module)
    /// and loads it (or reloads it, when loaded).
    fn app(&self, name: &str, modules: &[(&str, &str)], processes: &[(&str, &str)]) -> ReloadResult {
        let dir = self.path(name);
        let mut manifest = format!("[app]\nname = \"{name}\"\n");
        for (module, wat) in modules {
            manifest.push_str(&format!("\n[[modules]]\nname = \"{module}\"\npath = \"{module}.wat\"\n"));
            self.write(&format!("{name}/{module}.wat"), wat);
        }
        for (process, module) in processes {
            manifest.push_str(&format!(
                "\n[[processes]]\nname = \"{process}\"\nmodule = \"{module}\"\ninit = {{ start = 0 }}\n"
            ));
        }
        self.write(&format!("{name}/zest.toml"), &manifest);
        if self.node.app_manifest(name).is_some() {
            let request = ReloadRequest::new(Scope::App(name.to_string()));
            return self.node.reload(&request).unwrap();
        }
        self.node.load_app(&dir)
    }

    fn unload(&self, target: UnloadTarget) -> ReloadResult {
        self.node.unload(&UnloadRequest::new(target)).expect("the unload runs")
    }

    fn unload_extension(&self, path: &Path) -> ReloadResult {
        self.unload(UnloadTarget::Extension(path.to_path_buf()))
    }

    fn rollback(&self, target: RollbackTarget, to: Option<u64>) -> ReloadResult {
        let mut request = RollbackRequest::new(target);
        request.to = to;
        self.node.rollback(&request).expect("the rollback runs")
    }

    fn modules(&self) -> Vec<String> {
        self.node.status().modules.into_iter().map(|m| m.name).collect()
    }
}

fn only_error(result: &ReloadResult) -> (Reason, &str) {
    assert_eq!(result.errors.len(), 1, "{result:#?}");
    (result.errors[0].reason, &result.errors[0].message)
}

fn not_loaded(node: &Node, module: &str) -> bool {
    matches!(node.call(module, "get", "null"), Err(CallError::ModuleNotFound { module: m }) if m == module)
}

/// A module whose `nap` waits (on the wall clock) `ms` milliseconds, then
/// returns `{"napped":true}`; and `get` returning `{"v":1}`.
fn napper(ms: u64) -> String {
    module(&[
        r#"(import "zest" "now_ms" (func $now (result i64)))"#,
        r#"(data (i32.const 16) "{\"napped\":true}")"#,
        r#"(data (i32.const 64) "{\"v\":1}")"#,
        &format!(
            r#"(func (export "nap") (param i32 i32) (result i64) (local $until i64)
                 (local.set $until (i64.add (call $now) (i64.const {ms})))
                 (loop $wait (br_if $wait (i64.lt_s (call $now) (local.get $until))))
                 i64.const 0x000000100000000f)"#
        ),
        r#"(func (export "get") (param i32 i32) (result i64) i64.const 0x0000004000000007)"#,
    ])
}

/// A process module whose every message takes `ms` milliseconds to handle
/// and is answered `{"napped":true}`.
fn napping_process(ms: u64) -> String {
    module(&[
        r#"(import "zest" "now_ms" (func $now (result i64)))"#,
        r#"(data (i32.const 16) "{\"napped\":true}")"#,
        r#"(func (export "zest_init") (param i32 i32) (result i64) i64.const 0)"#,
        r#"(func (export "zest_state_save") (result i64) i64.const 0)"#,
        r#"(func (export "zest_code_change") (param i32 i32) (result i64) i64.const 0)"#,
        &format!(
            r#"(func (export "zest_handle") (param i32 i32) (result i64) (local $until i64)
                 (local.set $until (i64.add (call $now) (i64.const {ms})))
                 (loop $wait (br_if $wait (i64.lt_s (call $now) (local.get $until))))
                 i64.const 0x000000100000000f)"#
        ),
    ])
}

/// `relay` calls `callee.get` through the `call` import.
fn relay() -> String {
    module(&[
        r#"(import "zest" "call" (func $call (param i32 i32 i32 i32 i32 i32) (result i64)))"#,
        r#"(data (i32.const 16) "callee")"#,
        r#"(data (i32.const 32) "get")"#,
        r#"(data (i32.const 64) "null")"#,
        r#"(func (export "relay") (param i32 i32) (result i64)
             (call $call (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 3) (i32.const 64) (i32.const 4)))"#,
    ])
}

/// Rolls app `demo` back (to history entry `to`, or its newest), which must
/// bring back both its modules.
fn demo_rolled_back(host: &Host, to: Option<u64>) {
    let back = host.rollback(RollbackTarget::App("demo".into()), to);
    assert_eq!(back.status(), Status::Ok, "{back:#?}");
    let mut reloaded = back.reloaded.clone();
    reloaded.sort();
    assert_eq!(reloaded, ["clock", "counter"]);
}

#[test]
fn an_unloaded_extension_leaves_the_registry_the_ledger_the_records_and_a_restart() {
    let host = Host::new();
    let path = host.load_extension("extensions/clock.wat", &versioned(1, 0));
    host.load_extension("extensions/other.wat", &versioned(7, 0));
    assert_eq!(host.node.call("clock", "get", "null").unwrap(), r#"{"v":1}"#);
    let sha256 = host.node.status().modules.iter().find(|m| m.name == "clock").unwrap().current.sha256.clone();

    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    host.node.telemetry().attach(move |event| {
        let what = match &event.body {
            EventBody::Start { .. } => "start",
            EventBody::Stop { .. } => "stop",
            _ => return,
        };
        sink.lock().unwrap().push((what, event.kind, event.target.clone()));
    });
    let result = host.unload_extension(&path);
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!((result.kind, result.target.as_str()), (Kind::Extension, path.to_str().unwrap()));
    assert_eq!(result.metadata.unloaded, ["clock"]);
    assert!(result.reloaded.is_empty() && result.results.is_empty(), "{result:#?}");
    let target = path.display().to_string();
    assert_eq!(
        *events.lock().unwrap(),
        [("start", Kind::Extension, target.clone()), ("stop", Kind::Extension, target)],
        "one telemetry operation of kind extension"
    );

    assert!(not_loaded(&host.node, "clock"));
    assert_eq!(host.node.call("other", "get", "null").unwrap(), r#"{"v":7}"#, "the other extension stays");
    let status = host.node.status();
    assert_eq!(host.modules(), ["other"]);
    assert_eq!(status.extensions.iter().map(|e| e.record.name.as_str()).collect::<Vec<_>>(), ["other"]);
    assert!(host.node.call_counts().iter().all(|calls| calls.module != "clock"), "no live series left");

    let entry = host.node.history(Some("clock"), 1).remove(0);
    assert_eq!(entry.action, Action::Unload);
    assert_eq!(entry.from.as_ref().map(|b| b.sha256.as_str()), Some(sha256.as_str()));
    assert!(entry.to.is_none(), "{entry:?}");
    assert!(host.node.build(&sha256).is_some(), "the build stays kept for a rollback");

    // Already unloaded: not_found; the file is still there.
    let again = host.unload_extension(&path);
    assert_eq!(only_error(&again).0, Reason::NotFound, "{again:#?}");

    let host = host.restart();
    assert_eq!(host.modules(), ["other"], "a restart does not load it again");
    assert!(not_loaded(&host.node, "clock"));
}

#[test]
fn bad_unload_targets_get_their_reasons_and_change_nothing() {
    let host = Host::new();
    let path = host.load_extension("extensions/clock.wat", &versioned(1, 0));
    host.write("extensions/never.wat", &versioned(2, 0));
    host.write("outside.wat", &versioned(3, 0));
    let cases: [(UnloadTarget, Reason); 5] = [
        (UnloadTarget::Extension(PathBuf::new()), Reason::EmptyPath),
        (UnloadTarget::Extension(host.path("outside.wat")), Reason::ForbiddenPath),
        (UnloadTarget::Extension(host.path("extensions/../outside.wat")), Reason::ForbiddenPath),
        (UnloadTarget::Extension(host.path("extensions/never.wat")), Reason::NotFound),
        (UnloadTarget::App("nope".into()), Reason::AppNotFound),
    ];
    for (target, want) in cases {
        let result = host.unload(target.clone());
        assert_eq!(only_error(&result).0, want, "{target:?}: {result:#?}");
        assert!(result.metadata.unloaded.is_empty());
    }
    assert_eq!(host.node.call("clock", "get", "null").unwrap(), r#"{"v":1}"#);
    assert!(host.node.history(None, 10).iter().all(|e| e.action != Action::Unload));

    // The reload lock: CONFLICT at once, or after lock_timeout.
    let session = host.node.session(Duration::ZERO, None).unwrap();
    let mut request = UnloadRequest::new(UnloadTarget::Extension(path.clone()));
    assert_eq!(host.node.unload(&request).unwrap_err(), ReloadError::Lock(LockError::Conflict));
    request.lock_timeout = Duration::from_millis(50);
    let started = Instant::now();
    assert!(host.node.unload(&request).is_err());
    assert!(started.elapsed() >= Duration::from_millis(50));
    drop(session);
    assert_eq!(host.node.call("clock", "get", "null").unwrap(), r#"{"v":1}"#, "nothing half-removed");

    // A file removed before its unload: the record still goes.
    std::fs::remove_file(&path).unwrap();
    let gone = host.unload_extension(&path);
    assert_eq!((gone.status(), gone.metadata.unloaded.as_slice()), (Status::Ok, &["clock".to_string()][..]));
    assert!(host.node.status().extensions.is_empty());
}

#[test]
fn calls_in_flight_finish_on_their_version_and_new_calls_get_not_found() {
    let host = Host::new();
    let path = host.load_extension("extensions/sleepy.wat", &napper(400));
    let node = &host.node;
    let started = Instant::now();
    let caller = thread::scope(|scope| {
        let running = scope.spawn(move || node.call("sleepy", "nap", "null"));
        thread::sleep(Duration::from_millis(100));
        let result = host.unload_extension(&path);
        // The drain waited for the call, which answered.
        assert_eq!(result.status(), Status::Ok, "{result:#?}");
        assert!(started.elapsed() >= Duration::from_millis(350), "the unload waited for the call in flight");
        running.join().unwrap()
    });
    assert_eq!(caller.unwrap(), r#"{"napped":true}"#);
    assert!(not_loaded(&host.node, "sleepy"));
}

#[test]
fn a_call_running_past_the_drain_timeout_is_in_use_and_the_name_is_gone_at_once() {
    let host = Host::with_limits(Limits { drain_timeout: Duration::from_millis(50), ..Limits::default() });
    let path = host.load_extension("extensions/sleepy.wat", &napper(600));
    let node = &host.node;
    thread::scope(|scope| {
        let running = scope.spawn(move || node.call("sleepy", "nap", "null"));
        thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let result = host.unload_extension(&path);
        assert!(started.elapsed() < Duration::from_millis(400), "it waited for the drain timeout only");
        assert_eq!(result.status(), Status::Partial, "{result:#?}");
        assert_eq!(result.skipped.len(), 1);
        assert_eq!((result.skipped[0].target.as_str(), result.skipped[0].reason), ("sleepy", Reason::InUse));
        assert_eq!(result.metadata.unloaded, ["sleepy"], "unloaded all the same");
        assert!(not_loaded(node, "sleepy"), "new calls get NOT_FOUND while the old one runs");
        assert!(host.node.status().extensions.is_empty());
        assert_eq!(running.join().unwrap().unwrap(), r#"{"napped":true}"#, "the call in flight finished");
    });
}

#[test]
fn an_app_unload_stops_its_processes_after_their_message_and_queued_messages_get_not_found() {
    let host = Host::new();
    let loaded = host.app("shop", &[("slow", &napping_process(300)), ("clock", &versioned(1, 0))], &[("p", "slow")]);
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    host.node.start_process("q", "slow", "null").unwrap();
    host.load_extension("extensions/other.wat", &versioned(9, 0));
    let node = &host.node;
    thread::scope(|scope| {
        let handling = scope.spawn(move || node.call_process("p", "null"));
        thread::sleep(Duration::from_millis(60));
        let queued = scope.spawn(move || node.call_process("p", "null"));
        thread::sleep(Duration::from_millis(60));
        let result = host.unload(UnloadTarget::App("shop".into()));
        assert_eq!(result.status(), Status::Ok, "{result:#?}");
        assert_eq!((result.kind, result.target.as_str()), (Kind::App, "shop"));
        let mut unloaded = result.metadata.unloaded.clone();
        unloaded.sort();
        assert_eq!(unloaded, ["clock", "slow"]);
        let children: Vec<(&str, Kind)> = result.results.iter().map(|r| (r.target.as_str(), r.kind)).collect();
        assert_eq!(children, [("slow", Kind::Module), ("clock", Kind::Module)], "one child per module");

        assert_eq!(handling.join().unwrap().unwrap(), r#"{"napped":true}"#, "the message in progress is answered");
        let err = queued.join().unwrap().unwrap_err();
        assert!(matches!(&err, ProcessError::NotFound { process } if process == "p"), "{err}");
    });
    assert!(matches!(host.node.call_process("q", "null"), Err(ProcessError::NotFound { .. })));
    let status = host.node.status();
    assert!(status.apps.is_empty() && status.processes.is_empty(), "{status:#?}");
    assert_eq!(host.modules(), ["other"]);
    assert!(not_loaded(&host.node, "clock"));
    let unloads: Vec<String> =
        host.node.history(None, 10).into_iter().filter(|e| e.action == Action::Unload).map(|e| e.module).collect();
    assert_eq!(unloads.len(), 2, "{unloads:?}");
    assert_eq!(only_error(&host.unload(UnloadTarget::App("shop".into()))).0, Reason::AppNotFound);
}

#[test]
fn an_app_reload_unloads_what_its_manifest_dropped_and_the_callers_call_fails_not_found_naming_it() {
    let host = Host::new();
    let loaded = host.app("duo", &[("caller", &relay()), ("callee", &versioned(1, 0))], &[]);
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    assert_eq!(host.node.call("caller", "relay", "null").unwrap(), r#"{"v":1}"#);

    let reloaded = host.app("duo", &[("caller", &relay())], &[]);
    assert_eq!(reloaded.status(), Status::Ok, "{reloaded:#?}");
    assert_eq!(reloaded.metadata.unloaded, ["callee"]);
    let child = reloaded.results.iter().find(|r| r.target == "callee").expect("a child for the dropped module");
    assert_eq!(child.metadata.unloaded, ["callee"]);
    assert!(not_loaded(&host.node, "callee"));
    let err = host.node.call("caller", "relay", "null").unwrap_err();
    assert!(err.is_not_found() && err.to_string().contains("callee"), "{err}");
    assert_eq!(host.node.status().apps[0].modules, ["caller"]);
    assert_eq!(host.node.history(Some("callee"), 1)[0].action, Action::Unload);

    // Declared again, it loads again.
    let back = host.app("duo", &[("caller", &relay()), ("callee", &versioned(2, 0))], &[]);
    assert_eq!(back.status(), Status::Ok, "{back:#?}");
    assert_eq!(host.node.call("caller", "relay", "null").unwrap(), r#"{"v":2}"#);
}

#[test]
fn an_atomic_app_reload_that_fails_unloads_nothing() {
    let host = Host::new();
    host.app("duo", &[("a", &versioned(1, 0)), ("b", &versioned(1, 0))], &[]);
    let dir = host.path("duo");
    std::fs::write(dir.join("zest.toml"), "[app]\nname = \"duo\"\n\n[[modules]]\nname = \"a\"\npath = \"a.wat\"\n")
        .unwrap();
    std::fs::write(dir.join("a.wat"), "(module (func $broken").unwrap();
    let options = ReloadOptions { atomic: true, ..ReloadOptions::default() };
    let request = ReloadRequest { scope: Scope::App("duo".into()), options, request_id: None };
    let result = host.node.reload(&request).unwrap();
    assert_eq!(result.status(), Status::Error, "{result:#?}");
    assert!(result.metadata.unloaded.is_empty());
    assert!(result.errors.iter().any(|f| f.target == "b" && f.reason == Reason::RolledBack), "{result:#?}");
    assert_eq!(host.node.call("b", "get", "null").unwrap(), r#"{"v":1}"#, "b still serves");
}

#[test]
fn a_rollback_loads_an_unloaded_extension_back_recorded_by_default_or_to_the_unload() {
    let host = Host::new();
    let path = host.load_extension("extensions/clock.wat", &versioned(1, 0));
    std::fs::write(&path, versioned(2, 0)).unwrap();
    let request = ReloadRequest::new(Scope::Extension(path.clone()));
    assert_eq!(host.node.reload(&request).unwrap().status(), Status::Ok);
    assert_eq!(host.unload_extension(&path).status(), Status::Ok);
    let unload_id = host.node.history(Some("clock"), 1)[0].id;
    // The file changes after the unload: the rollback loads the kept build.
    std::fs::write(&path, versioned(3, 0)).unwrap();

    let back = host.rollback(RollbackTarget::Module("clock".into()), None);
    assert_eq!(back.status(), Status::Ok, "{back:#?}");
    assert!(back.metadata.rollback);
    assert_eq!(host.node.call("clock", "get", "null").unwrap(), r#"{"v":2}"#, "the build it unloaded");
    let status = host.node.status();
    assert_eq!(status.extensions.iter().map(|e| e.record.name.as_str()).collect::<Vec<_>>(), ["clock"]);
    let entry = host.node.history(Some("clock"), 1).remove(0);
    assert_eq!((entry.action, entry.from.is_none(), entry.to.is_some()), (Action::Rollback, true, true));

    // Unloaded again, then rolled back to the unload's own entry: the same build.
    assert_eq!(host.unload_extension(&path).status(), Status::Ok);
    let to_unload = host.rollback(RollbackTarget::Module("clock".into()), Some(unload_id));
    assert_eq!(to_unload.status(), Status::Ok, "{to_unload:#?}");
    assert_eq!(host.node.call("clock", "get", "null").unwrap(), r#"{"v":2}"#);

    // Re-recorded: a restart loads it again (from its file, as any extension).
    let host = host.restart();
    assert_eq!(host.node.call("clock", "get", "null").unwrap(), r#"{"v":3}"#);
}

#[test]
fn a_rollback_loads_an_unloaded_app_back_with_its_processes_and_a_module_of_it_only_with_it() {
    let host = Host::new();
    let loaded = host.app("demo", &[("counter", &counter('1')), ("clock", &versioned(1, 0))], &[("c", "counter")]);
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    assert_eq!(host.unload(UnloadTarget::App("demo".into())).status(), Status::Ok);

    let alone = host.rollback(RollbackTarget::Module("clock".into()), None);
    let (reason, message) = only_error(&alone);
    assert_eq!(reason, Reason::NotFound);
    assert!(message.contains("roll back the app"), "{message}");
    assert!(not_loaded(&host.node, "clock"));

    demo_rolled_back(&host, None);
    assert_eq!(host.node.call("clock", "get", "null").unwrap(), r#"{"v":1}"#);
    let status = host.node.status();
    assert_eq!(status.apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["demo"]);
    assert_eq!(status.processes.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["c"], "started afresh");
    assert!(host.node.call_process("c", r#"{"add":1}"#).is_ok());
}

#[test]
fn other_modules_serve_every_call_while_extensions_are_unloaded_and_rolled_back_under_load() {
    let host = Host::new();
    let other = host.load_extension("extensions/other.wat", &versioned(5, 0));
    let path = host.load_extension("extensions/churn.wat", &versioned(1, 0));
    let stop = AtomicBool::new(false);
    let (served, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let node = &host.node;
    thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match node.call("other", "get", "null") {
                        Ok(out) if out == r#"{"v":5}"# => served.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        for round in 0..20 {
            let unloaded = host.unload_extension(&path);
            assert_eq!(unloaded.status(), Status::Ok, "round {round}: {unloaded:#?}");
            let back = host.rollback(RollbackTarget::Module("churn".into()), None);
            assert_eq!(back.status(), Status::Ok, "round {round}: {back:#?}");
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call to another module failed");
    assert!(served.load(Ordering::Relaxed) > 100, "the load ran: {}", served.load(Ordering::Relaxed));
    assert!(other.exists());
}

#[test]
fn an_extension_running_a_canary_on_trial_unloads_whole_and_its_trial_ends_without_a_revert() {
    let host = Host::new();
    let path = host.load_extension("extensions/clock.wat", &versioned(1, 0));
    std::fs::write(&path, versioned(2, 0)).unwrap();
    let mut request = ReloadRequest::new(Scope::Module("clock".into()));
    request.options.canary = Some(50);
    request.options.trial =
        Some(zest_runtime::TrialSpec { window: Duration::from_millis(300), max_failure_rate: 0.01, min_calls: 1 });
    let canary = host.node.reload(&request).unwrap();
    assert_eq!(canary.status(), Status::Ok, "{canary:#?}");
    assert!(host.node.status().modules[0].canary.is_some());

    let result = host.unload_extension(&path);
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!(result.metadata.unloaded, ["clock"]);
    assert!(host.modules().is_empty(), "current and canary both gone");
    assert!(host.node.call_counts().is_empty(), "{:?}", host.node.call_counts());
    // The trial's window passes: nothing is reverted or promoted back in.
    thread::sleep(Duration::from_millis(500));
    assert!(not_loaded(&host.node, "clock"));
    assert_eq!(host.node.history(Some("clock"), 1)[0].action, Action::Unload);
}

#[test]
fn an_unloaded_app_comes_back_whole_by_a_reload_of_its_name_or_a_rollback_to_the_unload() {
    let host = Host::new();
    let loaded = host.app("demo", &[("counter", &counter('1')), ("clock", &versioned(1, 0))], &[("c", "counter")]);
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    assert_eq!(host.unload(UnloadTarget::App("demo".into())).status(), Status::Ok);
    // A rollback to the unload's entry of one of its modules brings every
    // module that unload took out back, not only that one.
    let entries = host.node.history(None, 10);
    let first = entries.iter().filter(|e| e.action == Action::Unload).map(|e| e.id).min().unwrap();
    demo_rolled_back(&host, Some(first));
    assert!(host.node.call_process("c", r#"{"add":1}"#).is_ok());

    // Unloaded again, the app comes back by a reload of its name too, read
    // from its directory as it is now.
    assert_eq!(host.unload(UnloadTarget::App("demo".into())).status(), Status::Ok);
    host.write("demo/clock.wat", &versioned(2, 0));
    let reload = host.node.reload(&ReloadRequest::new(Scope::App("demo".into()))).unwrap();
    assert_eq!(reload.status(), Status::Ok, "{reload:#?}");
    assert_eq!(host.node.call("clock", "get", "null").unwrap(), r#"{"v":2}"#);
    assert!(host.node.call_process("c", r#"{"add":1}"#).is_ok(), "its processes started");
    assert_eq!(host.node.status().apps.len(), 1);
    // A name never loaded is still unknown.
    let unknown = host.node.reload(&ReloadRequest::new(Scope::App("nope".into()))).unwrap();
    assert_eq!(only_error(&unknown).0, Reason::AppNotFound);
}

#[test]
fn a_rollback_of_an_app_unload_loads_it_back_after_a_restart_its_manifest_read_from_its_directory() {
    let host = Host::new();
    let loaded = host.app("demo", &[("counter", &counter('1')), ("clock", &versioned(1, 0))], &[("c", "counter")]);
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    assert_eq!(host.unload(UnloadTarget::App("demo".into())).status(), Status::Ok);
    let host = host.restart();
    assert!(host.node.status().apps.is_empty());
    assert!(not_loaded(&host.node, "clock"));

    demo_rolled_back(&host, None);
    assert_eq!(host.node.call("clock", "get", "null").unwrap(), r#"{"v":1}"#);
    assert!(host.node.call_process("c", r#"{"add":1}"#).is_ok(), "its process started afresh");

    // Loaded again, it is no longer kept as unloaded: after another restart
    // (which loads no app here) there is nothing of it to roll back.
    let host = host.restart();
    let gone = host.rollback(RollbackTarget::App("demo".into()), None);
    assert_eq!(only_error(&gone).0, Reason::AppNotFound, "{gone:#?}");
}
