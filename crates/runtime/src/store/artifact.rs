//! Builds by sha256: the exact bytes of every build the node staged (a `.wat`
//! file's text, a `.wasm` file, the wasm rustc made of a `.rs` extension), so
//! that other members of a cluster can fetch the builds this node holds, and an
//! earlier build can be loaded again after its file changed.
//!
//! Recently staged builds stay in memory (at most [`MEMORY_MAX_BYTES`]); a build
//! that was swapped in is also written to `<data_dir>/artifacts/<sha256>`. A file
//! is written to a temporary name and renamed into place, and its name is its
//! sha256: a file whose content does not hash to its name (a crash mid-write on
//! a machine that lost power) is deleted when read, never served.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::background::Background;

/// How many bytes of builds the memory side keeps, most recently used first.
const MEMORY_MAX_BYTES: usize = 256 << 20;

/// A build's bytes.
pub type Bytes = Arc<[u8]>;

#[derive(Debug)]
pub(crate) struct Artifacts {
    /// `None`: nothing on disk (a node without a data directory).
    dir: Option<PathBuf>,
    /// Most recently used first.
    memory: Mutex<Vec<([u8; 32], Bytes)>>,
}

impl Artifacts {
    pub(crate) fn new(data_dir: Option<&Path>) -> Artifacts {
        Artifacts { dir: data_dir.map(|dir| dir.join("artifacts")), memory: Mutex::new(Vec::new()) }
    }

    /// Keeps `bytes` (whose sha256 is `sha256`) in memory.
    pub(crate) fn keep(&self, sha256: &[u8; 32], bytes: Bytes) {
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        memory.retain(|(key, _)| key != sha256);
        memory.insert(0, (*sha256, bytes));
        let mut total = 0;
        let keep = memory
            .iter()
            .take_while(|(_, bytes)| {
                total += bytes.len();
                total <= MEMORY_MAX_BYTES
            })
            .count()
            .max(1);
        memory.truncate(keep);
    }

    /// The size of build `sha256` when it is held in memory.
    pub(crate) fn size_in_memory(&self, sha256: &[u8; 32]) -> Option<usize> {
        let memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        memory.iter().find(|(key, _)| key == sha256).map(|(_, bytes)| bytes.len())
    }

    /// The build `sha256`, from memory or from disk.
    pub(crate) fn get(&self, sha256: &[u8; 32]) -> Option<Bytes> {
        {
            let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(index) = memory.iter().position(|(key, _)| key == sha256) {
                let entry = memory.remove(index);
                let bytes = Arc::clone(&entry.1);
                memory.insert(0, entry);
                return Some(bytes);
            }
        }
        let path = self.path(sha256)?;
        let bytes = fs::read(&path).ok()?;
        if Sha256::digest(&bytes).as_slice() != sha256 {
            tracing::warn!(path = %path.display(), "discarding a build whose content does not match its name");
            let _ = fs::remove_file(&path);
            return None;
        }
        let bytes: Bytes = bytes.into();
        self.keep(sha256, Arc::clone(&bytes));
        Some(bytes)
    }

    /// Writes the build `sha256` to disk, by `background`, if it is held in
    /// memory and not there yet. A failure is logged: the build still serves,
    /// it just would not be found again after a restart.
    pub(crate) fn persist(&self, sha256: &[u8; 32], background: &Background) {
        let Some(path) = self.path(sha256) else {
            return;
        };
        if path.exists() {
            return;
        }
        let bytes = {
            let memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
            match memory.iter().find(|(key, _)| key == sha256) {
                Some((_, bytes)) => Arc::clone(bytes),
                None => return,
            }
        };
        background.run(move || {
            if let Err(err) = write_new(&path, &bytes) {
                tracing::warn!(path = %path.display(), error = %err, "cannot keep a build on disk");
            }
        });
    }

    fn path(&self, sha256: &[u8; 32]) -> Option<PathBuf> {
        self.dir.as_ref().map(|dir| dir.join(hex::encode(sha256)))
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|err| err.error)?;
    Ok(())
}

/// The sha256 named by a 64-digit hex string.
pub fn parse_sha256(hex_digits: &str) -> Option<[u8; 32]> {
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut sha256).ok()?;
    Some(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_come_back_from_memory_and_disk_and_a_corrupt_file_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Bytes = b"(module)".to_vec().into();
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let artifacts = Artifacts::new(Some(dir.path()));
        assert!(artifacts.get(&sha256).is_none());
        artifacts.keep(&sha256, Arc::clone(&bytes));
        assert_eq!(artifacts.get(&sha256).as_deref(), Some(&bytes[..]));
        let background = Background::start("test", 0).unwrap();
        artifacts.persist(&sha256, &background);
        background.finish();

        let restarted = Artifacts::new(Some(dir.path()));
        assert_eq!(restarted.get(&sha256).as_deref(), Some(&bytes[..]), "read back from disk");

        let file = dir.path().join("artifacts").join(hex::encode(sha256));
        fs::write(&file, b"(module $tampered)").unwrap();
        let again = Artifacts::new(Some(dir.path()));
        assert!(again.get(&sha256).is_none(), "a file whose content is not its name is refused");
        assert!(!file.exists(), "and deleted");
    }

    #[test]
    fn hex_names_parse_only_when_they_are_a_sha256() {
        assert_eq!(parse_sha256(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_sha256("abc"), None);
        assert_eq!(parse_sha256(&"zz".repeat(32)), None);
    }
}
