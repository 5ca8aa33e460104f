//! Node settings that the runtime itself consumes (CONTRACT.md §9: `[node]`,
//! `[extensions]`, `[limits]`, and the restart policy of processes); parsing the
//! TOML file is the control plane's business. Every type here is plain data, so
//! any file of the crate may read its settings without reaching up.

use std::path::PathBuf;
use std::time::Duration;

/// Everything a [`crate::Node`] needs to start; every field has a default.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the compile cache, extension records and `.rs` builds live. `None` keeps
    /// nothing on disk: every build is compiled.
    pub data_dir: Option<PathBuf>,
    pub limits: Limits,
    pub compiler: Compiler,
    /// When crashed processes restart, and when they are given up on.
    pub restart: RestartPolicy,
    /// Where extensions may live, and which tools build `.rs`, `.js` and `.py` ones.
    pub extensions: ExtensionsConfig,
    /// With [`Compiler::Auto`]: how long a module must run a Winch build, no
    /// newer one coming (and no reload of any module loading a build), before
    /// the same build compiled by Cranelift replaces its machine code.
    /// `None`: never (Winch code stays).
    pub tier_up_after: Option<Duration>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: None,
            limits: Limits::default(),
            compiler: Compiler::Auto,
            restart: RestartPolicy::default(),
            extensions: ExtensionsConfig::default(),
            tier_up_after: Some(Duration::from_millis(500)),
        }
    }
}

/// Resource limits applied to every guest call and reload (CONTRACT.md §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `limits.call_timeout_ms`: wall-clock deadline of one call, nested calls included.
    pub call_timeout: Duration,
    /// `limits.memory_mb`: the most linear memory one instance may grow to.
    pub memory_mb: u32,
    /// `limits.build_timeout_ms`: how long a build (`compile: true`, `rustc`) may run.
    pub build_timeout: Duration,
    /// `limits.drain_timeout_ms`: how long a reload waits for calls on an old version.
    pub drain_timeout: Duration,
    /// `limits.instances`: how many instances may exist at once per compiler
    /// (processes, pooled call instances and those in a migration).
    pub instances: u32,
    /// `limits.module_mb`: the largest build (a `.wasm`, a `.wat` text, what
    /// rustc made of a `.rs`) a reload accepts.
    pub module_mb: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout: Duration::from_millis(5000),
            memory_mb: 256,
            build_timeout: Duration::from_millis(600_000),
            drain_timeout: Duration::from_millis(5000),
            instances: 20_000,
            module_mb: 64,
        }
    }
}

impl Limits {
    pub(crate) fn memory_bytes(&self) -> usize {
        (self.memory_mb as usize) << 20
    }

    pub(crate) fn module_bytes(&self) -> u64 {
        u64::from(self.module_mb) << 20
    }

    /// When a drain starting now gives up; a timeout too long to add means a year.
    pub(crate) fn drain_deadline(&self) -> std::time::Instant {
        let now = std::time::Instant::now();
        now.checked_add(self.drain_timeout).unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
    }
}

/// Which wasmtime compiler turns a module into machine code.
///
/// `Auto` tiers: a build the node has not compiled before is compiled by the
/// baseline compiler Winch, the fastest at every size (`docs/benchmarks.md`),
/// and serves at once; once its module has been quiet for
/// [`NodeConfig::tier_up_after`], the optimising Cranelift compiles the same
/// build on a low-priority thread and its code replaces Winch's in place. A
/// build whose Cranelift code is cached loads that directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compiler {
    Cranelift,
    Winch,
    Auto,
}

impl Compiler {
    /// Its name in configuration and on the wire: `cranelift`, `winch`, `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compiler::Cranelift => "cranelift",
            Compiler::Winch => "winch",
            Compiler::Auto => "auto",
        }
    }
}

/// `[extensions]` of the node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionsConfig {
    /// Where extension files may live; links are resolved before the check.
    /// Default: `<cwd>/extensions`.
    pub roots: Vec<PathBuf>,
    /// `extensions.rustc`: the compiler for `.rs` files; `None` is `auto`, the
    /// first wasm32-capable one found.
    pub rustc: Option<PathBuf>,
    /// `extensions.javascript`: the tool that builds `.js` files
    /// (`componentize-qjs`); `None` is `auto`, the one on the `PATH`. A bare
    /// name is looked up on the `PATH`.
    pub javascript: Option<PathBuf>,
    /// `extensions.python`: the tool that builds `.py` files
    /// (`componentize-py`); as `javascript`.
    pub python: Option<PathBuf>,
}

impl Default for ExtensionsConfig {
    fn default() -> Self {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        ExtensionsConfig { roots: vec![cwd.join("extensions")], rustc: None, javascript: None, python: None }
    }
}

/// When a crashed process is restarted, and when it is given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// More crashes than this within `window` and the process is given up on.
    pub max_restarts: usize,
    pub window: Duration,
    /// The wait before the first restart; it doubles with each crash in the window.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(10),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RestartPolicy {
    pub(crate) fn backoff_after(&self, crashes: usize) -> Duration {
        let doublings = crashes.saturating_sub(1).min(20) as u32;
        self.backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }
}
