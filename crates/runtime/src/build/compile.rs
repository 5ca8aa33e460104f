//! `compile: true` (CONTRACT.md §5.3): running an app's `build` command inside the
//! live node.
//!
//! The command runs through `sh -c` in the app directory, as the leader of a new
//! process group, with stdin closed. Its stdout and stderr are read line by line as
//! they arrive and handed to a callback (the node publishes them as
//! `zest.build.output` events); the last lines are kept for the error message.
//! After `limits.build_timeout_ms` the whole process group is killed, so a build
//! that started children of its own leaves nothing running.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use crate::report::CompileReport;
use crate::report::Stream;

/// How many of the last output lines a failed build reports.
const TAIL_LINES: usize = 20;

/// Runs `command` in `dir`, calling `on_line` for each output line as it arrives.
/// Errors only when the shell cannot be started.
pub(crate) fn run_build(
    command: &str,
    dir: &Path,
    timeout: Duration,
    on_line: &dyn Fn(Stream, &str),
) -> std::io::Result<CompileReport> {
    let mut shell = Command::new("sh");
    shell.arg("-c").arg(command).current_dir(dir);
    let mut report = run_process(shell, timeout, on_line)?;
    report.command = Some(command.to_string());
    Ok(report)
}

/// Runs `command` as [`run_build`] runs a build command: leading a new process
/// group, stdin closed, each output line to `on_line`, the group killed after
/// `timeout`. The report's `command` is the program's name. Errors only when
/// the program cannot be started. Source extensions' tools run so too
/// (`source.rs`).
pub(crate) fn run_process(
    mut command: Command,
    timeout: Duration,
    on_line: &dyn Fn(Stream, &str),
) -> std::io::Result<CompileReport> {
    let started = Instant::now();
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child =
        command.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (lines, received) = mpsc::channel();
    let readers = [
        spawn_reader(child.stdout.take().expect("stdout is piped"), Stream::Stdout, lines.clone()),
        spawn_reader(child.stderr.take().expect("stderr is piped"), Stream::Stderr, lines),
    ];
    let deadline = started + timeout;
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut keep = |stream: Stream, line: String| {
        on_line(stream, &line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    };
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok((stream, line)) => keep(stream, line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break, // both pipes closed
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                kill_group(child.id());
                // Take what was printed before the kill, without waiting on a
                // descendant that escaped the group and still holds a pipe.
                let grace = Instant::now() + Duration::from_secs(1);
                while let Ok((stream, line)) = received.recv_timeout(grace.saturating_duration_since(Instant::now())) {
                    keep(stream, line);
                }
                break;
            }
        }
    }
    let status = child.wait()?;
    if !timed_out {
        for reader in readers {
            let _ = reader.join();
        }
    }
    Ok(CompileReport {
        ran: true,
        command: Some(program),
        duration: started.elapsed(),
        exit_code: if timed_out { None } else { status.code() },
        timed_out,
        tail: tail.into_iter().collect(),
    })
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    lines: mpsc::Sender<(Stream, String)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer).trim_end_matches(['\n', '\r']).to_string();
                    if lines.send((stream, line)).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// Kills the process group led by `pid` (the build and everything it started).
fn kill_group(pid: u32) {
    // SAFETY: killpg only sends a signal; the group was created for this build.
    let rc = unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
    if rc != 0 {
        tracing::warn!(pid, error = %std::io::Error::last_os_error(), "cannot kill the build's process group");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn build(command: &str, timeout: Duration) -> (CompileReport, Vec<(Stream, String)>) {
        let dir = tempfile::tempdir().unwrap();
        let seen = Mutex::new(Vec::new());
        let report = run_build(command, dir.path(), timeout, &|stream, line| {
            seen.lock().unwrap().push((stream, line.to_string()));
        })
        .unwrap();
        (report, seen.into_inner().unwrap())
    }

    #[test]
    fn a_build_streams_both_outputs_and_reports_its_exit_code() {
        let (report, seen) = build("echo one; echo two >&2; pwd >/dev/null", Duration::from_secs(30));
        assert_eq!(report.exit_code, Some(0));
        assert!(report.succeeded());
        assert!(seen.contains(&(Stream::Stdout, "one".into())), "{seen:?}");
        assert!(seen.contains(&(Stream::Stderr, "two".into())), "{seen:?}");
    }

    #[test]
    fn a_failing_build_keeps_its_last_lines() {
        let (report, _) = build("for i in $(seq 1 30); do echo line $i; done; exit 3", Duration::from_secs(30));
        assert_eq!(report.exit_code, Some(3));
        assert!(!report.succeeded());
        assert_eq!(report.tail.len(), TAIL_LINES);
        assert_eq!(report.tail.last().unwrap(), "line 30");
        let message = report.failure_message();
        assert!(message.starts_with("build `for i in") && message.contains("exited with status 3"), "{message}");
        assert!(message.contains("line 11") && !message.contains("line 10\n"), "{message}");
    }

    #[test]
    fn a_build_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let command = format!("echo started; (sleep 2; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let report = run_build(&command, dir.path(), Duration::from_millis(300), &|_, _| {}).unwrap();
        assert!(report.timed_out && !report.succeeded());
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(report.tail, ["started"]);
        assert!(report.failure_message().contains("was killed after"), "{}", report.failure_message());
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "a child of the build outlived the kill");
    }
}
