//! Apps, scopes `module`, `app` and `all`, `compile: true`, the reload lock and
//! telemetry, at the `Node` API.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use zest_runtime::{
    AllScope, EventBody, Kind, LockError, Node, NodeConfig, Reason, ReloadError, ReloadOptions, ReloadRequest,
    ReloadResult, Scope, Status,
};

use super::support::{module, versioned, BASE};

/// A node plus a scratch directory holding apps.
struct Apps {
    dir: tempfile::TempDir,
    node: Node,
}

impl Apps {
    fn new() -> Apps {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig { data_dir: Some(dir.path().join("data")), ..NodeConfig::default() };
        Apps { node: Node::new(config).unwrap(), dir }
    }

    /// Writes app `name` with `zest.toml` and module files `(module, wat)`.
    fn write_app(&self, name: &str, build: Option<&str>, modules: &[(&str, &str)]) -> PathBuf {
        let app = self.dir.path().join(name);
        std::fs::create_dir_all(&app).unwrap();
        let mut manifest = format!("[app]\nname = \"{name}\"\n");
        if let Some(build) = build {
            manifest.push_str(&format!("build = {build:?}\n"));
        }
        for (module, wat) in modules {
            manifest.push_str(&format!("\n[[modules]]\nname = \"{module}\"\npath = \"{module}.wat\"\n"));
            std::fs::write(app.join(format!("{module}.wat")), wat).unwrap();
        }
        std::fs::write(app.join("zest.toml"), manifest).unwrap();
        app
    }

    fn write(&self, path: impl AsRef<Path>, text: &str) {
        std::fs::write(self.dir.path().join(path), text).unwrap();
    }

    fn reload(&self, scope: Scope, options: ReloadOptions) -> ReloadResult {
        let request = ReloadRequest { scope, options, request_id: None };
        self.node.reload(&request).expect("the reload runs")
    }

    fn get(&self, module: &str) -> String {
        self.node.call(module, "get", "null").unwrap()
    }
}

fn app(name: &str) -> Scope {
    Scope::App(name.to_string())
}

#[test]
fn an_app_loads_and_reloads_with_one_child_per_module_and_picks_up_new_modules() {
    let apps = Apps::new();
    let dir = apps.write_app("demo", None, &[("clock", &versioned(1, 0)), ("timer", &versioned(10, 0))]);
    let loaded = apps.node.load_app(&dir);
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    assert_eq!((loaded.kind, loaded.target.as_str()), (Kind::App, "demo"));
    assert_eq!(loaded.reloaded, ["clock", "timer"]);
    assert_eq!(apps.get("clock"), r#"{"v":1}"#);

    apps.write("demo/clock.wat", &versioned(2, 0));
    let result = apps.reload(app("demo"), ReloadOptions::default());
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!(result.reloaded, ["clock"]);
    assert_eq!(result.metadata.unchanged, ["timer"]);
    assert_eq!(result.results.len(), 2);
    assert_eq!(
        result.results.iter().map(|r| (r.kind, r.target.as_str(), r.status())).collect::<Vec<_>>(),
        [(Kind::Module, "clock", Status::Ok), (Kind::Module, "timer", Status::Ok)]
    );
    assert_eq!(apps.get("clock"), r#"{"v":2}"#);

    // A module newly declared in the manifest loads with the next app reload.
    apps.write_app(
        "demo",
        None,
        &[("clock", &versioned(2, 0)), ("timer", &versioned(10, 0)), ("extra", &versioned(7, 0))],
    );
    let result = apps.reload(app("demo"), ReloadOptions::default());
    assert_eq!(result.reloaded, ["extra"], "{result:#?}");
    assert_eq!(apps.get("extra"), r#"{"v":7}"#);
    let status = apps.node.status();
    assert_eq!(status.apps[0].modules, ["clock", "timer", "extra"]);
    assert_eq!(status.modules.iter().find(|m| m.name == "extra").unwrap().app.as_deref(), Some("demo"));
}

#[test]
fn a_missing_app_and_an_undeclared_module_are_named_errors() {
    let apps = Apps::new();
    let missing = apps.reload(app("ghost"), ReloadOptions::default());
    assert_eq!(missing.status(), Status::Error);
    assert_eq!((missing.errors[0].target.as_str(), missing.errors[0].reason), ("ghost", Reason::AppNotFound));

    let unknown = apps.reload(Scope::Module("nobody".into()), ReloadOptions::default());
    assert_eq!((unknown.errors[0].target.as_str(), unknown.errors[0].reason), ("nobody", Reason::NotFound));
    assert!(unknown.errors[0].message.contains("no loaded app declares"), "{}", unknown.errors[0].message);
}

#[test]
fn scope_module_rereads_its_apps_manifest() {
    let apps = Apps::new();
    let dir = apps.write_app("demo", None, &[("clock", &versioned(1, 0))]);
    assert_eq!(apps.node.load_app(&dir).status(), Status::Ok);
    // Declare a new module and point it at a file: scope module finds it.
    apps.write_app("demo", None, &[("clock", &versioned(1, 0)), ("late", &versioned(5, 0))]);
    let result = apps.reload(Scope::Module("late".into()), ReloadOptions::default());
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!((result.kind, result.reloaded.as_slice()), (Kind::Module, &["late".to_string()][..]));
    assert_eq!(apps.get("late"), r#"{"v":5}"#);
    assert_eq!(apps.node.status().apps[0].modules, ["clock", "late"]);
}

#[test]
fn a_broken_manifest_or_a_module_claimed_by_two_apps_is_refused() {
    let apps = Apps::new();
    let one = apps.write_app("one", None, &[("shared", &versioned(1, 0))]);
    assert_eq!(apps.node.load_app(&one).status(), Status::Ok);
    let two = apps.write_app("two", None, &[("shared", &versioned(2, 0))]);
    let clash = apps.node.load_app(&two);
    assert_eq!(clash.errors[0].reason, Reason::InvalidModule);
    assert!(clash.errors[0].message.contains("already declared by app `one`"), "{}", clash.errors[0].message);
    assert_eq!(apps.get("shared"), r#"{"v":1}"#, "the first app keeps its module");

    apps.write("one/zest.toml", "[app]\nname = \"one\"\ncolour = \"red\"\n");
    let broken = apps.reload(app("one"), ReloadOptions::default());
    assert_eq!(broken.errors[0].reason, Reason::InvalidModule);
    assert!(
        broken.errors[0].message.contains("zest.toml: line 3, column 1: unknown field `colour`"),
        "{}",
        broken.errors[0].message
    );
    assert_eq!(apps.get("shared"), r#"{"v":1}"#);
}

#[test]
fn atomic_swaps_all_modules_or_none() {
    let apps = Apps::new();
    let dir = apps.write_app("demo", None, &[("a", &versioned(1, 0)), ("b", &versioned(1, 0))]);
    assert_eq!(apps.node.load_app(&dir).status(), Status::Ok);
    apps.write("demo/a.wat", &versioned(2, 0));
    apps.write("demo/b.wat", &format!(r#"(module (import "env" "nope" (func)) {BASE})"#));
    let atomic = ReloadOptions { atomic: true, ..ReloadOptions::default() };

    let result = apps.reload(app("demo"), atomic.clone());
    assert_eq!(result.status(), Status::Error);
    assert!(result.reloaded.is_empty(), "{result:#?}");
    let reasons: Vec<_> = result.errors.iter().map(|f| (f.target.as_str(), f.reason)).collect();
    assert_eq!(reasons, [("a", Reason::RolledBack), ("b", Reason::InvalidModule)]);
    assert!(result.errors[0].message.contains("b failed"), "{}", result.errors[0].message);
    assert_eq!((apps.get("a"), apps.get("b")), (r#"{"v":1}"#.into(), r#"{"v":1}"#.into()));

    // Without atomic, the good module goes in and the bad one keeps serving.
    let partial = apps.reload(app("demo"), ReloadOptions::default());
    assert_eq!(partial.status(), Status::Error);
    assert_eq!(partial.reloaded, ["a"]);
    assert_eq!((apps.get("a"), apps.get("b")), (r#"{"v":2}"#.into(), r#"{"v":1}"#.into()));

    // Fixed, atomic goes through.
    apps.write("demo/b.wat", &versioned(3, 0));
    let fixed = apps.reload(app("demo"), atomic);
    assert_eq!((fixed.status(), fixed.reloaded.as_slice()), (Status::Ok, &["b".to_string()][..]));
}

#[test]
fn compile_runs_the_build_in_the_app_dir_and_streams_its_output() {
    let apps = Apps::new();
    let dir = apps.write_app(
        "demo",
        Some("echo building; cp src/clock.wat clock.wat; echo done >&2"),
        &[("clock", &versioned(1, 0))],
    );
    std::fs::create_dir(dir.join("src")).unwrap();
    assert_eq!(apps.node.load_app(&dir).status(), Status::Ok);
    apps.write("demo/src/clock.wat", &versioned(2, 0));

    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let handler = apps.node.telemetry().attach(move |event| {
        if let EventBody::BuildOutput { line, stream } = &event.body {
            sink.lock().unwrap().push((stream.as_str(), line.clone()));
        }
    });
    let compile = ReloadOptions { compile: true, ..ReloadOptions::default() };
    let result = apps.reload(app("demo"), compile.clone());
    apps.node.telemetry().detach(handler);
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!(result.reloaded, ["clock"]);
    let report = result.metadata.compile.as_ref().expect("metadata.compile");
    assert!(report.ran && report.exit_code == Some(0));
    assert_eq!(report.command.as_deref(), Some("echo building; cp src/clock.wat clock.wat; echo done >&2"));
    // Each line with its stream; the order between stdout and stderr is the
    // order their readers got them, which no pipe pair can promise.
    let mut lines = lines.lock().unwrap().clone();
    lines.sort();
    assert_eq!(lines, [("stderr", "done".to_string()), ("stdout", "building".to_string())]);
    assert_eq!(apps.get("clock"), r#"{"v":2}"#);

    // A failing build reloads nothing and says why, with its last lines.
    apps.write_app(
        "demo",
        Some("echo compiling clock; echo 'error[E0308]: mismatched types' >&2; exit 101"),
        &[("clock", &versioned(3, 0))],
    );
    let failed = apps.reload(app("demo"), compile);
    assert_eq!(failed.status(), Status::Error);
    assert_eq!(failed.errors[0].reason, Reason::CompileFailed);
    let message = &failed.errors[0].message;
    assert!(
        message.contains("exited with status 101") && message.contains("error[E0308]: mismatched types"),
        "{message}"
    );
    assert!(failed.reloaded.is_empty());
    assert_eq!(apps.get("clock"), r#"{"v":2}"#, "nothing was reloaded");
}

#[test]
fn scope_all_reloads_every_app_as_child_steps_and_gathers_their_errors() {
    let apps = Apps::new();
    for (name, module) in [("one", "m1"), ("two", "m2"), ("three", "m3")] {
        let dir = apps.write_app(name, None, &[(module, &versioned(1, 0))]);
        assert_eq!(apps.node.load_app(&dir).status(), Status::Ok);
    }
    apps.write("one/m1.wat", &versioned(2, 0));
    apps.write("two/m2.wat", "(module (func $broken");
    apps.write("three/m3.wat", &module(&[r#"(import "wasi" "fd_write" (func))"#]));

    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    apps.node.telemetry().attach(move |event| {
        sink.lock().unwrap().push((event.name(), event.kind, event.target.clone(), event.request_id.clone()));
    });
    let request = ReloadRequest {
        scope: Scope::All(AllScope::default()),
        options: ReloadOptions::default(),
        request_id: Some("req-42".into()),
    };
    let result = apps.node.reload(&request).unwrap();
    assert_eq!((result.kind, result.target.as_str(), result.status()), (Kind::System, "system", Status::Error));
    assert_eq!(result.reloaded, ["m1"]);
    let errors: Vec<_> = result.errors.iter().map(|f| (f.target.as_str(), f.reason)).collect();
    assert_eq!(errors, [("m3", Reason::InvalidModule), ("m2", Reason::CompileError)]);
    assert_eq!(result.results.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(), ["one", "three", "two"]);
    let counts = result.metadata.counts.unwrap();
    assert_eq!((counts.apps, counts.ok, counts.error), (3, 1, 2));

    let events = events.lock().unwrap();
    let names: Vec<_> = events.iter().map(|(name, kind, target, _)| (*name, *kind, target.as_str())).collect();
    assert_eq!(
        names,
        [
            // Every child is staged before any is committed: each child's
            // step starts with its staging and stops when it is finished.
            ("zest.reload.start", Kind::System, "system"),
            ("zest.reload.start", Kind::App, "one"),
            ("zest.reload.start", Kind::App, "three"),
            ("zest.reload.start", Kind::App, "two"),
            ("zest.reload.stop", Kind::App, "one"),
            ("zest.reload.stop", Kind::App, "three"),
            ("zest.reload.stop", Kind::App, "two"),
            ("zest.reload.stop", Kind::System, "system"),
        ]
    );
    assert!(events.iter().all(|(.., request_id)| request_id == "req-42"));
    drop(events);

    // Named apps only, and an unknown one among them.
    let some = apps.reload(
        Scope::All(AllScope { apps: vec!["one".into(), "nope".into()], ..AllScope::default() }),
        ReloadOptions::default(),
    );
    assert_eq!(some.results.len(), 2);
    assert_eq!(some.errors[0].reason, Reason::AppNotFound);
}

#[test]
fn the_lock_excludes_an_overlapping_reload_and_a_waiting_one_runs_after() {
    let apps = Arc::new(Apps::new());
    let dir = apps.write_app("slow", Some("sleep 0.5"), &[("clock", &versioned(1, 0))]);
    assert_eq!(apps.node.load_app(&dir).status(), Status::Ok);
    let compile = ReloadOptions { compile: true, ..ReloadOptions::default() };

    // Two overlapping requests, neither waiting: exactly one runs.
    let spans = Arc::new(Mutex::new(Vec::new()));
    let runners: Vec<_> = (0..2)
        .map(|i| {
            let (apps, compile, spans) = (Arc::clone(&apps), compile.clone(), Arc::clone(&spans));
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(i * 100));
                let request = ReloadRequest { scope: app("slow"), options: compile, request_id: None };
                let started = Instant::now();
                let outcome = apps.node.reload(&request);
                spans.lock().unwrap().push((started, Instant::now()));
                outcome
            })
        })
        .collect();
    let outcomes: Vec<_> = runners.into_iter().map(|r| r.join().unwrap()).collect();
    let conflicts = outcomes.iter().filter(|o| matches!(o, Err(ReloadError::Lock(LockError::Conflict)))).count();
    let ran = outcomes.iter().filter(|o| matches!(o, Ok(r) if r.status() == Status::Ok)).count();
    assert_eq!((conflicts, ran), (1, 1), "{outcomes:?}");
    let conflict = outcomes.iter().find_map(|o| o.as_ref().err()).unwrap();
    assert_eq!(conflict.to_string(), "A reload is already in progress");

    // With a wait, both run, one after the other: their builds never overlap.
    let builds = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&builds);
    apps.node.telemetry().attach(move |event| match &event.body {
        EventBody::Start { .. } if event.kind == Kind::App => sink.lock().unwrap().push(("start", Instant::now())),
        EventBody::Stop { .. } if event.kind == Kind::App => sink.lock().unwrap().push(("stop", Instant::now())),
        _ => {}
    });
    let waiting = ReloadOptions { lock_timeout: Duration::from_secs(10), ..compile };
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let (apps, waiting) = (Arc::clone(&apps), waiting.clone());
            thread::spawn(move || {
                apps.node.reload(&ReloadRequest { scope: app("slow"), options: waiting, request_id: None })
            })
        })
        .collect();
    for runner in runners {
        assert_eq!(runner.join().unwrap().unwrap().status(), Status::Ok);
    }
    let builds = builds.lock().unwrap();
    let order: Vec<&str> = builds.iter().map(|(what, _)| *what).collect();
    assert_eq!(order, ["start", "stop", "start", "stop"], "the two reloads overlapped");
    assert!(builds[2].1 - builds[0].1 >= Duration::from_millis(500), "the second waited for the first build");
}

#[test]
fn reloads_are_counted_and_timed_in_prometheus_metrics() {
    let apps = Apps::new();
    let dir = apps.write_app("metered", None, &[("clock", &versioned(1, 0))]);
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        assert_eq!(apps.node.load_app(&dir).status(), Status::Ok);
        apps.write("metered/clock.wat", "(module (func $broken");
        assert_eq!(apps.reload(app("metered"), ReloadOptions::default()).status(), Status::Error);
    });
    let text = handle.render();
    assert!(text.contains(r#"zest_reloads_total{kind="app",status="ok",role="coordinator"} 1"#), "{text}");
    assert!(text.contains(r#"zest_reloads_total{kind="app",status="error",role="coordinator"} 1"#), "{text}");
    assert!(text.contains(r#"zest_reload_duration_seconds_count{kind="app",role="coordinator"} 2"#), "{text}");
}
