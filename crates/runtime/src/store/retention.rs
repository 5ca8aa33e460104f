//! What the data directory keeps, so that it does not grow with every reload
//! (a watch loop saving a file a thousand times a day would fill a disk):
//!
//! - builds (`artifacts/<sha256>`) and their machine code
//!   (`cache/<compiler>-<fingerprint>/<sha256>.cwasm`): those of the newest
//!   [`KEEP_BUILDS_PER_MODULE`] distinct builds each module's history names (so
//!   a rollback always finds at least the last 5, CONTRACT.md §11), and every
//!   build serving now (current, canary, old versions still draining or pinned
//!   by a process). Others are deleted. A rollback `to` an entry older than
//!   that answers `not_found`, as the contract says of a build no longer kept.
//! - Rust extension builds (`rust/artifacts/*.wasm`, keyed by source and
//!   toolchain): the newest [`KEEP_RUST_BUILDS`] by modification time. They are
//!   a cache of rustc's output; one deleted is rebuilt when next needed.
//! - JavaScript and Python extension builds (`sources/artifacts/*.wasm`, keyed
//!   by source, glue and tool): the newest [`KEEP_SOURCE_BUILDS`], likewise.
//!
//! A sweep runs on the background writer after every commit that the history
//! records, after the commit's own writes (the writer runs jobs in order),
//! unless what is kept did not change since the last one ([`Sweeps`]). Not
//! when a node starts: its apps' builds are not loaded yet, and their machine
//! code is what makes a restart warm. Only files whose names have the store's
//! exact shape are touched; a half-written temporary file is left to its
//! writer.
//!
//! One node owns a data directory at a time: it holds an exclusive lock on
//! `<data_dir>/lock` while it lives (the kernel lets go when the process dies,
//! however it dies). Holding it, a starting node deletes what writes
//! interrupted by a crash left: every store writes a temporary file
//! (`.tmpXXXXXX`) and renames it over its name, so such a file is never read,
//! only left behind.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::background::Background;
use crate::error::NodeError;

/// Distinct builds kept per module, newest first, as the history names them.
pub(crate) const KEEP_BUILDS_PER_MODULE: usize = 8;

/// Rust extension builds kept, newest first.
pub(crate) const KEEP_RUST_BUILDS: usize = 64;

/// How many `.js` and `.py` extension builds are kept (a Python component
/// holds its interpreter: about 19 MB each).
pub(crate) const KEEP_SOURCE_BUILDS: usize = 16;

/// The lock file in a data directory.
pub(crate) const LOCK_FILE: &str = "lock";

/// How long a starting node waits for the data directory's lock.
const CLAIM_PATIENCE: Duration = Duration::from_secs(2);

/// Takes the data directory for this node (see the module documentation) and
/// clears what interrupted writes left; the lock holds while the file lives.
pub(crate) fn claim(data_dir: &Path) -> Result<fs::File, NodeError> {
    let fail = |source| NodeError::DataDir { path: data_dir.to_path_buf(), source };
    fs::create_dir_all(data_dir).map_err(fail)?;
    let lock =
        fs::OpenOptions::new().create(true).truncate(false).write(true).open(data_dir.join(LOCK_FILE)).map_err(fail)?;
    // A node just dropped in this process lets go once its last background
    // write ends: a moment's patience tells that apart from a live node.
    let patience = Instant::now() + CLAIM_PATIENCE;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) if Instant::now() < patience => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => {
                let lock_file = data_dir.join(LOCK_FILE);
                return Err(NodeError::DataDirInUse { path: data_dir.to_path_buf(), lock_file });
            }
            Err(fs::TryLockError::Error(err)) => return Err(fail(err)),
        }
    }
    let cleared = clear_interrupted_writes(data_dir);
    if cleared > 0 {
        tracing::info!(cleared, dir = %data_dir.display(), "removed files of writes a crash interrupted");
    }
    Ok(lock)
}

/// Deletes temporary files (and the staging directories of Rust builds) that
/// a killed node left, down to three levels under `data_dir`; how many.
fn clear_interrupted_writes(data_dir: &Path) -> usize {
    let mut cleared = 0;
    let mut pending = vec![(data_dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            let path = entry.path();
            if is_temporary(&entry.file_name().to_string_lossy()) {
                let removed = if kind.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                match removed {
                    Ok(()) => cleared += 1,
                    Err(err) => tracing::warn!(path = %path.display(), %err, "cannot remove a stale temporary file"),
                }
            } else if kind.is_dir() && depth < 3 {
                pending.push((path, depth + 1));
            }
        }
    }
    cleared
}

/// `tempfile`'s default names: `.tmp` and six letters or digits.
fn is_temporary(name: &str) -> bool {
    name.strip_prefix(".tmp").is_some_and(|rest| rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The sweeps of one data directory. A sweep whose kept set is the one the
/// last sweep used finds nothing to delete — files appear only for builds
/// that are swapped in, which the kept set then names, and nothing has left
/// it — so it lists no directory (a member flipping between two builds on
/// every cluster reload listed its store each time).
#[derive(Default)]
pub(crate) struct Sweeps {
    last: Arc<Mutex<Option<HashSet<String>>>>,
}

impl Sweeps {
    /// Queues a sweep of `data_dir` on `background` (after the writes
    /// already queued there): every store file whose build `kept` does not
    /// name goes. `kept` runs on the writer, at the sweep; `None` (its node
    /// went away meanwhile) sweeps nothing.
    pub(crate) fn later(
        &self,
        data_dir: PathBuf,
        background: &Background,
        kept: impl FnOnce() -> Option<HashSet<String>> + Send + 'static,
    ) {
        let last = Arc::clone(&self.last);
        background.run(move || {
            let Some(kept) = kept() else { return };
            let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.as_ref() == Some(&kept) {
                return;
            }
            let removed = sweep(&data_dir, &kept);
            if removed > 0 {
                tracing::debug!(removed, "data directory swept");
            }
            *last = Some(kept);
        });
    }
}

/// Deletes what `kept` does not name; returns how many files went.
fn sweep(data_dir: &Path, kept: &HashSet<String>) -> usize {
    let mut removed = remove_unkept(&data_dir.join("artifacts"), "", kept);
    if let Ok(caches) = fs::read_dir(data_dir.join("cache")) {
        for cache in caches.flatten() {
            removed += remove_unkept(&cache.path(), ".cwasm", kept);
        }
    }
    removed
        + keep_newest(&data_dir.join("rust").join("artifacts"), ".wasm", KEEP_RUST_BUILDS)
        + keep_newest(&data_dir.join("sources").join("artifacts"), ".wasm", KEEP_SOURCE_BUILDS)
}

/// The sha256 a store's file is named by (`<64 hex digits><suffix>`).
fn sha_named<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let sha = name.strip_suffix(suffix)?;
    (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(sha)
}

fn remove_unkept(dir: &Path, suffix: &str, kept: &HashSet<String>) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(sha) = name.to_str().and_then(|name| sha_named(name, suffix)) else { continue };
        if !kept.contains(sha) {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(err) => tracing::warn!(path = %entry.path().display(), %err, "cannot remove an old build"),
            }
        }
    }
    removed
}

fn keep_newest(dir: &Path, suffix: &str, keep: usize) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let mut files: Vec<(SystemTime, std::path::PathBuf)> = entries
        .flatten()
        .filter(|entry| entry.file_name().to_str().is_some_and(|name| name.ends_with(suffix)))
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .collect();
    if files.len() <= keep {
        return 0;
    }
    files.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    files.drain(keep..).filter(|(_, path)| fs::remove_file(path).is_ok()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_claims_a_data_dir_and_clears_what_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache").join("winch-0123");
        fs::create_dir_all(cache.join(".tmpAbC123")).unwrap();
        for file in [
            dir.path().join(".tmpQ1w2E3"),
            cache.join(".tmpzzzzzz"),
            dir.path().join("history.log"),
            dir.path().join(".tmp-mine"),
            cache.join(format!("{}.cwasm", "a".repeat(64))),
        ] {
            fs::write(&file, "x").unwrap();
        }
        let held = claim(dir.path()).unwrap();
        let mut names: Vec<String> = Vec::new();
        for sub in [dir.path().to_path_buf(), cache.clone()] {
            names.extend(fs::read_dir(sub).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()));
        }
        names.sort();
        let cwasm = format!("{}.cwasm", "a".repeat(64));
        assert_eq!(names, [".tmp-mine", &cwasm, "cache", "history.log", "lock"]);
        let refused = claim(dir.path()).unwrap_err();
        assert!(matches!(refused, NodeError::DataDirInUse { .. }), "{refused}");
        assert!(refused.to_string().contains("in use by another zest node"), "{refused}");
        drop(held);
        claim(dir.path()).expect("free again once the holder is gone");
    }

    #[test]
    fn a_sweep_removes_only_unkept_store_files() {
        let dir = tempfile::tempdir().unwrap();
        let (keep, drop) = ("a".repeat(64), "b".repeat(64));
        let artifacts = dir.path().join("artifacts");
        let cache = dir.path().join("cache").join("winch-0123");
        for store in [&artifacts, &cache] {
            fs::create_dir_all(store).unwrap();
        }
        for sha in [&keep, &drop] {
            fs::write(artifacts.join(sha), "wasm").unwrap();
            fs::write(cache.join(format!("{sha}.cwasm")), "code").unwrap();
        }
        // Not a store's name: a temporary file mid-write, something foreign.
        fs::write(artifacts.join(format!(".{drop}.tmp")), "half").unwrap();
        fs::write(cache.join("README"), "mine").unwrap();

        let removed = sweep(dir.path(), &HashSet::from([keep.clone()]));
        assert_eq!(removed, 2);
        assert!(artifacts.join(&keep).exists() && cache.join(format!("{keep}.cwasm")).exists());
        assert!(!artifacts.join(&drop).exists() && !cache.join(format!("{drop}.cwasm")).exists());
        assert!(artifacts.join(format!(".{drop}.tmp")).exists() && cache.join("README").exists());
    }

    #[test]
    fn a_sweep_with_the_kept_set_of_the_last_one_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = dir.path().join("artifacts");
        fs::create_dir_all(&artifacts).unwrap();
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        for sha in [&a, &b, &c] {
            fs::write(artifacts.join(sha), "wasm").unwrap();
        }
        let background = Background::start("test-writer", 0).unwrap();
        let sweeps = Sweeps::default();
        let sweep_keeping = |kept: &[&String]| {
            let kept: HashSet<String> = kept.iter().map(|sha| sha.to_string()).collect();
            sweeps.later(dir.path().to_path_buf(), &background, move || Some(kept));
            background.flush();
        };
        sweep_keeping(&[&a, &b]);
        assert!(!artifacts.join(&c).exists(), "the first sweep deletes what is not kept");
        // Written behind the store's back: only a sweep that lists the
        // directory would find it.
        fs::write(artifacts.join(&c), "wasm").unwrap();
        sweep_keeping(&[&b, &a]);
        assert!(artifacts.join(&c).exists(), "the same kept set: the directory is not listed");
        sweep_keeping(&[&a]);
        assert!(!artifacts.join(&b).exists() && !artifacts.join(&c).exists(), "a changed kept set sweeps");
        assert!(artifacts.join(&a).exists());
    }

    #[test]
    fn rust_builds_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let rust = dir.path().join("rust").join("artifacts");
        fs::create_dir_all(&rust).unwrap();
        let now = SystemTime::now();
        for age in 0..(KEEP_RUST_BUILDS as u64 + 3) {
            let path = rust.join(format!("{age}.wasm"));
            fs::write(&path, "wasm").unwrap();
            let file = fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(now - std::time::Duration::from_secs(age * 60)).unwrap();
        }
        assert_eq!(sweep(dir.path(), &HashSet::new()), 3);
        assert!(rust.join("0.wasm").exists() && rust.join(format!("{}.wasm", KEEP_RUST_BUILDS - 1)).exists());
        assert!(!rust.join(format!("{}.wasm", KEEP_RUST_BUILDS)).exists());
    }
}
