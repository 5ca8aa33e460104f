//! Finding a wasm32-capable `rustc` and turning one Rust source file into a module.
//!
//! A module written in Rust uses the guest SDK (`crates/guest`), whose sources are
//! embedded here: the SDK is built once per compiler into the work directory and
//! linked in with `--extern zest_guest=...`, so a single `.rs` file compiles with
//! no build system and no network. The SDK and its users build with Rust 1.63,
//! Debian's `/usr/bin/rustc`, as well as with a current rustup toolchain that has
//! the `wasm32-unknown-unknown` target. Builds link against a copy of the
//! compiler's wasm32 standard library made once per compiler (`sysroot`), which
//! links the same bytes in half the time.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wait_timeout::ChildExt;

mod spare;
mod sysroot;

pub use spare::Spare;

/// The guest SDK's sources, as `(file name, text)`.
const SDK_SOURCES: [(&str, &str); 3] = [
    ("lib.rs", include_str!("../../../guest/src/lib.rs")),
    ("json.rs", include_str!("../../../guest/src/json.rs")),
    ("component.rs", include_str!("../../../guest/src/component.rs")),
];

const TARGET: &str = "wasm32-unknown-unknown";

/// Where `auto` looks, in order: the `rustc` on `PATH` (rustup's, when it has the
/// wasm32 target), then Debian's.
const AUTO_CANDIDATES: [&str; 2] = ["rustc", "/usr/bin/rustc"];

#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    #[error("no wasm32-capable rustc found (tried: {tried}); install one with `apt-get install -y rustc libstd-rust-dev-wasm32 lld-14` or `rustup target add {TARGET}`")]
    NotFound { tried: String },
    #[error("{rustc} cannot build for {TARGET}: its sysroot {sysroot} has no {TARGET} standard library")]
    NoTarget { rustc: String, sysroot: String },
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("cannot prepare the build directory {path}: {source}")]
    WorkDir { path: PathBuf, source: std::io::Error },
    #[error("{output}")]
    Failed { output: String },
    #[error("rustc was killed after {seconds} s (limits.build_timeout_ms)")]
    TimedOut { seconds: u64 },
}

/// A `rustc` known to build for wasm32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rustc {
    path: PathBuf,
    version: String,
    sysroot: PathBuf,
    /// [`Rustc::build_tag`].
    tag: [u8; 32],
    /// The first work directory's sysroot, once chosen
    /// ([`Rustc::linking_sysroot`]); shared by clones, so that a copy that
    /// could not be made there is tried once.
    linking: Arc<OnceLock<(PathBuf, PathBuf)>>,
}

impl Rustc {
    /// `configured` is `extensions.rustc`: a path, or `None` for `auto`.
    pub fn find(configured: Option<&Path>) -> Result<Rustc, ToolchainError> {
        if let Some(path) = configured {
            return Rustc::probe(path);
        }
        let mut tried = Vec::new();
        for candidate in AUTO_CANDIDATES {
            match Rustc::probe(Path::new(candidate)) {
                Ok(rustc) => return Ok(rustc),
                Err(err) => tried.push(format!("{candidate}: {err}")),
            }
        }
        Err(ToolchainError::NotFound { tried: tried.join("; ") })
    }

    /// Checks that `path` runs and has the wasm32 standard library.
    pub fn probe(path: &Path) -> Result<Rustc, ToolchainError> {
        let version = capture(path, &["--version"])?;
        let sysroot = capture(path, &["--print", "sysroot"])?;
        let target_lib = Path::new(&sysroot).join("lib/rustlib").join(TARGET).join("lib");
        if !target_lib.is_dir() {
            return Err(ToolchainError::NoTarget { rustc: path.display().to_string(), sysroot });
        }
        let mut rustc = Rustc {
            path: path.to_path_buf(),
            version,
            sysroot: PathBuf::from(sysroot),
            tag: [0; 32],
            linking: Arc::default(),
        };
        rustc.tag = rustc.compute_tag();
        Ok(rustc)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rustc --version`, e.g. `rustc 1.63.0`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// What a build by this compiler depends on besides its source: the
    /// compiler's version, the guest SDK's sources and the flags.
    pub fn build_tag(&self) -> [u8; 32] {
        self.tag
    }

    fn compute_tag(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.version.as_bytes());
        for (name, text) in SDK_SOURCES {
            digest.update(name.as_bytes());
            digest.update(text.as_bytes());
        }
        for arg in self.command().get_args() {
            digest.update(arg.as_encoded_bytes());
        }
        digest.finalize().into()
    }

    /// Compiles `source` (one `.rs` file that may `use zest_guest`) into the wasm
    /// module `out`. `work_dir` keeps the SDK build between calls; messages show
    /// `source`'s directory as `shown_as`; each line rustc prints goes to `on_line`.
    /// Returns the command line it ran.
    pub fn compile_module(
        &self,
        source: &Path,
        out: &Path,
        work_dir: &Path,
        shown_as: &Path,
        timeout: Duration,
        on_line: OnLine<'_>,
    ) -> Result<String, ToolchainError> {
        let sdk = self.guest_sdk(work_dir, timeout, on_line)?;
        let command = self.module_command(&self.linking_sysroot(work_dir), &sdk, source, out, shown_as);
        run(command, timeout, on_line)?;
        Ok(self.command_line(source, shown_as))
    }

    /// The command line a build of `source` reports: the compiler and the
    /// file, as its messages show it.
    pub fn command_line(&self, source: &Path, shown_as: &Path) -> String {
        format!("{} {}", self.path.display(), shown_as.join(source.file_name().unwrap_or_default()).display())
    }

    /// Starts the `rustc` of the next build of a file named `file_name` whose
    /// messages show it in `shown_as`, waiting for its text ([`Spare`]). The
    /// guest SDK must be built (by a build in `work_dir`).
    pub fn spare(&self, file_name: &OsStr, work_dir: &Path, shown_as: &Path) -> Result<Spare, ToolchainError> {
        let work_err = |source| ToolchainError::WorkDir { path: work_dir.to_path_buf(), source };
        let sdk = self.sdk_path(work_dir);
        if !sdk.is_file() {
            return Err(work_err(std::io::Error::new(std::io::ErrorKind::NotFound, "the guest SDK is not built")));
        }
        let sysroot = self.linking_sysroot(work_dir);
        let dir = tempfile::Builder::new().prefix("spare-").tempdir_in(work_dir).map_err(work_err)?;
        let fifo = dir.path().join(file_name);
        make_fifo(&fifo).map_err(work_err)?;
        let built = dir.path().join("out.wasm");
        let command = self.module_command(&sysroot, &sdk, &fifo, &built, shown_as);
        Spare::start(command, dir, fifo, built, file_name, shown_as)
    }

    /// The command that builds `source` into `out` against `sysroot` and the
    /// guest SDK `sdk`.
    fn module_command(&self, sysroot: &Path, sdk: &Path, source: &Path, out: &Path, shown_as: &Path) -> Command {
        let mut command = self.command();
        let source_dir = source.parent().unwrap_or(Path::new("/"));
        command
            .arg("--sysroot")
            .arg(sysroot)
            .args(["--crate-type", "cdylib", "--crate-name", &crate_name(source)])
            .arg("--extern")
            .arg(format!("zest_guest={}", sdk.display()))
            .arg(format!("--remap-path-prefix={}={}", source_dir.display(), shown_as.display()))
            .arg("-o")
            .arg(out)
            .arg(source);
        command
    }

    /// Builds the guest SDK for this compiler once; returns the rlib.
    pub fn guest_sdk(
        &self,
        work_dir: &Path,
        timeout: Duration,
        on_line: OnLine<'_>,
    ) -> Result<PathBuf, ToolchainError> {
        let rlib = self.sdk_path(work_dir);
        if rlib.is_file() {
            return Ok(rlib);
        }
        let work_err = |source| ToolchainError::WorkDir { path: work_dir.to_path_buf(), source };
        fs::create_dir_all(work_dir).map_err(work_err)?;
        let staging = tempfile::tempdir_in(work_dir).map_err(work_err)?;
        for (name, text) in SDK_SOURCES {
            fs::write(staging.path().join(name), text).map_err(work_err)?;
        }
        let built = staging.path().join("libzest_guest.rlib");
        let mut command = self.command();
        command.arg("--sysroot").arg(self.linking_sysroot(work_dir));
        command
            .args(["--crate-type", "rlib", "--crate-name", "zest_guest", "-o"])
            .arg(&built)
            .arg(staging.path().join("lib.rs"));
        run(command, timeout, on_line)?;
        fs::rename(&built, &rlib).map_err(work_err)?;
        Ok(rlib)
    }

    /// Where the guest SDK built by this compiler is kept in `work_dir`.
    fn sdk_path(&self, work_dir: &Path) -> PathBuf {
        work_dir.join(format!("libzest_guest-{}.rlib", hex::encode(&self.build_tag()[..8])))
    }

    /// The sysroot builds use: the copy under `work_dir` whose standard library
    /// links faster (`sysroot`), made the first time; the compiler's own when
    /// the copy cannot be made, which builds the same bytes more slowly.
    /// Chosen once for the first work directory.
    fn linking_sysroot(&self, work_dir: &Path) -> PathBuf {
        let (first, chosen) = self.linking.get_or_init(|| (work_dir.to_path_buf(), self.copy_sysroot(work_dir)));
        if first == work_dir {
            chosen.clone()
        } else {
            self.copy_sysroot(work_dir)
        }
    }

    fn copy_sysroot(&self, work_dir: &Path) -> PathBuf {
        let dir = sysroot::path(work_dir, &hex::encode(&self.build_tag()[..8]));
        if dir.is_dir() {
            return dir;
        }
        let made = fs::create_dir_all(work_dir)
            .and_then(|()| tempfile::Builder::new().prefix("sysroot-").tempdir_in(work_dir))
            .and_then(|staging| {
                let built = staging.path().join("sysroot");
                sysroot::write(&self.sysroot, TARGET, &built)?;
                // Another build may have made it meanwhile: either copy serves.
                match fs::rename(&built, &dir) {
                    Err(_) if dir.is_dir() => Ok(()),
                    renamed => renamed,
                }
            });
        match made {
            Ok(()) => dir,
            Err(err) => {
                tracing::warn!(
                    sysroot = %self.sysroot.display(), work_dir = %work_dir.display(), %err,
                    "cannot copy the wasm32 standard library; builds link against the compiler's own, more slowly"
                );
                self.sysroot.clone()
            }
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        command.args([
            "--edition",
            "2021",
            "--target",
            TARGET,
            // Optimised for size: about a fifth less rustc time than
            // opt-level=2 and less wasm for the node to compile
            // (docs/benchmarks.md, "Extensions").
            "-C",
            "opt-level=s",
            // One codegen unit: for a one-file module, splitting costs rustc
            // more (thin-local LTO across units) than it saves.
            "-C",
            "codegen-units=1",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ]);
        command
    }
}

/// Makes a FIFO at `path`, readable and writable by its owner only.
fn make_fifo(path: &Path) -> std::io::Result<()> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a valid C string for the length of the call.
    if unsafe { libc::mkfifo(path.as_ptr(), 0o600) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A crate name derived from the file stem (`my-ext.rs` → `my_ext`).
fn crate_name(source: &Path) -> String {
    let stem = source.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    match name.chars().next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => name,
        _ => format!("m_{name}"),
    }
}

fn capture(program: &Path, args: &[&str]) -> Result<String, ToolchainError> {
    let spawn = |source| ToolchainError::Spawn { program: program.display().to_string(), source };
    let output = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(spawn)?;
    if !output.status.success() {
        let output = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(ToolchainError::Failed { output });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Each line a compiler prints, as it prints it (progress for a long build).
pub type OnLine<'a> = &'a (dyn Fn(&str) + Sync);

/// Runs `command` to completion, killing it after `timeout`; each line of its
/// stderr goes to `on_line` as it comes, and the whole is the error when it fails.
fn run(mut command: Command, timeout: Duration, on_line: OnLine<'_>) -> Result<(), ToolchainError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ToolchainError::Spawn { program: program.clone(), source })?;
    finish(child, &program, timeout, on_line)
}

/// Waits for `child` (started with its stderr piped) to end, killing it after
/// `timeout`; each line of its stderr goes to `on_line` as it comes, and the
/// whole is the error when it fails.
fn finish(mut child: Child, program: &str, timeout: Duration, on_line: OnLine<'_>) -> Result<(), ToolchainError> {
    let stderr = child.stderr.take().expect("stderr is piped");
    std::thread::scope(|scope| {
        // Read stderr on a thread so a chatty compiler never blocks on a full pipe.
        let reader = scope.spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                on_line(&line);
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let status = match child.wait_timeout(timeout) {
            Ok(Some(status)) => status,
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ToolchainError::TimedOut { seconds: timeout.as_secs() });
            }
            Err(source) => return Err(ToolchainError::Spawn { program: program.to_string(), source }),
        };
        let stderr = reader.join().unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(ToolchainError::Failed { output: stderr.trim_end().to_string() })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uses the standard library widely: strings, formatting, maps, panics.
    const WIDE: &str = r#"
use std::collections::BTreeMap;
use zest_guest::{export, Json};

fn tally(args: Json) -> Result<Json, String> {
    let text = args.as_str().ok_or("a string")?;
    let mut counts = BTreeMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_lowercase()).or_insert(0i64) += 1;
    }
    let n: usize = text.parse().map_err(|e| format!("{:?}", e))?;
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{}={}", k, v + n as i64)).collect();
    Ok(Json::from(summary.join(",")))
}

export!(tally);
"#;

    #[test]
    fn a_module_links_to_the_same_bytes_against_the_copied_standard_library() {
        let rustc = Rustc::find(None).unwrap_or_else(|err| {
            panic!("this test needs a wasm32-capable rustc (scripts/test.sh installs one): {err}")
        });
        let dir = tempfile::tempdir().unwrap();
        let (work, source) = (dir.path().join("work"), dir.path().join("wide.rs"));
        fs::write(&source, WIDE).unwrap();
        let timeout = Duration::from_secs(300);
        let copied = dir.path().join("copied.wasm");
        rustc.compile_module(&source, &copied, &work, dir.path(), timeout, &|_| {}).unwrap();

        let sdk = rustc.guest_sdk(&work, timeout, &|_| {}).unwrap();
        let own = dir.path().join("own.wasm");
        run(rustc.module_command(&rustc.sysroot, &sdk, &source, &own, dir.path()), timeout, &|_| {}).unwrap();
        assert_eq!(fs::read(&copied).unwrap(), fs::read(&own).unwrap());

        // The copy is the one in use, and its rlibs have no debug relocations left.
        let copy = sysroot::path(&work, &hex::encode(&rustc.build_tag()[..8]));
        assert_eq!(rustc.linking_sysroot(&work), copy);
        let std_rlib = |root: &Path| {
            let libs = root.join("lib/rustlib").join(TARGET).join("lib");
            let name = fs::read_dir(&libs).unwrap().map(|e| e.unwrap().file_name()).find(|name| {
                let name = name.to_string_lossy();
                name.starts_with("libstd-") && name.ends_with(".rlib")
            });
            fs::read(libs.join(name.expect("a libstd rlib"))).unwrap()
        };
        let has_debug_relocations = |rlib: &[u8]| rlib.windows(13).any(|w| w == b"reloc..debug_");
        let (original, ours) = (std_rlib(&rustc.sysroot), std_rlib(&copy));
        assert!(has_debug_relocations(&original), "the test means nothing if the original has none");
        assert!(!has_debug_relocations(&ours));
        assert_eq!(original.len(), ours.len());
    }

    fn rustc() -> Rustc {
        Rustc::find(None).unwrap_or_else(|err| {
            panic!("this test needs a wasm32-capable rustc (scripts/test.sh installs one): {err}")
        })
    }

    #[test]
    fn a_spare_rustc_builds_the_next_edit_of_its_file_as_a_fresh_one_does() {
        let rustc = rustc();
        let dir = tempfile::tempdir().unwrap();
        let (work, shown_as) = (dir.path().join("work"), Path::new("/ext"));
        let timeout = Duration::from_secs(300);
        let fresh = |text: &str, name: &str| {
            let source = dir.path().join("wide.rs");
            fs::write(&source, text).unwrap();
            let out = dir.path().join(name);
            rustc.compile_module(&source, &out, &work, shown_as, timeout, &|_| {}).map(|_| fs::read(out).unwrap())
        };
        let edited = WIDE.replace("v + n as i64", "v * 2 + n as i64");
        let expected = fresh(&edited, "fresh.wasm").unwrap();

        let spare = rustc.spare(OsStr::new("wide.rs"), &work, shown_as).unwrap();
        assert!(spare.serves(OsStr::new("wide.rs"), shown_as));
        assert!(!spare.serves(OsStr::new("other.rs"), shown_as) && !spare.serves(OsStr::new("wide.rs"), &work));
        let out = dir.path().join("spare.wasm");
        spare.compile(edited.as_bytes(), &out, timeout, &|_| {}).expect("the spare took the source").unwrap();
        assert_eq!(fs::read(&out).unwrap(), expected);

        // A source that does not compile: the same words, the same paths, line by line.
        let broken = "fn main() {\n    let x: u32 = \"nope\";\n}\n";
        let ToolchainError::Failed { output: expected } = fresh(broken, "broken.wasm").unwrap_err() else {
            panic!("a compile error")
        };
        assert!(expected.contains("/ext/wide.rs:2"), "{expected}");
        let lines = std::sync::Mutex::new(Vec::new());
        let spare = rustc.spare(OsStr::new("wide.rs"), &work, shown_as).unwrap();
        let on_line = |line: &str| lines.lock().unwrap().push(line.to_string());
        let err = spare.compile(broken.as_bytes(), &out, timeout, &on_line).unwrap().unwrap_err();
        assert!(matches!(&err, ToolchainError::Failed { output } if *output == expected), "{err}");
        assert_eq!(lines.into_inner().unwrap().join("\n"), expected);
    }

    fn alive(pid: u32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    #[test]
    fn a_spare_ends_with_its_owner_and_one_that_died_builds_nothing() {
        let rustc = rustc();
        let dir = tempfile::tempdir().unwrap();
        let (work, timeout) = (dir.path().join("work"), Duration::from_secs(300));
        let err = rustc.spare(OsStr::new("a.rs"), &work, dir.path()).unwrap_err();
        assert!(err.to_string().contains("the guest SDK is not built"), "a spare never builds the SDK: {err}");
        rustc.guest_sdk(&work, timeout, &|_| {}).unwrap();
        let spare = rustc.spare(OsStr::new("a.rs"), &work, dir.path()).unwrap();
        let pid = spare.pid().expect("the spare started");
        assert!(alive(pid));
        drop(spare);
        assert!(!alive(pid), "dropping a spare kills and reaps its rustc");

        let spare = rustc.spare(OsStr::new("a.rs"), &work, dir.path()).unwrap();
        // SAFETY: the pid is the spare's own child, alive until reaped.
        assert_eq!(unsafe { libc::kill(spare.pid().unwrap() as libc::pid_t, libc::SIGKILL) }, 0);
        let out = dir.path().join("a.wasm");
        assert!(spare.compile(b"pub fn f() {}", &out, timeout, &|_| {}).is_none());
        assert!(!out.exists());
        let spares = fs::read_dir(&work)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("spare-"));
        assert_eq!(spares.count(), 0, "a spare's directory goes with it");
    }

    #[test]
    fn crate_names_are_valid_identifiers() {
        assert_eq!(crate_name(Path::new("ext/hello.rs")), "hello");
        assert_eq!(crate_name(Path::new("my-ext.rs")), "my_ext");
        assert_eq!(crate_name(Path::new("9lives.rs")), "m_9lives");
    }
}
