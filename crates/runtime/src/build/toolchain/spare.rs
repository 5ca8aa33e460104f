//! A `rustc` started ahead of the next build of a file it already built.
//!
//! Before it reads a byte of source, `rustc` spends about 35 ms of its ~130 ms
//! on a one-function extension loading itself: the dynamic linker relocating
//! `librustc_driver` and `libLLVM` (docs/benchmarks.md, "Extensions", item
//! 2). Edits come in runs on one file, so after a build the node starts
//! the next build's `rustc` at once, with every argument known, reading its
//! source from a FIFO where the copy of the file would be; the next build of
//! that file writes its text into the FIFO and waits for the usual result.
//! Messages, paths and output are those of a build started then.
//!
//! A spare runs on a thread of its own, which starts the process and is its
//! only parent: the process is killed when the thread ends (`PR_SET_PDEATHSIG`),
//! so a spare never outlives its node, even one killed outright. Dropping a
//! spare kills its process and waits for it.

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{finish, OnLine, ToolchainError};

/// A `rustc` waiting for the source of the next build of one file.
#[derive(Debug)]
pub struct Spare {
    file_name: OsString,
    shown_as: PathBuf,
    /// The process id, once the thread has started it (`None`: it could not).
    started: Mutex<mpsc::Receiver<Option<u32>>>,
    pid: OnceLock<Option<u32>>,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// One build handed to a spare.
struct Job {
    source: Vec<u8>,
    out: PathBuf,
    timeout: Duration,
    events: mpsc::Sender<Event>,
}

enum Event {
    Line(String),
    /// The process ended before it took the source: nothing was built.
    Unused,
    Done(Result<(), ToolchainError>),
}

impl Spare {
    /// Starts `command`, which builds `fifo` (a path in `dir`, which the spare
    /// owns from now on) into `built`, for the file `file_name` shown as in
    /// `shown_as`. Returns at once: the process starts on the spare's thread
    /// (forking a large node takes milliseconds), and one that cannot start
    /// makes the spare build nothing.
    pub(super) fn start(
        command: Command,
        dir: tempfile::TempDir,
        fifo: PathBuf,
        built: PathBuf,
        file_name: &OsStr,
        shown_as: &Path,
    ) -> Result<Spare, ToolchainError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let (jobs, queue) = mpsc::channel();
        let (started, pid) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("zest-rustc".into())
            .spawn(move || {
                let _dir = dir;
                match spawn_tied(command) {
                    Ok(child) => {
                        let _ = started.send(Some(child.id()));
                        serve(child, &program, &fifo, &built, &queue);
                    }
                    Err(err) => {
                        tracing::debug!(%err, "cannot start a rustc ahead of the next build");
                        let _ = started.send(None);
                    }
                }
            })
            .map_err(|source| ToolchainError::Spawn { program: "a thread for rustc".into(), source })?;
        Ok(Spare {
            file_name: file_name.to_os_string(),
            shown_as: shown_as.to_path_buf(),
            started: Mutex::new(pid),
            pid: OnceLock::new(),
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Whether this spare builds the file `file_name` shown as in `shown_as`.
    pub fn serves(&self, file_name: &OsStr, shown_as: &Path) -> bool {
        self.file_name == file_name && self.shown_as == shown_as
    }

    /// The process id of the waiting `rustc`, once it has started; `None`
    /// when it could not.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.get_or_init(|| {
            let started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
            started.recv().ok().flatten()
        })
    }

    /// Builds `source` into the module `out`, killing `rustc` after `timeout`;
    /// each line it prints goes to `on_line`. `None` when the process had
    /// ended before it took the source (then nothing ran: build without it).
    pub fn compile(
        mut self,
        source: &[u8],
        out: &Path,
        timeout: Duration,
        on_line: OnLine<'_>,
    ) -> Option<Result<(), ToolchainError>> {
        let (events, received) = mpsc::channel();
        let job = Job { source: source.to_vec(), out: out.to_path_buf(), timeout, events };
        self.jobs.take()?.send(job).ok()?;
        for event in received {
            match event {
                Event::Line(line) => on_line(&line),
                Event::Unused => return None,
                Event::Done(result) => return Some(result),
            }
        }
        None
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        // Closing the queue tells the thread to kill the process.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Spawns `command` so that it is killed when the calling thread ends.
fn spawn_tied(mut command: Command) -> std::io::Result<Child> {
    let parent = std::process::id();
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only makes two system calls,
    // which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have ended before the line above: then nothing
            // would ever kill this process.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn()
}

/// The spare's thread, once `child` runs: waits for one job (or for the spare
/// to be dropped, which kills `child`), hands it the source through `fifo`
/// and reports what `child` made of it.
fn serve(mut child: Child, program: &str, fifo: &Path, built: &Path, queue: &mpsc::Receiver<Job>) {
    let Ok(job) = queue.recv() else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    let deadline = Instant::now() + job.timeout;
    match hand_over(&mut child, fifo, &job.source, deadline) {
        Ok(true) => {}
        Ok(false) | Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = job.events.send(Event::Unused);
            return;
        }
    }
    let on_line = |line: &str| drop(job.events.send(Event::Line(line.to_string())));
    let left = deadline.saturating_duration_since(Instant::now());
    let result = finish(child, program, left, &on_line).and_then(|()| {
        std::fs::rename(built, &job.out).map_err(|source| ToolchainError::WorkDir { path: job.out.clone(), source })
    });
    let _ = job.events.send(Event::Done(result));
}

/// Writes `source` into `fifo` for `child` to read, then closes it (the end of
/// the file for `child`). `false` when `child` ends, or has not opened `fifo`
/// by `deadline`, before taking all of it.
fn hand_over(child: &mut Child, fifo: &Path, source: &[u8], deadline: Instant) -> std::io::Result<bool> {
    // Opening a FIFO to write without blocking fails until a reader has it
    // open: `child`, once it has loaded itself.
    let mut writer = loop {
        match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fifo) {
            Ok(writer) => break writer,
            Err(err) if err.raw_os_error() == Some(libc::ENXIO) => {
                if child.try_wait()?.is_some() || Instant::now() >= deadline {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(err) => return Err(err),
        }
    };
    let mut rest = source;
    while !rest.is_empty() {
        match writer.write(rest) {
            Ok(written) => rest = &rest[written..],
            // The FIFO is full: `child` reads it while it is alive.
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                if child.try_wait()?.is_some() || Instant::now() >= deadline {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}
