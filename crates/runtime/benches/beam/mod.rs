//! The BEAM's code server, run beside zest's reloads in the same bench
//! (`code_server.rs`, `components.rs`) by `beam_reload.escript` when `escript`
//! is on the PATH (Debian: `erlang-base`), else its figures measured here.

use std::time::Duration;

/// The BEAM's code server on these machines (`code:soft_purge` + `code:load_file`,
/// OTP 25 JIT), measured 2026-11-25 (issue 12), in ms: the baseline when the
/// BEAM cannot be run here.
pub const BEAM_RELOAD_MS: [(usize, f64); 3] = [(10, 0.83), (1_000, 6.6), (10_000, 61.0)];

/// The BEAM's side of the latency section, run by `beam_reload.escript`.
pub struct Beam {
    /// Where the script keeps its builds between its runs.
    dir: tempfile::TempDir,
}

impl Beam {
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/beam_reload.escript");

    /// `None` when `escript` cannot be run (or `ZEST_BENCH_BEAM=fixed`).
    pub fn find() -> Option<Beam> {
        if std::env::var("ZEST_BENCH_BEAM").is_ok_and(|v| v == "fixed") {
            return None;
        }
        let probe = std::process::Command::new("escript").arg("-h").output();
        probe.ok().map(|_| Beam { dir: tempfile::tempdir().unwrap() })
    }

    /// `rounds` samples, in ms, of the BEAM reloading a module of `functions`
    /// functions: write the `.beam` file, `code:soft_purge` + `code:load_file`,
    /// and call the new code (the protocol of `code_server.rs`'s `timed_reload`).
    pub fn samples(&self, functions: usize, rounds: usize) -> Vec<Duration> {
        let output = std::process::Command::new("escript")
            .arg(Self::SCRIPT)
            .arg(self.dir.path())
            .arg(functions.to_string())
            .arg(rounds.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        let line = stdout.lines().find(|l| l.starts_with("beam ")).expect("the script prints its samples");
        line.split_whitespace().skip(2).map(|ms| Duration::from_secs_f64(ms.parse::<f64>().unwrap() / 1e3)).collect()
    }
}
