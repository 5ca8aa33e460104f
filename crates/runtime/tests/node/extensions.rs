//! Extensions (scope `extension` and the `extensions` of scope `all`): path
//! checks in the contract's order, `.wat`, `.wasm` and `.rs` builds, no rebuild
//! of an unchanged source, records that survive a restart, and the module rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use zest_runtime::{
    AllScope, EventBody, ExtensionsConfig, Format, Kind, LockError, Node, NodeConfig, Reason, ReloadError,
    ReloadOptions, ReloadRequest, ReloadResult, Scope, Status,
};

use super::support::{counter, versioned, write_at};

/// A node whose extension root is `<tmp>/extensions` and data dir `<tmp>/data`.
struct Ext {
    dir: tempfile::TempDir,
    node: Node,
}

impl Ext {
    fn new() -> Ext {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("extensions")).unwrap();
        let node = Ext::start(dir.path());
        Ext { dir, node }
    }

    fn start(dir: &Path) -> Node {
        let config = NodeConfig {
            data_dir: Some(dir.join("data")),
            extensions: ExtensionsConfig {
                roots: vec![dir.join("extensions")],
                rustc: None,
                javascript: None,
                python: None,
            },
            ..NodeConfig::default()
        };
        Node::new(config).unwrap()
    }

    /// A node started afresh on the same directories (the old one stopped).
    fn restart(self) -> Ext {
        let Ext { dir, node } = self;
        drop(node);
        let node = Ext::start(dir.path());
        Ext { dir, node }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn write(&self, relative: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        write_at(self.path(relative), bytes)
    }

    fn reload(&self, path: &Path) -> ReloadResult {
        self.reload_with(path, ReloadOptions::default())
    }

    fn reload_with(&self, path: &Path, options: ReloadOptions) -> ReloadResult {
        let request = ReloadRequest { scope: Scope::Extension(path.to_path_buf()), options, request_id: None };
        self.node.reload(&request).expect("the reload runs")
    }
}

fn only_error(result: &ReloadResult) -> (Reason, &str) {
    assert_eq!(result.errors.len(), 1, "{result:#?}");
    (result.errors[0].reason, &result.errors[0].message)
}

const RUST_EXTENSION: &str = r#"use zest_guest::{export, vsn, Json};

vsn!("greeter-1");

fn greet(args: Json) -> Result<Json, String> {
    let name = args.get("name").and_then(Json::as_str).unwrap_or("world").to_string();
    Ok(Json::object(vec![("greeting", Json::from(format!("GREETING, {}", name)))]))
}

export!(greet);
"#;

#[test]
fn each_failing_check_gives_its_reason_in_the_contract_order() {
    let ext = Ext::new();
    ext.write("outside.wat", versioned(1, 0));
    ext.write("extensions/dir.wat/keep", "");
    ext.write("extensions/notes.txt", "hello");
    ext.write("extensions/broken.wat", "(module\n  (func $f\n    i32.const\n");
    let cases: [(PathBuf, Reason); 7] = [
        (PathBuf::new(), Reason::EmptyPath),
        (PathBuf::from("   "), Reason::EmptyPath),
        // Outside the root comes before existence: a missing file outside is forbidden.
        (ext.path("outside.wat"), Reason::ForbiddenPath),
        (ext.path("missing-outside.wat"), Reason::ForbiddenPath),
        (ext.path("extensions/missing.wat"), Reason::Enoent),
        (ext.path("extensions/dir.wat"), Reason::NotAFile),
        (ext.path("extensions/notes.txt"), Reason::UnsupportedExtension),
    ];
    for (path, want) in cases {
        let result = ext.reload(&path);
        assert_eq!((result.kind, result.target.as_str()), (Kind::Extension, path.to_str().unwrap()));
        assert_eq!(only_error(&result).0, want, "{path:?}: {result:#?}");
        assert_eq!(result.errors[0].target, path.display().to_string());
    }
    let escape = ext.reload(&ext.path("extensions/../outside.wat"));
    assert_eq!(only_error(&escape).0, Reason::ForbiddenPath);

    let broken = ext.reload(&ext.path("extensions/broken.wat"));
    let (reason, message) = only_error(&broken);
    assert_eq!(reason, Reason::CompileError);
    assert!(message.contains(":4:"), "the message points at the line: {message}");
    assert!(ext.node.status().modules.is_empty(), "nothing was loaded");
}

#[test]
fn a_symbolic_link_that_escapes_the_root_is_forbidden_and_one_inside_is_followed() {
    let ext = Ext::new();
    ext.write("outside.wat", versioned(1, 0));
    std::os::unix::fs::symlink(ext.path("outside.wat"), ext.path("extensions/escape.wat")).unwrap();
    std::os::unix::fs::symlink(ext.path("extensions"), ext.path("extensions/loop")).unwrap();
    std::os::unix::fs::symlink(ext.dir.path(), ext.path("extensions/up")).unwrap();

    let escaped = ext.reload(&ext.path("extensions/escape.wat"));
    let (reason, message) = only_error(&escaped);
    assert_eq!(reason, Reason::ForbiddenPath);
    assert!(message.contains("outside.wat"), "the message says where it leads: {message}");
    assert_eq!(only_error(&ext.reload(&ext.path("extensions/up/outside.wat"))).0, Reason::ForbiddenPath);
    assert!(ext.node.call("escape", "get", "null").is_err());

    ext.write("extensions/inner.wat", versioned(3, 0));
    let followed = ext.reload(&ext.path("extensions/loop/inner.wat"));
    assert_eq!(followed.status(), Status::Ok, "{followed:#?}");
    assert_eq!(ext.node.call("inner", "get", "null").unwrap(), r#"{"v":3}"#);
}

#[test]
fn wat_and_wasm_extensions_load_under_their_file_stem() {
    let ext = Ext::new();
    let wat = ext.write("extensions/clock.wat", versioned(1, 0));
    let loaded = ext.reload(&wat);
    assert_eq!(loaded.status(), Status::Ok, "{loaded:#?}");
    assert_eq!(loaded.reloaded, ["clock"]);
    assert_eq!(loaded.metadata.compiled_modules, ["clock"]);
    assert!(loaded.results.is_empty(), "an extension result has no children");
    assert_eq!(ext.node.call("clock", "get", "null").unwrap(), r#"{"v":1}"#);

    let wasm = ext.write("extensions/timer.wasm", wat::parse_str(versioned(10, 0)).unwrap());
    assert_eq!(ext.reload(&wasm).status(), Status::Ok);
    assert_eq!(ext.node.call("timer", "get", "null").unwrap(), r#"{"v":10}"#);

    let bad = ext.write("extensions/bad.wasm", b"\0asm\x01\0\0\0\x99");
    assert_eq!(only_error(&ext.reload(&bad)).0, Reason::InvalidModule);

    let status = ext.node.status();
    let listed: Vec<(&str, Format, bool)> =
        status.extensions.iter().map(|e| (e.record.name.as_str(), e.record.format, e.loaded)).collect();
    assert_eq!(listed, [("clock", Format::Wat, true), ("timer", Format::Wasm, true)]);

    // Unchanged: left alone; edited: swapped.
    let again = ext.reload(&wat);
    assert_eq!((again.status(), again.metadata.unchanged.as_slice()), (Status::Ok, &["clock".to_string()][..]));
    assert!(again.metadata.compiled_modules.is_empty());
    ext.write("extensions/clock.wat", versioned(2, 0));
    let edited = ext.reload(&wat);
    assert_eq!((edited.status(), edited.reloaded.as_slice()), (Status::Ok, &["clock".to_string()][..]));
    assert_eq!(ext.node.call("clock", "get", "null").unwrap(), r#"{"v":2}"#);
}

#[test]
fn a_rust_extension_compiles_once_per_source_and_reports_rustcs_words() {
    let ext = Ext::new();
    let path = ext.write("extensions/greeter.rs", RUST_EXTENSION);
    let first = ext.reload(&path);
    assert_eq!(first.status(), Status::Ok, "{first:#?}");
    assert_eq!(first.metadata.compiled_modules, ["greeter"]);
    let rustc = first.metadata.compile.as_ref().expect("rustc ran");
    assert!(rustc.ran && rustc.command.as_deref().unwrap().ends_with("greeter.rs"), "{rustc:?}");
    assert_eq!(ext.node.call("greeter", "greet", r#"{"name":"ops"}"#).unwrap(), r#"{"greeting":"GREETING, ops"}"#);

    let unchanged = ext.reload(&path);
    assert_eq!(unchanged.metadata.unchanged, ["greeter"]);
    assert!(unchanged.metadata.compile.is_none(), "an unchanged source is not recompiled: {unchanged:#?}");

    ext.write("extensions/greeter.rs", RUST_EXTENSION.replace("GREETING", "HELLO"));
    let edited = ext.reload(&path);
    assert_eq!(edited.reloaded, ["greeter"], "{edited:#?}");
    assert!(edited.metadata.compile.is_some(), "an edited source is recompiled");
    assert_eq!(ext.node.call("greeter", "greet", r#"{"name":"ops"}"#).unwrap(), r#"{"greeting":"HELLO, ops"}"#);

    ext.write("extensions/greeter.rs", RUST_EXTENSION.replace("Ok(Json", "Ok(Jsn"));
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    ext.node.telemetry().attach(move |event| {
        if let EventBody::BuildOutput { line, .. } = &event.body {
            sink.lock().unwrap().push((event.kind, line.clone()));
        }
    });
    let broken = ext.reload(&path);
    let lines = lines.lock().unwrap();
    assert!(
        lines.iter().any(|(kind, line)| *kind == Kind::Extension && line.starts_with("error")),
        "rustc's lines are published as they come: {lines:?}"
    );
    let (reason, message) = only_error(&broken);
    assert_eq!(reason, Reason::CompileError);
    let shown = format!("{}:7", ext.path("extensions/greeter.rs").display());
    assert!(message.contains(&shown), "rustc's words name the file and line ({shown}): {message}");
    assert_eq!(
        ext.node.call("greeter", "greet", r#"{"name":"ops"}"#).unwrap(),
        r#"{"greeting":"HELLO, ops"}"#,
        "a failed build leaves the old code serving"
    );
}

/// The directories of the rustcs waiting for a next build
/// (`<data>/rust/spare-*`, each holding its FIFO): a directory goes once its
/// process has ended and been reaped.
fn waiting_rustcs(data: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(data.join("rust")).unwrap().flatten();
    entries.map(|entry| entry.path()).filter(|path| path.to_string_lossy().contains("/spare-")).collect()
}

#[test]
fn after_a_rust_build_the_next_ones_rustc_waits_and_ends_with_the_node() {
    use std::os::unix::fs::FileTypeExt;
    let ext = Ext::new();
    let data = ext.path("data");
    let path = ext.write("extensions/waiting.rs", RUST_EXTENSION);
    assert_eq!(ext.reload(&path).status(), Status::Ok);
    let waiting = waiting_rustcs(&data);
    assert_eq!(waiting.len(), 1, "one rustc waits for the next build of waiting.rs: {waiting:?}");
    let fifo = std::fs::metadata(waiting[0].join("waiting.rs")).unwrap();
    assert!(fifo.file_type().is_fifo(), "it reads its source from a FIFO named as the file");

    // The edit is built by it: the new code answers, and the next one waits.
    ext.write("extensions/waiting.rs", RUST_EXTENSION.replace("GREETING", "AGAIN"));
    let edited = ext.reload(&path);
    assert_eq!(edited.status(), Status::Ok, "{edited:#?}");
    assert!(edited.metadata.compile.is_some());
    assert_eq!(ext.node.call("waiting", "greet", r#"{"name":"ops"}"#).unwrap(), r#"{"greeting":"AGAIN, ops"}"#);
    let next = waiting_rustcs(&data);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_ne!(next, waiting, "the first one built the edit and ended");

    // Stopping the node ends the one waiting.
    let Ext { dir, node } = ext;
    drop(node);
    assert_eq!(waiting_rustcs(&dir.path().join("data")), Vec::<PathBuf>::new());
}

#[test]
fn extensions_are_loaded_again_after_a_restart_and_bad_records_never_stop_the_node() {
    let ext = Ext::new();
    let rs = ext.write("extensions/greeter.rs", RUST_EXTENSION);
    let wat = ext.write("extensions/clock.wat", versioned(4, 0));
    let doomed = ext.write("extensions/doomed.wat", versioned(5, 0));
    for path in [&rs, &wat, &doomed] {
        assert_eq!(ext.reload(path).status(), Status::Ok);
    }
    let ext = ext.restart();
    assert!(ext.node.status().modules.is_empty(), "nothing loads before the restore");
    ext.write("extensions/doomed.wat", "(module (func");
    let restored = ext.node.restore_extensions();
    assert_eq!(restored.results.len(), 3, "{restored:#?}");
    assert_eq!((restored.status(), restored.errors[0].reason), (Status::Error, Reason::CompileError));
    assert_eq!(restored.errors[0].target, "doomed");
    let greeter = restored.results.iter().find(|r| r.reloaded == ["greeter"]).expect("greeter restored");
    assert!(greeter.metadata.compile.is_none(), "the kept artifact is reused, rustc does not run: {greeter:#?}");
    assert_eq!(ext.node.call("clock", "get", "null").unwrap(), r#"{"v":4}"#);
    assert_eq!(ext.node.call("greeter", "greet", "null").unwrap(), r#"{"greeting":"GREETING, world"}"#);
    let doomed_status = ext.node.status().extensions.into_iter().find(|e| e.record.name == "doomed").unwrap();
    assert!(!doomed_status.loaded, "a record that failed to load stays recorded");

    // A fixed source comes back on the next restart; a broken records file is
    // reported, kept aside, and the node still starts.
    ext.write("extensions/doomed.wat", versioned(6, 0));
    let ext = ext.restart();
    let restored = ext.node.restore_extensions();
    assert_eq!(restored.status(), Status::Ok, "{restored:#?}");
    assert_eq!(ext.node.call("doomed", "get", "null").unwrap(), r#"{"v":6}"#);

    ext.write("data/extensions.json", "{ not json");
    let ext = ext.restart();
    let restored = ext.node.restore_extensions();
    let (reason, message) = only_error(&restored);
    assert_eq!(reason, Reason::InvalidModule);
    assert!(message.contains("extensions.json.broken"), "{message}");
    assert!(ext.path("data/extensions.json.broken").is_file());
    assert_eq!(ext.reload(&wat).status(), Status::Ok, "the node works on");
}

#[test]
fn an_extension_may_not_take_an_app_modules_name_nor_an_app_an_extensions() {
    let ext = Ext::new();
    let app = ext.path("app");
    ext.write("app/clock.wat", versioned(1, 0));
    ext.write("app/zest.toml", "[app]\nname = \"demo\"\n[[modules]]\nname = \"clock\"\npath = \"clock.wat\"\n");
    assert_eq!(ext.node.load_app(&app).status(), Status::Ok);

    let clash = ext.reload(&ext.write("extensions/clock.wat", versioned(9, 0)));
    let (reason, message) = only_error(&clash);
    assert_eq!(reason, Reason::InvalidModule);
    assert!(message.contains("belongs to app `demo`"), "{message}");
    assert_eq!(ext.node.call("clock", "get", "null").unwrap(), r#"{"v":1}"#, "the app's module is untouched");

    assert_eq!(ext.reload(&ext.write("extensions/timer.wat", versioned(2, 0))).status(), Status::Ok);
    ext.write("app/timer.wat", versioned(3, 0));
    ext.write(
        "app/zest.toml",
        "[app]\nname = \"demo\"\n[[modules]]\nname = \"clock\"\npath = \"clock.wat\"\n\
         [[modules]]\nname = \"timer\"\npath = \"timer.wat\"\n",
    );
    let request = ReloadRequest::new(Scope::App("demo".into()));
    let result = ext.node.reload(&request).unwrap();
    assert!(result.errors[0].message.contains("already loaded as the extension"), "{result:#?}");
    assert_eq!(ext.node.call("timer", "get", "null").unwrap(), r#"{"v":2}"#);
}

#[test]
fn replacing_an_extension_migrates_its_processes_and_scope_module_reloads_it() {
    let ext = Ext::new();
    let path = ext.write("extensions/counter.wat", counter('1'));
    assert_eq!(ext.reload(&path).status(), Status::Ok);
    ext.node.start_process("tally", "counter", r#"{"start":40}"#).unwrap();
    ext.node.call_process("tally", r#"{"add":2}"#).unwrap();

    ext.write("extensions/counter.wat", counter('2'));
    let result = ext.reload(&path);
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!(result.metadata.swaps[0].new_vsn, "2");
    assert_eq!(ext.node.call_process("tally", r#""get""#).unwrap(), r#"{"count":42}"#);

    ext.write("extensions/counter.wat", counter('3'));
    let by_module = ext.node.reload(&ReloadRequest::new(Scope::Module("counter".into()))).unwrap();
    assert_eq!((by_module.kind, by_module.status()), (Kind::Module, Status::Ok), "{by_module:#?}");
    assert_eq!(ext.node.status().processes[0].vsn.as_deref(), Some("3"));
    assert_eq!(ext.node.call_process("tally", r#""get""#).unwrap(), r#"{"count":42}"#);
}

#[test]
fn scope_all_reloads_extensions_as_children_and_atomic_undoes_them_with_the_rest() {
    let ext = Ext::new();
    let clock = ext.write("extensions/clock.wat", versioned(1, 0));
    let timer = ext.write("extensions/timer.wat", versioned(10, 0));
    let all = |atomic| ReloadRequest {
        scope: Scope::All(AllScope { extensions: vec![clock.clone(), timer.clone()], ..AllScope::default() }),
        options: ReloadOptions { atomic, ..ReloadOptions::default() },
        request_id: None,
    };
    let result = ext.node.reload(&all(false)).unwrap();
    assert_eq!(result.status(), Status::Ok, "{result:#?}");
    assert_eq!(result.metadata.counts.unwrap().extensions, 2);
    assert_eq!(result.results.iter().map(|r| r.kind).collect::<Vec<_>>(), [Kind::Extension, Kind::Extension]);

    ext.write("extensions/clock.wat", versioned(2, 0));
    ext.write("extensions/timer.wat", "(module (func");
    let result = ext.node.reload(&all(true)).unwrap();
    assert_eq!(result.status(), Status::Error);
    let clock_result = &result.results[0];
    assert_eq!(clock_result.errors[0].reason, Reason::RolledBack, "{result:#?}");
    assert_eq!(ext.node.call("clock", "get", "null").unwrap(), r#"{"v":1}"#, "nothing was swapped");
}

#[test]
fn an_extension_reload_racing_another_reload_meets_the_lock() {
    let ext = Arc::new(Ext::new());
    ext.write("app/clock.wat", versioned(1, 0));
    ext.write(
        "app/zest.toml",
        "[app]\nname = \"slow\"\nbuild = \"sleep 0.5\"\n[[modules]]\nname = \"clock\"\npath = \"clock.wat\"\n",
    );
    assert_eq!(ext.node.load_app(ext.path("app")).status(), Status::Ok);
    let path = ext.write("extensions/timer.wat", versioned(10, 0));

    let builder = {
        let ext = Arc::clone(&ext);
        thread::spawn(move || {
            let options = ReloadOptions { compile: true, ..ReloadOptions::default() };
            ext.node.reload(&ReloadRequest { scope: Scope::App("slow".into()), options, request_id: None })
        })
    };
    thread::sleep(Duration::from_millis(150));
    let request = ReloadRequest::new(Scope::Extension(path.clone()));
    let refused = ext.node.reload(&request).unwrap_err();
    assert!(matches!(refused, ReloadError::Lock(LockError::Conflict)), "{refused}");
    assert!(ext.node.call("timer", "get", "null").is_err(), "the refused reload loaded nothing");

    let started = Instant::now();
    let waited = ext.reload_with(&path, ReloadOptions { lock_timeout: Duration::from_secs(10), ..Default::default() });
    assert_eq!(waited.status(), Status::Ok, "{waited:#?}");
    assert!(started.elapsed() >= Duration::from_millis(200), "it waited for the build to finish");
    assert_eq!(builder.join().unwrap().unwrap().status(), Status::Ok);
    assert_eq!(ext.node.call("timer", "get", "null").unwrap(), r#"{"v":10}"#);
}
