//! The compile cache: machine code of builds seen before, on disk in the data
//! directory, so that a rollback or a restart skips compilation.
//!
//! Entries live in `<data_dir>/cache/<compiler>-<engine fingerprint>/<sha256>.cwasm`.
//! The fingerprint changes with the wasmtime version and every engine setting, so
//! a foreign entry is never even looked at. Each file starts with a header that
//! names the build it belongs to and the sha256 of the rest: the names of the
//! build's callables (in dispatch order, `dispatch.rs`), then the machine code:
//! one module, or a split build's pieces (`split.rs`) with their keys. An
//! entry whose header or checksum does not match, or that the engine refuses, is
//! deleted and the build compiled again. Writes go to a temporary file and are renamed into
//! place, so a crash leaves no half-written entry.
//!
//! Deserialising machine code trusts it to be what the engine wrote: the data
//! directory must be writable only by the node's user (it is created 0700).

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

use super::compiled::{Compiled, Pieces};
use crate::error::NodeError;
use crate::wasm::abi::Callables;

const MAGIC: &[u8; 8] = b"ZESTMOD3";
const HEADER_LEN: usize = MAGIC.len() + 32 + 32;

#[derive(Debug)]
pub(crate) struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    pub(crate) fn open(data_dir: &Path, engine: &Engine, label: &str) -> Result<CompileCache, NodeError> {
        let mut fingerprint = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut fingerprint);
        let fingerprint = hex::encode(&fingerprint.0.finalize()[..8]);
        let dir = data_dir.join("cache").join(format!("{label}-{fingerprint}"));
        create_private_dir(data_dir)
            .and_then(|()| fs::create_dir_all(&dir))
            .map_err(|source| NodeError::DataDir { path: dir.clone(), source })?;
        Ok(CompileCache { dir })
    }

    fn path(&self, key: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}.cwasm", hex::encode(key)))
    }

    /// The cached machine code of build `key` and its callables, if a sound
    /// entry exists.
    pub(crate) fn load(&self, engine: &Engine, key: &[u8; 32]) -> Option<(Compiled, Callables)> {
        let path = self.path(key);
        let bytes = fs::read(&path).ok()?;
        let (callables, payload) = match verify(&bytes, key).and_then(split_callables) {
            Ok(parts) => parts,
            Err(problem) => {
                tracing::warn!(path = %path.display(), problem, "discarding a corrupt compile-cache entry");
                let _ = fs::remove_file(&path);
                return None;
            }
        };
        match decode_code(engine, payload) {
            Ok(code) => Some((code, callables)),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "discarding an incompatible compile-cache entry");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes the machine code of build `key`; a failure is logged, never fatal.
    pub(crate) fn store(&self, key: &[u8; 32], code: &Compiled, callables: &Callables) {
        if let Err(err) = self.try_store(key, code, callables) {
            tracing::warn!(dir = %self.dir.display(), error = %err, "cannot write a compile-cache entry");
        }
    }

    fn try_store(
        &self,
        key: &[u8; 32],
        code: &Compiled,
        callables: &Callables,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut body = encode_callables(callables);
        encode_code(code, &mut body).map_err(|err| format!("{err:#}"))?;
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(MAGIC)?;
        file.write_all(key)?;
        file.write_all(&Sha256::digest(&body))?;
        file.write_all(&body)?;
        file.persist(self.path(key))?;
        Ok(())
    }
}

/// Checks an entry's header against `key` and its payload checksum.
fn verify<'a>(bytes: &'a [u8], key: &[u8; 32]) -> Result<&'a [u8], &'static str> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err("bad header");
    }
    let (named, rest) = bytes[MAGIC.len()..].split_at(32);
    if named != key {
        return Err("entry belongs to another build");
    }
    let (checksum, payload) = rest.split_at(32);
    if Sha256::digest(payload).as_slice() != checksum {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

/// The callables block: their count, then each name's length and bytes
/// (little-endian u32s).
fn encode_callables(callables: &Callables) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(callables.len() as u32).to_le_bytes());
    for name in callables.iter() {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    out
}

/// A verified body: its callables, then the machine code.
fn split_callables(body: &[u8]) -> Result<(Callables, &[u8]), &'static str> {
    let mut rest = body;
    let mut take = |n: usize| -> Result<&[u8], &'static str> {
        if rest.len() < n {
            return Err("truncated callables");
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let word = |bytes: &[u8]| u32::from_le_bytes(bytes.try_into().expect("four bytes")) as usize;
    let count = word(take(4)?);
    let mut names = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let len = word(take(4)?);
        let name = std::str::from_utf8(take(len)?).map_err(|_| "a callable name is not UTF-8")?;
        names.push(Box::from(name));
    }
    Ok((names.into(), rest))
}

/// Marks a component's entry where a part count would be.
const COMPONENT: u32 = u32::MAX;

/// The machine code block: a part count (0 for a whole build), then the one
/// module; or each part's callable count, each piece's key, and each piece
/// (the core first) as a length and its bytes (little-endian integers); or
/// [`COMPONENT`], then the component.
fn encode_code(code: &Compiled, out: &mut Vec<u8>) -> wasmtime::Result<()> {
    match code {
        Compiled::Component(component) => {
            out.extend_from_slice(&COMPONENT.to_le_bytes());
            out.extend_from_slice(&component.serialize()?);
        }
        Compiled::Whole(module) => {
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&module.serialize()?);
        }
        Compiled::Split(pieces) => {
            out.extend_from_slice(&(pieces.parts.len() as u32).to_le_bytes());
            for count in &pieces.counts {
                out.extend_from_slice(&count.to_le_bytes());
            }
            for key in &pieces.keys {
                out.extend_from_slice(key);
            }
            for module in std::iter::once(&pieces.core).chain(&pieces.parts) {
                let bytes = module.serialize()?;
                out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
        }
    }
    Ok(())
}

fn decode_code(engine: &Engine, block: &[u8]) -> Result<Compiled, String> {
    let mut rest = block;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err("truncated machine code".into());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let word = |bytes: &[u8]| u32::from_le_bytes(bytes.try_into().expect("four bytes"));
    // SAFETY (both calls): the bytes are byte for byte what `Module::serialize`
    // wrote for this engine configuration (checked against the sha256 in the
    // entry's header), in a directory only the node's user can write.
    let deserialize = |bytes: &[u8]| unsafe { Module::deserialize(engine, bytes) }.map_err(|err| format!("{err:#}"));
    let parts = word(take(4)?);
    if parts == COMPONENT {
        // SAFETY: as above, what `Component::serialize` wrote.
        let component = unsafe { wasmtime::component::Component::deserialize(engine, &block[4..]) };
        return component.map(Compiled::Component).map_err(|err| format!("{err:#}"));
    }
    let parts = parts as usize;
    if parts == 0 {
        return deserialize(&block[4..]).map(Compiled::Whole);
    }
    let counts = (0..parts).map(|_| take(4).map(word)).collect::<Result<Vec<u32>, _>>()?;
    let keys = (0..=parts)
        .map(|_| take(32).map(|key| <[u8; 32]>::try_from(key).expect("32 bytes")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut modules = Vec::with_capacity(parts + 1);
    for _ in 0..=parts {
        let len = u64::from_le_bytes(take(8)?.try_into().expect("eight bytes"));
        modules.push(deserialize(take(usize::try_from(len).map_err(|_| "a piece too large")?)?)?);
    }
    let core = modules.remove(0);
    Ok(Compiled::Split(std::sync::Arc::new(Pieces::new(core, modules, keys, counts)?)))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Feeds `Hash` output into sha256, for a fingerprint that is stable across runs.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only the sha256 digest is read")
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &[u8; 32], payload: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(&Sha256::digest(payload));
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn verify_accepts_only_sound_entries_for_the_right_build() {
        let key = [7u8; 32];
        let good = entry(&key, b"machine code");
        assert_eq!(verify(&good, &key), Ok(&b"machine code"[..]));
        let callables: Callables = vec![Box::from("get"), Box::from("f1")].into();
        let mut body = encode_callables(&callables);
        body.extend_from_slice(b"code");
        let (names, code) = split_callables(&body).unwrap();
        assert_eq!((&names[..], code), (&callables[..], &b"code"[..]));
        assert_eq!(split_callables(&body[..6]).unwrap_err(), "truncated callables");
        assert_eq!(verify(&good, &[8u8; 32]), Err("entry belongs to another build"));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(verify(&flipped, &key), Err("checksum mismatch"));
        assert_eq!(verify(&good[..10], &key), Err("bad header"));
        assert_eq!(
            verify(b"garbage garbage garbage garbage garbage garbage garbage garbage garbage", &key),
            Err("bad header")
        );
    }
}
