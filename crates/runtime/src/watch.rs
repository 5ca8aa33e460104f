//! Watch mode (CONTRACT.md §12): save a file, and the node reloads the
//! narrowest scope that owns it, by itself.
//!
//! ```text
//! notify (inotify) ──events──▶ watch thread ──after debounce──▶ Node::reload
//!                                  │   ▲                           │
//!                                  │   └── what to watch: the node's apps,
//!                                  │       extensions and loose modules,
//!                                  │       read again every second and after
//!                                  │       each reload
//!                                  └── reports ──▶ the caller's handler
//! ```
//!
//! - **What is watched**: each loaded app's `zest.toml` (→ the app) and module
//!   files (→ that module), each app's `watch` globs (→ the app with
//!   `compile: true`), each recorded extension's source (→ the extension; for a
//!   `.js` or `.py` file also its `NAME.wit`, whether or not it exists yet), and
//!   each module loaded alone from a file (→ that module). Directories are
//!   watched, not files, so an editor that writes a temporary file and renames
//!   it over the original is seen.
//! - **One reload per save**: events for a target wait until it has been quiet
//!   for the debounce; then the reload runs only if a file's *content* differs
//!   from what the watcher last saw (sha256). A truncate-then-write, a
//!   temporary file renamed into place, a `touch`, or a module file that a
//!   watched build just wrote (after its reload loaded it) therefore make one
//!   reload or none. A save made while a reload runs (a long build) is seen
//!   after it: the baseline is what the files held when it started, except
//!   the module files an app's build wrote.
//! - **Files the node writes itself** (its data directory) are never looked at.
//! - A watched file that is deleted, renamed away or replaced by a directory is
//!   reported; the old code keeps serving, and the next write of the file
//!   reloads as usual.
//! - Reloads go through the lock (waiting for it) and telemetry like any
//!   other, with request ids `watch-N`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use crate::node::Node;
use crate::reload::{ReloadOptions, ReloadRequest, ReloadResult, Scope};
use crate::state::Shared;

/// How long a reload started by the watcher waits for the reload lock.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// How often the watcher reads again what the node has loaded.
const REFRESH: Duration = Duration::from_secs(1);

/// Watch mode's settings (`[watch]` of the node's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// Writes closer together than this make one reload.
    pub debounce: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig { debounce: Duration::from_millis(200) }
    }
}

/// What the watcher reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchTarget {
    Module(String),
    /// `compile`: a watched source changed, so the app's build runs first.
    App {
        name: String,
        compile: bool,
    },
    Extension(PathBuf),
}

impl WatchTarget {
    fn scope(&self) -> Scope {
        match self {
            WatchTarget::Module(name) => Scope::Module(name.clone()),
            WatchTarget::App { name, .. } => Scope::App(name.clone()),
            WatchTarget::Extension(path) => Scope::Extension(path.clone()),
        }
    }

    /// `module clock`, `app demo`, `extension /x/hello.rs`: as the CLI says it.
    pub fn describe(&self) -> String {
        match self {
            WatchTarget::Module(name) => format!("module {name}"),
            WatchTarget::App { name, compile: false } => format!("app {name}"),
            WatchTarget::App { name, compile: true } => format!("app {name} (with its build)"),
            WatchTarget::Extension(path) => format!("extension {}", path.display()),
        }
    }
}

/// What the watcher did, for its handler.
#[derive(Debug)]
pub enum WatchEvent {
    /// Files changed and the target was reloaded (whatever the result says).
    Reloaded { changed: Vec<PathBuf>, target: WatchTarget, request_id: String, result: Box<ReloadResult> },
    /// The reload could not run at all (the lock was not had in time).
    NotRun { changed: Vec<PathBuf>, target: WatchTarget, error: String },
    /// A watched file is gone (or is no longer a file); the target keeps
    /// serving what it had.
    Missing { path: PathBuf, target: WatchTarget, problem: String },
    /// A directory could not be watched (it will be tried again).
    Unwatchable { dir: PathBuf, error: String },
}

/// A running watcher; dropping it stops it.
#[derive(Debug)]
pub struct Watch {
    stop: Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.stop.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

enum Message {
    Fs(notify::Result<notify::Event>),
    Stop,
}

impl Node {
    /// Watch mode (CONTRACT.md §12, `watch.rs`): reloads by itself what a
    /// changed file belongs to; `report` hears of each automatic reload and
    /// each problem, on the watch thread. Stops when the [`Watch`] is dropped
    /// (or the node goes away).
    pub fn watch(&self, config: WatchConfig, report: impl Fn(&WatchEvent) + Send + 'static) -> std::io::Result<Watch> {
        start(Arc::downgrade(self.shared()), self.config().data_dir.as_deref(), config, report)
    }
}

/// Starts watching what the node has loaded.
fn start(
    node: Weak<Shared>,
    data_dir: Option<&Path>,
    config: WatchConfig,
    report: impl Fn(&WatchEvent) + Send + 'static,
) -> std::io::Result<Watch> {
    let (send, receive) = mpsc::channel();
    let events = send.clone();
    let watcher = notify::recommended_watcher(move |event| {
        let _ = events.send(Message::Fs(event));
    })
    .map_err(|err| std::io::Error::other(format!("cannot start watching files: {err}")))?;
    let data_dir = data_dir.map(absolute);
    let mut state = Watching {
        node,
        config,
        watcher,
        watched: HashMap::new(),
        plan: Plan::default(),
        seen: HashMap::new(),
        pending: BTreeMap::new(),
        last_event: Instant::now(),
        missing: HashMap::new(),
        data_dir,
        report: Box::new(report),
    };
    // Watching before this returns: a file written just after is seen.
    state.refresh();
    let thread = std::thread::Builder::new().name("zest-watch".into()).spawn(move || state.run(receive))?;
    Ok(Watch { stop: send, thread: Some(thread) })
}

/// What to watch, worked out from what the node has loaded.
#[derive(Debug, Default)]
struct Plan {
    /// A watched file → what it reloads.
    files: HashMap<PathBuf, WatchTarget>,
    /// An app's module → the app.
    owners: HashMap<String, String>,
    /// Every loaded app's directory.
    app_dirs: Vec<PathBuf>,
    /// Each app's watch globs: (app, its directory, the globs).
    globs: Vec<(String, PathBuf, GlobSet)>,
    /// Directories to watch, and how.
    dirs: BTreeMap<PathBuf, RecursiveMode>,
}

/// The watcher's state, on its own thread.
struct Watching {
    /// Weak: a watch does not keep its node alive; it ends with it.
    node: Weak<Shared>,
    config: WatchConfig,
    watcher: RecommendedWatcher,
    /// Directories watched now: `true` when watching succeeded.
    watched: HashMap<PathBuf, (RecursiveMode, bool)>,
    plan: Plan,
    /// Each file's content as last seen.
    seen: HashMap<PathBuf, Content>,
    /// Targets with changes waiting for quiet, and the paths that changed.
    pending: BTreeMap<WatchTarget, Vec<PathBuf>>,
    /// When the last event of a pending change came.
    last_event: Instant,
    /// Files reported missing and why, so each problem is reported once.
    missing: HashMap<PathBuf, String>,
    data_dir: Option<PathBuf>,
    report: Box<dyn Fn(&WatchEvent) + Send>,
}

impl Watching {
    /// The node, while it lives.
    fn node(&self) -> Option<Node> {
        self.node.upgrade().map(|shared| Node::from_shared(&shared))
    }

    fn run(mut self, messages: Receiver<Message>) {
        let mut next_refresh = Instant::now() + REFRESH;
        loop {
            let now = Instant::now();
            let due = (!self.pending.is_empty()).then(|| self.last_event + self.config.debounce);
            let wake = due.map_or(next_refresh, |due| due.min(next_refresh));
            match messages.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Message::Fs(Ok(event))) => self.note(event),
                Ok(Message::Fs(Err(err))) => tracing::warn!(%err, "watch: the file watcher reported an error"),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_refresh {
                if !self.refresh() {
                    return;
                }
                next_refresh = Instant::now() + REFRESH;
            }
            let Some(node) = self.node() else { return };
            self.fire_due(&node);
        }
    }

    /// Reads again what the node has loaded and watches what that needs;
    /// false when the node is gone.
    fn refresh(&mut self) -> bool {
        let Some(node) = self.node() else { return false };
        self.plan = plan(&node);
        for path in self.plan.files.keys() {
            if !self.seen.contains_key(path) {
                self.seen.insert(path.clone(), Content::of(path));
            }
        }
        let wanted = self.plan.dirs.clone();
        self.watched.retain(|dir, (mode, ok)| {
            let keep = wanted.get(dir) == Some(mode);
            if !keep && *ok {
                let _ = self.watcher.unwatch(dir);
            }
            keep
        });
        for (dir, mode) in wanted {
            if self.watched.get(&dir).is_some_and(|(_, ok)| *ok) {
                continue;
            }
            let ok = match self.watcher.watch(&dir, mode) {
                Ok(()) => true,
                Err(err) => {
                    // Reported once; tried again at every refresh.
                    if !self.watched.contains_key(&dir) {
                        (self.report)(&WatchEvent::Unwatchable { dir: dir.clone(), error: err.to_string() });
                    }
                    false
                }
            };
            self.watched.insert(dir, (mode, ok));
        }
        true
    }

    /// Files an event touched, matched to targets.
    fn note(&mut self, event: notify::Event) {
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let now = Instant::now();
        for path in event.paths {
            if self.written_by_the_node(&path) {
                continue;
            }
            if matches!(event.kind, EventKind::Remove(_)) && self.watched.contains_key(&path) {
                // A watched directory went away: watch it again when it is back.
                if let Some((_, ok)) = self.watched.get_mut(&path) {
                    *ok = false;
                }
            }
            for target in self.targets_of(&path) {
                let paths = self.pending.entry(target).or_default();
                if !paths.contains(&path) {
                    paths.push(path.clone());
                }
                self.last_event = now;
            }
        }
    }

    /// Whether `path` is in the node's data directory (its builds, caches,
    /// history) — but not in an app that lives there (`zest serve` keeps its
    /// bundled demo in `<data_dir>/demo`).
    fn written_by_the_node(&self, path: &Path) -> bool {
        let Some(data) = &self.data_dir else { return false };
        path.starts_with(data)
            && !self.plan.app_dirs.iter().any(|app| app.starts_with(data) && app != data && path.starts_with(app))
    }

    fn targets_of(&self, path: &Path) -> Vec<WatchTarget> {
        let mut targets: Vec<WatchTarget> = self.plan.files.get(path).cloned().into_iter().collect();
        for (app, dir, globs) in &self.plan.globs {
            if path.strip_prefix(dir).is_ok_and(|relative| globs.is_match(relative)) {
                targets.push(WatchTarget::App { name: app.clone(), compile: true });
            }
        }
        targets
    }

    /// Once every change has been quiet for the debounce, reloads each target
    /// whose files really changed: a save of several files at once (a
    /// checkout, a formatter) is one round.
    fn fire_due(&mut self, node: &Node) {
        if self.pending.is_empty() || Instant::now() < self.last_event + self.config.debounce {
            return;
        }
        let mut batch: Vec<(WatchTarget, Vec<PathBuf>)> = std::mem::take(&mut self.pending).into_iter().collect();
        // An app's reload covers its modules, and one with its build covers
        // one without.
        let compiled: HashSet<String> = batch
            .iter()
            .filter_map(|(t, _)| match t {
                WatchTarget::App { name, compile: true } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let apps: HashSet<String> = batch
            .iter()
            .filter_map(|(t, _)| match t {
                WatchTarget::App { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let owner = |module: &str| self.plan.owners.get(module).cloned();
        batch.retain(|(target, _)| match target {
            WatchTarget::Module(module) => owner(module).is_none_or(|app| !apps.contains(&app)),
            WatchTarget::App { name, compile: false } => !compiled.contains(name),
            _ => true,
        });
        for (target, paths) in batch {
            self.fire(node, target, paths);
        }
    }

    fn fire(&mut self, node: &Node, target: WatchTarget, paths: Vec<PathBuf>) {
        let mut changed = Vec::new();
        for path in paths {
            let now = Content::of(&path);
            // A glob's file never seen before was absent.
            if self.seen.insert(path.clone(), now).unwrap_or(Content::Absent) != now {
                changed.push(path);
            }
        }
        if changed.is_empty() {
            return;
        }
        // A file the target needs that is gone: say so, keep serving.
        if !matches!(target, WatchTarget::App { compile: true, .. }) {
            for path in &changed {
                if let Some(problem) = not_a_file(path) {
                    if self.missing.get(path) != Some(&problem) {
                        self.missing.insert(path.clone(), problem.clone());
                        let event = WatchEvent::Missing { path: path.clone(), target: target.clone(), problem };
                        (self.report)(&event);
                    }
                    return;
                }
                self.missing.remove(path);
            }
        }
        let request_id = format!("watch-{}", node.next_request_id().trim_start_matches('r'));
        let options = ReloadOptions {
            compile: matches!(target, WatchTarget::App { compile: true, .. }),
            lock_timeout: LOCK_WAIT,
            ..ReloadOptions::default()
        };
        let request = ReloadRequest { scope: target.scope(), options, request_id: Some(request_id.clone()) };
        // What the target's files held when the reload started: a save made
        // while it runs (a long build) is a change still to reload. An app's
        // build takes what it wrote as the baseline instead (below), so its
        // files are not read here.
        let built = matches!(target, WatchTarget::App { compile: true, .. });
        let before: HashMap<PathBuf, Content> = if built {
            HashMap::new()
        } else {
            self.plan.files_of(&target).map(|path| (path.clone(), Content::of(path))).collect()
        };
        let event = match node.reload(&request) {
            Ok(result) => {
                WatchEvent::Reloaded { changed, target: target.clone(), request_id, result: Box::new(result) }
            }
            Err(err) => WatchEvent::NotRun { changed, target: target.clone(), error: err.to_string() },
        };
        // The new baseline: for an app's build, what the build wrote (the
        // module files), so its own writes trigger nothing; for any other
        // reload, which writes nothing, what the files held when it started —
        // never a save that came during it, or the node would keep serving
        // the earlier save. (A reload that read the later save anyway makes
        // one more reload, which finds its bytes unchanged.)
        self.plan = plan(node);
        let owned: Vec<PathBuf> = self.plan.files_of(&target).cloned().collect();
        for path in owned {
            let baseline = match before.get(&path) {
                Some(content) => *content,
                None => Content::of(&path),
            };
            self.seen.insert(path, baseline);
        }
        (self.report)(&event);
    }
}

impl Plan {
    /// The watched files a reload of `target` may have read or a build it ran
    /// may have written: for an app, its manifest and every module file.
    fn files_of<'a>(&'a self, target: &'a WatchTarget) -> impl Iterator<Item = &'a PathBuf> {
        self.files.iter().filter_map(move |(path, owner)| {
            let same = match (target, owner) {
                (WatchTarget::App { name, .. }, WatchTarget::App { name: app, .. }) => name == app,
                (WatchTarget::App { name, .. }, WatchTarget::Module(module)) => {
                    self.owners.get(module).is_some_and(|app| app == name)
                }
                _ => target == owner,
            };
            same.then_some(path)
        })
    }
}

/// What to watch for the node as it is now.
fn plan(node: &Node) -> Plan {
    let mut plan = Plan::default();
    let status = node.status();
    let watch_dir = |plan: &mut Plan, dir: PathBuf, mode: RecursiveMode| {
        let entry = plan.dirs.entry(dir).or_insert(mode);
        if mode == RecursiveMode::Recursive {
            *entry = mode;
        }
    };
    for app in &status.apps {
        let Some(manifest) = node.app_manifest(&app.name) else { continue };
        let dir = absolute(&manifest.dir);
        plan.app_dirs.push(dir.clone());
        let file = absolute(&manifest.file);
        watch_dir(&mut plan, parent(&file), RecursiveMode::NonRecursive);
        plan.files.insert(file, WatchTarget::App { name: app.name.clone(), compile: false });
        for module in &manifest.modules {
            plan.owners.insert(module.name.clone(), app.name.clone());
            let path = absolute(&module.path);
            watch_dir(&mut plan, parent(&path), RecursiveMode::NonRecursive);
            plan.files.insert(path, WatchTarget::Module(module.name.clone()));
        }
        if !manifest.watch.is_empty() {
            let mut globs = GlobSetBuilder::new();
            for pattern in &manifest.watch {
                // Checked when the manifest loaded.
                if let Ok(glob) = Glob::new(pattern) {
                    globs.add(glob);
                }
                watch_dir(&mut plan, dir.join(literal_prefix(pattern)), RecursiveMode::Recursive);
            }
            if let Ok(globs) = globs.build() {
                plan.globs.push((app.name.clone(), dir, globs));
            }
        }
    }
    let extensions: HashSet<&str> = status.extensions.iter().map(|e| e.record.name.as_str()).collect();
    for extension in &status.extensions {
        let path = absolute(&extension.record.path);
        watch_dir(&mut plan, parent(&path), RecursiveMode::NonRecursive);
        // A `.js` or `.py` file's `NAME.wit` is part of its build.
        if extension.record.format.language().is_some() {
            plan.files.insert(path.with_extension("wit"), WatchTarget::Extension(path.clone()));
        }
        plan.files.insert(path.clone(), WatchTarget::Extension(path));
    }
    for module in status.modules.iter().filter(|m| m.app.is_none() && !extensions.contains(m.name.as_str())) {
        if module.current.source.as_os_str().is_empty() {
            continue;
        }
        let path = absolute(&module.current.source);
        watch_dir(&mut plan, parent(&path), RecursiveMode::NonRecursive);
        plan.files.entry(path).or_insert_with(|| WatchTarget::Module(module.name.clone()));
    }
    plan
}

/// The directories of a glob before its first wildcard: `src/**/*.rs` →
/// `src`; a glob without one names a file, watched from its directory.
fn literal_prefix(pattern: &str) -> PathBuf {
    let components: Vec<_> = Path::new(pattern).components().collect();
    let literal = components.iter().take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[', '{']));
    let mut prefix: PathBuf = literal.clone().collect();
    if literal.count() == components.len() {
        prefix.pop();
    }
    prefix
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"))
}

/// `path` made absolute against the working directory (links kept: events
/// name paths as they were watched).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What a watched path holds, as far as a change is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Absent,
    /// A directory, or anything else that is not a regular file.
    NotAFile,
    /// A regular file: the sha256 of its bytes.
    File([u8; 32]),
}

impl Content {
    fn of(path: &Path) -> Content {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => match std::fs::read(path) {
                Ok(bytes) => Content::File(Sha256::digest(&bytes).into()),
                Err(_) => Content::NotAFile,
            },
            Ok(_) => Content::NotAFile,
            Err(_) => Content::Absent,
        }
    }
}

/// Why `path` cannot be reloaded from, if it cannot.
fn not_a_file(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => None,
        Ok(meta) if meta.is_dir() => Some("is now a directory".into()),
        Ok(_) => Some("is not a regular file".into()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Some("was deleted or renamed away".into()),
        Err(err) => Some(format!("cannot be read: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_globs_literal_prefix_is_where_it_is_watched() {
        assert_eq!(literal_prefix("src/**/*.rs"), PathBuf::from("src"));
        assert_eq!(literal_prefix("crates/a/src/*.rs"), PathBuf::from("crates/a/src"));
        assert_eq!(literal_prefix("*.rs"), PathBuf::new());
        assert_eq!(literal_prefix("src/lib.rs"), PathBuf::from("src"));
        assert_eq!(literal_prefix("{a,b}/x.rs"), PathBuf::new());
    }
}
