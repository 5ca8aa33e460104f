//! Watch mode (CONTRACT.md §12) at the `Node` API: a saved file reloads the
//! narrowest scope once, whatever the editor's way of saving; what is not a
//! change (a touch, the node's own writes, a build's output) reloads nothing; a
//! file gone is reported and the old code keeps serving.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zest_runtime::watch::{Watch, WatchConfig, WatchEvent};
use zest_runtime::{ExtensionsConfig, Node, NodeConfig, ReloadOptions, Scope, Status};

use super::support::versioned;

const DEBOUNCE: Duration = Duration::from_millis(100);

/// Where the node's data directory is, against the app's.
#[derive(Clone, Copy)]
enum Layout {
    Apart,
    DataInApp,
    /// As `zest serve` keeps its bundled demo: `<data_dir>/demo`.
    AppInData,
}

/// A node on an app `demo` (modules `clock` and `front`), watched.
struct Watched {
    dir: tempfile::TempDir,
    node: Node,
    seen: Arc<Mutex<Vec<String>>>,
    watch: Option<Watch>,
}

impl Watched {
    /// `manifest_extra` goes under `[app]`.
    fn new(manifest_extra: &str, layout: Layout) -> Watched {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("demo");
        std::fs::create_dir_all(app.join("src")).unwrap();
        std::fs::create_dir_all(dir.path().join("extensions")).unwrap();
        std::fs::write(
            app.join("zest.toml"),
            format!(
                "[app]\nname = \"demo\"\n{manifest_extra}\n[[modules]]\nname = \"clock\"\npath = \"clock.wat\"\n\n\
                 [[modules]]\nname = \"front\"\npath = \"front.wat\"\n"
            ),
        )
        .unwrap();
        std::fs::write(app.join("clock.wat"), versioned(1, 0)).unwrap();
        std::fs::write(app.join("front.wat"), versioned(100, 0)).unwrap();
        let data = match layout {
            Layout::Apart => dir.path().join("data"),
            Layout::DataInApp => app.join("data"),
            Layout::AppInData => dir.path().to_path_buf(),
        };
        let config = NodeConfig {
            data_dir: Some(data),
            extensions: ExtensionsConfig {
                roots: vec![dir.path().join("extensions")],
                rustc: None,
                javascript: None,
                python: None,
            },
            ..NodeConfig::default()
        };
        let node = Node::new(config).unwrap();
        assert_eq!(node.load_app(&app).status(), Status::Ok);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut watched = Watched { dir, node, seen, watch: None };
        watched.start();
        watched
    }

    fn start(&mut self) {
        let seen = Arc::clone(&self.seen);
        let watch = self.node.watch(WatchConfig { debounce: DEBOUNCE }, move |event| {
            seen.lock().unwrap().push(describe(event));
        });
        // The directories are watched once `watch` returns.
        self.watch = Some(watch.unwrap());
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join("demo").join(file)
    }

    fn get(&self, module: &str) -> String {
        self.node.call(module, "get", "null").unwrap()
    }

    /// Waits until `check` holds (at most 5 s).
    fn eventually(&self, what: &str, check: impl Fn() -> bool) {
        let started = Instant::now();
        while !check() {
            assert!(started.elapsed() < Duration::from_secs(5), "{what}; the watcher said {:?}", self.seen());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the watcher reported, after it has been quiet a while.
    fn settled(&self) -> Vec<String> {
        std::thread::sleep(DEBOUNCE * 6);
        self.seen()
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn forget(&self) {
        self.seen.lock().unwrap().clear();
    }
}

fn describe(event: &WatchEvent) -> String {
    match event {
        WatchEvent::Reloaded { target, request_id, result, .. } => {
            assert!(request_id.starts_with("watch-"), "{request_id}");
            format!("reload {}: {}", target.describe(), result.status().as_str())
        }
        WatchEvent::NotRun { target, error, .. } => format!("not run {}: {error}", target.describe()),
        WatchEvent::Missing { path, problem, .. } => {
            format!("missing {}: {problem}", path.file_name().unwrap().to_string_lossy())
        }
        WatchEvent::Unwatchable { dir, error } => format!("unwatchable {}: {error}", dir.display()),
    }
}

#[test]
fn a_saved_module_reloads_that_module_once_however_the_editor_saves() {
    let w = Watched::new("", Layout::AppInData);
    let clock = w.path("clock.wat");

    // A plain write.
    std::fs::write(&clock, versioned(2, 0)).unwrap();
    w.eventually("v2 serves", || w.get("clock") == r#"{"v":2}"#);
    assert_eq!(w.settled(), ["reload module clock: ok"]);
    assert_eq!(w.get("front"), r#"{"v":100}"#, "only the module reloads");
    w.forget();

    // Truncate, then write in two pieces with a pause (as some editors do).
    let text = versioned(3, 0);
    let (head, tail) = text.split_at(text.len() / 2);
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&clock).unwrap();
        file.write_all(head.as_bytes()).unwrap();
        file.flush().unwrap();
        std::thread::sleep(DEBOUNCE / 5);
        file.write_all(tail.as_bytes()).unwrap();
    }
    w.eventually("v3 serves", || w.get("clock") == r#"{"v":3}"#);
    assert_eq!(w.settled(), ["reload module clock: ok"], "one reload, not one per write");
    w.forget();

    // A temporary file renamed over the original (vim, VS Code, IntelliJ).
    let temp = w.path(".clock.wat.swp");
    std::fs::write(&temp, versioned(4, 0)).unwrap();
    std::fs::rename(&temp, &clock).unwrap();
    w.eventually("v4 serves", || w.get("clock") == r#"{"v":4}"#);
    assert_eq!(w.settled(), ["reload module clock: ok"]);
    w.forget();

    // A touch, and the same bytes written again: not changes.
    let file = std::fs::File::options().write(true).open(&clock).unwrap();
    file.set_modified(std::time::SystemTime::now()).unwrap();
    drop(file);
    std::fs::write(&clock, versioned(4, 0)).unwrap();
    assert_eq!(w.settled(), Vec::<String>::new());
    let ids: Vec<String> = w.node.history(Some("clock"), 10).iter().map(|e| e.request_id.clone()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| id.starts_with("watch-")), "{ids:?}");
}

#[test]
fn a_changed_manifest_reloads_the_app() {
    let w = Watched::new("", Layout::Apart);
    std::fs::write(w.path("clock.wat"), versioned(7, 0)).unwrap();
    std::fs::write(w.path("other.wat"), versioned(8, 0)).unwrap();
    let manifest = std::fs::read_to_string(w.path("zest.toml")).unwrap();
    // Within one debounce: the app's reload covers the module's.
    std::fs::write(w.path("zest.toml"), manifest.replace("front.wat", "other.wat")).unwrap();
    w.eventually("the app reloaded", || w.get("front") == r#"{"v":8}"#);
    assert_eq!(w.settled(), ["reload app demo: ok"]);
    assert_eq!(w.get("clock"), r#"{"v":7}"#);

    // The new module file is watched from then on.
    w.forget();
    std::fs::write(w.path("other.wat"), versioned(9, 0)).unwrap();
    w.eventually("front follows other.wat", || w.get("front") == r#"{"v":9}"#);
    assert_eq!(w.settled(), ["reload module front: ok"]);
}

#[test]
fn a_file_gone_is_reported_the_old_code_serves_and_its_return_reloads() {
    let w = Watched::new("", Layout::Apart);
    let clock = w.path("clock.wat");
    std::fs::remove_file(&clock).unwrap();
    w.eventually("reported", || !w.seen().is_empty());
    assert_eq!(w.settled(), ["missing clock.wat: was deleted or renamed away"]);
    assert_eq!(w.get("clock"), r#"{"v":1}"#);
    w.forget();

    std::fs::create_dir(&clock).unwrap();
    assert_eq!(w.settled(), ["missing clock.wat: is now a directory"]);
    assert_eq!(w.get("clock"), r#"{"v":1}"#);
    w.forget();

    std::fs::remove_dir(&clock).unwrap();
    std::fs::write(&clock, versioned(5, 0)).unwrap();
    w.eventually("back and reloaded", || w.get("clock") == r#"{"v":5}"#);
    let seen = w.settled();
    assert_eq!(seen.last().map(String::as_str), Some("reload module clock: ok"), "{seen:?}");
    assert_eq!(seen.iter().filter(|s| s.starts_with("reload")).count(), 1, "{seen:?}");
}

#[test]
fn a_watched_source_runs_the_build_once_and_its_output_reloads_nothing_more() {
    // The build writes the module file the watcher also watches; the node's
    // data directory is inside the app directory, under the glob too.
    let w = Watched::new("build = \"cp src/clock.wat clock.wat\"\nwatch = [\"**/*\"]", Layout::DataInApp);
    std::fs::write(w.path("src/clock.wat"), versioned(6, 0)).unwrap();
    w.eventually("the build's output serves", || w.get("clock") == r#"{"v":6}"#);
    assert_eq!(w.settled(), ["reload app demo (with its build): ok"]);

    // A broken source: the build runs, the old code keeps serving, and the
    // result says why.
    w.forget();
    std::fs::write(w.path("src/clock.wat"), "(module (func $oops").unwrap();
    w.eventually("reported", || !w.seen().is_empty());
    assert_eq!(w.settled(), ["reload app demo (with its build): error"]);
    assert_eq!(w.get("clock"), r#"{"v":6}"#);
}

#[test]
fn an_extension_and_a_loose_module_reload_by_themselves_and_the_watch_ends_with_its_handle() {
    let mut w = Watched::new("", Layout::Apart);
    let extension = w.dir.path().join("extensions").join("hello.wat");
    std::fs::write(&extension, versioned(1, 0)).unwrap();
    let loaded = w.node.reload(&zest_runtime::ReloadRequest::new(Scope::Extension(extension.clone()))).unwrap();
    assert_eq!(loaded.status(), Status::Ok);
    let loose = w.dir.path().join("loose.wat");
    std::fs::write(&loose, versioned(1, 0)).unwrap();
    assert_eq!(w.node.load_module("loose", &loose, &ReloadOptions::default()).status(), Status::Ok);
    // The watcher reads what is loaded again every second.
    std::thread::sleep(Duration::from_millis(1_200));

    std::fs::write(&extension, versioned(2, 0)).unwrap();
    std::fs::write(&loose, versioned(2, 0)).unwrap();
    w.eventually("both reloaded", || w.get("hello") == r#"{"v":2}"# && w.get("loose") == r#"{"v":2}"#);
    let mut seen = w.settled();
    seen.sort();
    assert_eq!(seen, [format!("reload extension {}: ok", extension.display()), "reload module loose: ok".into()]);

    w.watch = None;
    w.forget();
    std::fs::write(&loose, versioned(3, 0)).unwrap();
    assert_eq!(w.settled(), Vec::<String>::new(), "a dropped watch reloads nothing");
    assert_eq!(w.get("loose"), r#"{"v":2}"#);
}
