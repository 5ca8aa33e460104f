//! The history of what served each module (CONTRACT.md §11): every commit that
//! changed a module's build — a reload, a canary started, a rollback, a
//! promotion, a revert, an unload — with the builds before and after and the
//! request that made it. Not the loads a node makes when it starts. An unload's
//! entry has no build after (`to` is `None`): the module left the node.
//!
//! Kept in `<data_dir>/history.log`, one JSON object a line, appended. Each
//! entry is written to the file (one `write`) before the request that made it
//! answers, so a process killed at any moment after that keeps it; the file is
//! fsynced just after, off the request's path, against power loss. Reading it
//! back, a last line cut short (a machine that lost power mid-write) or a line
//! that is not an entry is skipped and reported, never fatal.
//!
//! Entries are persistence, not wire: they derive serde for this file only; the
//! control plane has its own JSON of them.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::background::Background;

/// What a history entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Reload,
    Canary,
    Rollback,
    Promote,
    Revert,
    /// The module left the node (`system.unload`, or an app reload whose
    /// manifest no longer declares it): `to` is `None`.
    Unload,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reload => "reload",
            Action::Canary => "canary",
            Action::Rollback => "rollback",
            Action::Promote => "promote",
            Action::Revert => "revert",
            Action::Unload => "unload",
        }
    }
}

/// A build as history names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildId {
    pub vsn: String,
    /// Hex.
    pub sha256: String,
    /// Where it was read (kept so that a rollback loads it under its own name).
    pub source: PathBuf,
}

/// One committed change of a module's build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Increases with every entry of this node.
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub module: String,
    pub action: Action,
    /// `None` for a module that had no build before.
    pub from: Option<BuildId>,
    /// `None` for an unload: no build serves the module after it.
    pub to: Option<BuildId>,
    pub request_id: String,
}

impl HistoryEntry {
    pub fn at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.at_ms)
    }
}

/// An entry before it has an id and a time.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) module: String,
    pub(crate) action: Action,
    pub(crate) from: Option<BuildId>,
    pub(crate) to: Option<BuildId>,
    pub(crate) request_id: String,
}

#[derive(Debug)]
pub(crate) struct History {
    /// `None`: kept in memory only (a node without a data directory).
    file: Option<PathBuf>,
    state: Mutex<State>,
    /// Past this many entries the oldest are compacted away ([`compact`]).
    limit: Limit,
}

/// How long the history grows: past `most` entries, it keeps the newest
/// `keep`, and every module's newest `per_module` whatever their age (so a
/// module reloaded once long ago can still be rolled back).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub(crate) most: usize,
    pub(crate) keep: usize,
    pub(crate) per_module: usize,
}

impl Default for Limit {
    fn default() -> Self {
        // Memory and the log stay small (about 200 bytes an entry in memory):
        // at a reload a minute, 1,000 entries are most of a day.
        Limit { most: 2_000, keep: 1_000, per_module: 16 }
    }
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Kept>,
    /// One copy of each module name, vsn, build hash and path the entries
    /// name: a reload loop names the same few builds over and over.
    names: Names,
    /// Open for appending once the first entry is written.
    log: Option<Arc<File>>,
}

/// An entry as memory keeps it: about a quarter of a [`HistoryEntry`]'s
/// size, its strings shared with every other entry naming them (a soak's
/// 9,000 entries held 10 MiB as `HistoryEntry` values).
#[derive(Debug)]
struct Kept {
    id: u64,
    at_ms: u64,
    module: Arc<str>,
    action: Action,
    from: Option<KeptBuild>,
    to: Option<KeptBuild>,
    request_id: Box<str>,
}

#[derive(Debug)]
struct KeptBuild {
    vsn: Arc<str>,
    sha256: Arc<str>,
    source: Arc<Path>,
}

#[derive(Debug, Default)]
struct Names {
    strings: HashSet<Arc<str>>,
    paths: HashSet<Arc<Path>>,
}

impl Names {
    fn string(&mut self, text: &str) -> Arc<str> {
        if let Some(known) = self.strings.get(text) {
            return Arc::clone(known);
        }
        let new: Arc<str> = Arc::from(text);
        self.strings.insert(Arc::clone(&new));
        new
    }

    fn path(&mut self, path: &Path) -> Arc<Path> {
        if let Some(known) = self.paths.get(path) {
            return Arc::clone(known);
        }
        let new: Arc<Path> = Arc::from(path);
        self.paths.insert(Arc::clone(&new));
        new
    }

    /// Forgets what no entry names any more.
    fn prune(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.paths.retain(|p| Arc::strong_count(p) > 1);
    }

    fn keep(&mut self, entry: &HistoryEntry) -> Kept {
        Kept {
            id: entry.id,
            at_ms: entry.at_ms,
            module: self.string(&entry.module),
            action: entry.action,
            from: entry.from.as_ref().map(|build| self.keep_build(build)),
            to: entry.to.as_ref().map(|build| self.keep_build(build)),
            request_id: entry.request_id.as_str().into(),
        }
    }

    fn keep_build(&mut self, build: &BuildId) -> KeptBuild {
        KeptBuild { vsn: self.string(&build.vsn), sha256: self.string(&build.sha256), source: self.path(&build.source) }
    }
}

impl Kept {
    fn entry(&self) -> HistoryEntry {
        HistoryEntry {
            id: self.id,
            at_ms: self.at_ms,
            module: self.module.to_string(),
            action: self.action,
            from: self.from.as_ref().map(KeptBuild::build),
            to: self.to.as_ref().map(KeptBuild::build),
            request_id: self.request_id.to_string(),
        }
    }
}

impl KeptBuild {
    fn build(&self) -> BuildId {
        BuildId { vsn: self.vsn.to_string(), sha256: self.sha256.to_string(), source: self.source.to_path_buf() }
    }
}

/// What reading the log back found.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) problems: Vec<String>,
}

impl History {
    /// Reads `<data_dir>/history.log` back.
    pub(crate) fn open(data_dir: Option<&Path>) -> (History, Recovered) {
        let file = data_dir.map(|dir| dir.join("history.log"));
        let mut recovered = Recovered::default();
        let mut names = Names::default();
        let mut entries = Vec::new();
        if let Some(path) = &file {
            match std::fs::read(path) {
                Ok(bytes) => {
                    entries = parse(&bytes, path, &mut recovered.problems).iter().map(|e| names.keep(e)).collect()
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => recovered.problems.push(format!("cannot read {}: {err}", path.display())),
            }
        }
        let state = State { entries, names, log: None };
        (History { file, state: Mutex::new(state), limit: Limit::default() }, recovered)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `changes` as entries, writes them to the log, and has
    /// `background` fsync it. Returns the entries. A failure to write is
    /// logged: the change happened, its record would not survive a restart.
    pub(crate) fn record(&self, changes: Vec<Change>, background: &Background) -> Vec<HistoryEntry> {
        if changes.is_empty() {
            return Vec::new();
        }
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut state = self.lock();
        let first = state.entries.last().map_or(1, |last| last.id + 1);
        let mut added = Vec::with_capacity(changes.len());
        for (id, change) in (first..).zip(changes) {
            let entry = HistoryEntry {
                id,
                at_ms,
                module: change.module,
                action: change.action,
                from: change.from,
                to: change.to,
                request_id: change.request_id,
            };
            added.push(entry);
        }
        if state.entries.len() + added.len() > self.limit.most {
            if let Err(err) = self.compact(&mut state) {
                tracing::error!(%err, "cannot compact the history; it keeps growing");
            }
        }
        let kept: Vec<Kept> = added.iter().map(|entry| state.names.keep(entry)).collect();
        state.entries.extend(kept);
        if let Some(path) = self.file.clone() {
            let mut text = String::new();
            for entry in &added {
                text.push_str(&serde_json::to_string(entry).expect("entries serialise"));
                text.push('\n');
            }
            match append(&mut state, &path, text.as_bytes()) {
                Ok(log) => background.run(move || {
                    if let Err(err) = log.sync_data() {
                        tracing::warn!(path = %path.display(), %err, "cannot fsync the history");
                    }
                }),
                Err(err) => tracing::error!(path = %path.display(), %err, "cannot write the history"),
            }
        }
        added
    }

    /// Drops the oldest entries past the limit and, with a file, rewrites it
    /// with the rest: to a temporary file, fsynced, renamed over the log, so a
    /// crash leaves the old log or the new one, never a mix. Runs before the
    /// entries being recorded join, which are then appended as usual.
    fn compact(&self, state: &mut State) -> std::io::Result<()> {
        let Limit { keep, per_module, .. } = self.limit;
        let mut per: HashMap<Arc<str>, usize> = HashMap::new();
        let total = state.entries.len();
        let mut index = total;
        let mut kept = vec![false; total];
        for entry in state.entries.iter().rev() {
            index -= 1;
            let seen = per.entry(entry.module.clone()).or_default();
            *seen += 1;
            kept[index] = total - index <= keep || *seen <= per_module;
        }
        let mut flags = kept.into_iter();
        state.entries.retain(|_| flags.next().unwrap_or(true));
        state.entries.shrink_to_fit();
        state.names.prune();
        let Some(path) = &self.file else { return Ok(()) };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        let mut text = String::new();
        for entry in &state.entries {
            text.push_str(&serde_json::to_string(&entry.entry()).expect("entries serialise"));
            text.push('\n');
        }
        tmp.write_all(text.as_bytes())?;
        tmp.as_file().sync_data()?;
        tmp.persist(path).map_err(|err| err.error)?;
        File::open(dir)?.sync_all()?;
        state.log = None;
        Ok(())
    }

    /// Entries, newest first: of `module` only when given, at most `limit`.
    pub fn list(&self, module: Option<&str>, limit: usize) -> Vec<HistoryEntry> {
        let state = self.lock();
        state
            .entries
            .iter()
            .rev()
            .filter(|e| module.is_none_or(|m| &*e.module == m))
            .take(limit)
            .map(Kept::entry)
            .collect()
    }

    /// Hex sha256 of the newest `per_module` distinct builds (`to` and
    /// `from`) each module's entries name.
    pub(crate) fn recent_builds(&self, per_module: usize) -> HashSet<String> {
        let state = self.lock();
        let mut seen: HashMap<&str, Vec<&str>> = HashMap::new();
        for entry in state.entries.iter().rev() {
            let builds = seen.entry(&entry.module).or_default();
            for build in entry.to.iter().chain(&entry.from) {
                if builds.len() < per_module && !builds.contains(&&*build.sha256) {
                    builds.push(&build.sha256);
                }
            }
        }
        seen.into_values().flatten().map(str::to_string).collect()
    }

    pub(crate) fn get(&self, id: u64) -> Option<HistoryEntry> {
        self.lock().entries.iter().find(|entry| entry.id == id).map(Kept::entry)
    }

    /// The newest id among the entries of the request that recorded entry
    /// `id` (one request records an entry per module it changed); `id` when
    /// there is no such entry.
    pub(crate) fn last_of_request(&self, id: u64) -> u64 {
        let state = self.lock();
        let Some(request) = state.entries.iter().find(|entry| entry.id == id).map(|entry| entry.request_id.clone())
        else {
            return id;
        };
        state.entries.iter().filter(|entry| entry.request_id == request).map(|entry| entry.id).max().unwrap_or(id)
    }

    /// The newest entry of `module`, at most `up_to` when given.
    pub(crate) fn latest(&self, module: &str, up_to: Option<u64>) -> Option<HistoryEntry> {
        let state = self.lock();
        state.entries.iter().rev().find(|e| &*e.module == module && up_to.is_none_or(|id| e.id <= id)).map(Kept::entry)
    }
}

/// Appends `bytes` in one write; returns the log for the fsync.
fn append(state: &mut State, path: &Path, bytes: &[u8]) -> std::io::Result<Arc<File>> {
    if state.log.is_none() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // A last line cut short by a lost machine must not glue onto the next.
        let len = file.metadata()?.len();
        if len > 0 && !ends_with_newline(path)? {
            (&file).write_all(b"\n")?;
        }
        state.log = Some(Arc::new(file));
    }
    let log = Arc::clone(state.log.as_ref().expect("opened above"));
    (&*log).write_all(bytes)?;
    Ok(log)
}

fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

fn parse(bytes: &[u8], path: &Path, problems: &mut Vec<String>) -> Vec<HistoryEntry> {
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<HistoryEntry>(line) {
            Ok(entry) if entries.last().is_none_or(|last| entry.id > last.id) => entries.push(entry),
            Ok(entry) => {
                problems.push(format!("{}:{}: entry {} is out of order; skipped", path.display(), number + 1, entry.id))
            }
            Err(err) => {
                problems.push(format!("{}:{}: not a history entry ({err}); skipped", path.display(), number + 1))
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(module: &str, to: &str) -> Change {
        Change {
            module: module.into(),
            action: Action::Reload,
            from: None,
            to: Some(BuildId { vsn: to.into(), sha256: to.repeat(8), source: PathBuf::from("x.wat") }),
            request_id: "r1".into(),
        }
    }

    #[test]
    fn entries_survive_a_restart_newest_first_and_a_cut_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let background = Background::start("test", 0).unwrap();
        let (history, recovered) = History::open(Some(dir.path()));
        assert!(recovered.problems.is_empty());
        history.record(vec![change("clock", "1"), change("front", "1")], &background);
        history.record(vec![change("clock", "2")], &background);
        assert_eq!(history.list(Some("clock"), 10).iter().map(|e| e.id).collect::<Vec<_>>(), [3, 1]);
        assert_eq!(history.list(None, 2).iter().map(|e| e.id).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(history.latest("clock", Some(2)).unwrap().to.unwrap().vsn, "1");
        drop(history);

        // A machine that lost power mid-write: the last line is cut.
        let log = dir.path().join("history.log");
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.push_str("{\"id\":4,\"at_ms\":1,\"modu");
        std::fs::write(&log, text).unwrap();
        let (again, recovered) = History::open(Some(dir.path()));
        assert_eq!(recovered.problems.len(), 1, "{:?}", recovered.problems);
        assert_eq!(again.list(None, 10).len(), 3);
        let added = again.record(vec![change("clock", "3")], &background);
        assert_eq!(added[0].id, 4, "ids go on from the last good entry");
        drop(again);
        let (third, recovered) = History::open(Some(dir.path()));
        assert_eq!(third.list(None, 10).len(), 4, "{:?}", recovered.problems);
        background.finish();
    }

    #[test]
    fn an_unload_entry_has_no_build_after_it_and_keeps_the_one_before_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let background = Background::start("test", 0).unwrap();
        let (history, _) = History::open(Some(dir.path()));
        history.record(vec![change("clock", "1")], &background);
        let loaded = change("clock", "1").to;
        let unload = Change { action: Action::Unload, from: loaded, to: None, ..change("clock", "1") };
        history.record(vec![unload], &background);
        drop(history);
        let (again, recovered) = History::open(Some(dir.path()));
        assert!(recovered.problems.is_empty(), "{:?}", recovered.problems);
        let newest = again.list(None, 1).remove(0);
        assert_eq!((newest.action, newest.to, newest.from.map(|b| b.vsn)), (Action::Unload, None, Some("1".into())));
        assert!(again.recent_builds(5).contains(&"1".repeat(8)), "the unloaded build stays kept");
        background.finish();
    }

    #[test]
    fn entries_naming_the_same_builds_share_one_copy_of_each_name_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let background = Background::start("test", 0).unwrap();
        let (history, _) = History::open(Some(dir.path()));
        for n in 0..1_000 {
            let mut next = change("clock", if n % 2 == 0 { "a" } else { "b" });
            next.from = change("clock", if n % 2 == 0 { "b" } else { "a" }).to;
            history.record(vec![next], &background);
        }
        {
            let state = history.lock();
            // "clock", the vsns "a" and "b", their two hashes; one path.
            assert_eq!((state.names.strings.len(), state.names.paths.len()), (5, 1));
            let to = |index: usize| &state.entries[index].to.as_ref().unwrap().sha256;
            assert!(Arc::ptr_eq(to(0), to(2)));
        }
        let newest = history.list(None, 1).remove(0);
        assert_eq!((newest.id, newest.to.unwrap().vsn.as_str(), newest.from.unwrap().vsn.as_str()), (1_000, "b", "a"));
        drop(history);
        let (again, _) = History::open(Some(dir.path()));
        assert_eq!(again.lock().names.strings.len(), 5, "shared when read back too");
        assert_eq!(again.list(Some("clock"), 5_000).len(), 1_000);
        background.finish();
    }

    #[test]
    fn a_long_history_is_compacted_keeping_the_newest_and_each_modules_last() {
        let dir = tempfile::tempdir().unwrap();
        let background = Background::start("test", 0).unwrap();
        let (mut history, _) = History::open(Some(dir.path()));
        history.limit = Limit { most: 20, keep: 10, per_module: 2 };
        history.record(vec![change("old", "1"), change("old", "2"), change("old", "3")], &background);
        for n in 0..30 {
            history.record(vec![change("busy", &n.to_string())], &background);
        }
        let ids = |h: &History, module: &str| h.list(Some(module), 100).iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(&history, "old"), [3, 2], "the module's newest two, however old");
        let busy = ids(&history, "busy");
        assert_eq!(busy.first(), Some(&33), "ids go on");
        assert!(busy.len() <= 20 && busy.len() >= 10, "{busy:?}");
        assert_eq!(busy, (34 - busy.len() as u64..34).rev().collect::<Vec<_>>(), "the newest, none skipped");
        drop(history);
        background.flush();
        let (again, recovered) = History::open(Some(dir.path()));
        assert!(recovered.problems.is_empty(), "{:?}", recovered.problems);
        assert_eq!((ids(&again, "old"), ids(&again, "busy")), (vec![3, 2], busy), "the file says the same");
        background.finish();
    }
}
