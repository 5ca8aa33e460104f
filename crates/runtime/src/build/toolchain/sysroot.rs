//! A copy of a compiler's wasm32 standard library that links in half the time.
//!
//! Each object in the standard library's rlibs carries DWARF sections whose
//! relocations (`reloc..debug_info` and the like) outnumber its code's fifty to
//! one, and `rust-lld` reads and checks every one of them before `--strip-all`
//! throws the sections away: about 27 ms of a 63 ms link of a one-function
//! module (docs/benchmarks.md, "Extensions", item 1).
//!
//! The copy renames each such relocation section to a `.debug_` name of the same
//! length. The linker then sees a debug section with no relocations, which it
//! drops like the others; nothing else in any file moves, so the archives'
//! symbol indexes stay valid and a build links the same bytes.
//!
//! *Invariant:* a build against the copy strips debug information
//! (`-C strip=symbols`, which every build here passes): with debug sections kept,
//! theirs would be left unrelocated.

use std::fs;
use std::path::{Path, PathBuf};

use object::read::archive::ArchiveFile;
use wasmparser::{Parser, Payload};

/// What a renamed relocation section starts with (then `_` up to its length).
const RENAMED: &[u8] = b".debug_zest";

/// The prefix of the sections renamed.
const DEBUG_RELOCATIONS: &[u8] = b"reloc..debug_";

/// Builds under `dir` a sysroot for `target` whose rlibs are `sysroot`'s with
/// their debug relocations renamed; every other entry links to the original.
/// `dir` must not exist; on error it may be left half built.
pub(super) fn write(sysroot: &Path, target: &str, dir: &Path) -> std::io::Result<()> {
    let rustlib = sysroot.join("lib/rustlib");
    let ours = dir.join("lib/rustlib");
    fs::create_dir_all(&ours)?;
    for entry in fs::read_dir(&rustlib)? {
        let entry = entry?;
        if entry.file_name() != target {
            link(&entry.path(), &ours.join(entry.file_name()))?;
        }
    }
    for entry in fs::read_dir(rustlib.join(target))? {
        let entry = entry?;
        if entry.file_name() != "lib" {
            link(&entry.path(), &ours.join(target).join(entry.file_name()))?;
        }
    }
    let libs = ours.join(target).join("lib");
    fs::create_dir_all(&libs)?;
    for entry in fs::read_dir(rustlib.join(target).join("lib"))? {
        let entry = entry?;
        let (from, to) = (entry.path(), libs.join(entry.file_name()));
        if from.extension().is_some_and(|ext| ext == "rlib") {
            let mut rlib = fs::read(&from)?;
            rename_debug_relocations(&mut rlib);
            fs::write(&to, rlib)?;
        } else {
            link(&from, &to)?;
        }
    }
    Ok(())
}

fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    std::os::unix::fs::symlink(from, to)
}

/// Renames, in place, the debug relocation sections of every wasm object in the
/// archive `rlib`; returns how many. A member that is not a wasm object, or
/// that does not parse, is left as it is: the result always links as the
/// original does.
pub(super) fn rename_debug_relocations(rlib: &mut [u8]) -> usize {
    let Ok(archive) = ArchiveFile::parse(&*rlib) else { return 0 };
    let members: Vec<(usize, usize)> = archive
        .members()
        .filter_map(Result::ok)
        .filter_map(|member| {
            let (offset, size) = member.file_range();
            Some((usize::try_from(offset).ok()?, usize::try_from(size).ok()?))
        })
        .collect();
    let mut renamed = 0;
    for (offset, size) in members {
        let Some(object) = rlib.get_mut(offset..offset.saturating_add(size)) else { continue };
        for name in debug_relocation_names(object) {
            let mut new = RENAMED.to_vec();
            new.resize(name.len(), b'_');
            object[name].copy_from_slice(&new);
            renamed += 1;
        }
    }
    renamed
}

/// Where the names of `object`'s debug relocation sections lie in it; nothing
/// when it is not a wasm object that parses.
fn debug_relocation_names(object: &[u8]) -> Vec<std::ops::Range<usize>> {
    if !object.starts_with(b"\0asm") {
        return Vec::new();
    }
    let mut names = Vec::new();
    for payload in Parser::new(0).parse_all(object) {
        match payload {
            Ok(Payload::CustomSection(section)) if section.name().as_bytes().starts_with(DEBUG_RELOCATIONS) => {
                // The name's bytes end where the section's data begins.
                let end = section.data_offset();
                names.push(end - section.name().len()..end);
            }
            Ok(_) => {}
            Err(_) => return Vec::new(),
        }
    }
    names
}

/// Where the copy for a compiler with build tag `tag` lives under `work_dir`.
pub(super) fn path(work_dir: &Path, tag: &str) -> PathBuf {
    work_dir.join(format!("sysroot-{tag}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wasm object with a code section, a debug section and its relocations,
    /// as LLVM lays them out.
    fn object() -> Vec<u8> {
        let mut module = wasm_encoder::Module::new();
        let mut types = wasm_encoder::TypeSection::new();
        types.ty().function([], []);
        module.section(&types);
        let mut functions = wasm_encoder::FunctionSection::new();
        functions.function(0);
        module.section(&functions);
        let mut code = wasm_encoder::CodeSection::new();
        let mut body = wasm_encoder::Function::new([]);
        body.instructions().end();
        code.function(&body);
        module.section(&code);
        for (name, data) in [(".debug_info", &b"dwarf"[..]), ("reloc..debug_info", &[2, 0][..]), ("linking", &[2][..])]
        {
            module.section(&wasm_encoder::CustomSection { name: name.into(), data: data.into() });
        }
        module.finish()
    }

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, data) in members {
            let header = format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", format!("{name}/"), 0, 0, 0, 644, data.len());
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    #[test]
    fn debug_relocations_are_renamed_in_place_and_nothing_else_changes() {
        let object = object();
        let rmeta = b"rust\0\0\0\x06 metadata that is not wasm".to_vec();
        let original = archive(&[("lib.rmeta", &rmeta), ("a.o", &object)]);
        let mut rlib = original.clone();

        assert_eq!(rename_debug_relocations(&mut rlib), 1);
        assert_eq!(rlib.len(), original.len());
        let changed: Vec<usize> = (0..rlib.len()).filter(|&i| rlib[i] != original[i]).collect();
        let at = find(&original, b"reloc..debug_info").unwrap();
        assert!(changed.iter().all(|i| (at..at + 17).contains(i)), "{changed:?}");
        assert_eq!(&rlib[at..at + 17], b".debug_zest______");

        let member = &rlib[find(&rlib, b"\0asm").unwrap()..];
        let names: Vec<String> = Parser::new(0)
            .parse_all(&member[..object.len()])
            .filter_map(|payload| match payload.unwrap() {
                Payload::CustomSection(section) => Some(section.name().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(names, [".debug_info", ".debug_zest______", "linking"]);
        assert_eq!(rename_debug_relocations(&mut rlib), 0, "a second pass finds nothing left");
    }

    #[test]
    fn what_is_not_an_archive_of_wasm_objects_is_left_alone() {
        for bytes in [b"not an archive".to_vec(), archive(&[("a.o", b"\0asm\x01\0\0\0\x00\x20reloc..debug_")])] {
            let mut copy = bytes.clone();
            assert_eq!(rename_debug_relocations(&mut copy), 0);
            assert_eq!(copy, bytes);
        }
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|window| window == needle)
    }
}
