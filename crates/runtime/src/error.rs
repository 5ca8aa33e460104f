//! Typed errors of the runtime.
//!
//! [`CallError`] is what a failed guest call turns into: a concrete cause a caller
//! can match on (a trap keeps its [`wasmtime::Trap`] code). Reload failures are not
//! errors of this kind: they are data inside a [`crate::ReloadResult`].

use std::path::PathBuf;

/// Why a call into a module failed. A failed call never takes the node down; the
/// instance it ran on is discarded and the next call gets a fresh one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("module `{module}` is not loaded")]
    ModuleNotFound { module: String },
    #[error("module `{module}` has no function `{function}`")]
    FunctionNotFound { module: String, function: String },
    /// Not JSON, or (a component) values that do not fit the WIT types.
    #[error("invalid arguments to {module}.{function}: {message}")]
    InvalidArgs { module: String, function: String, message: String },
    /// The guest called the `error` import.
    #[error("{module}.{function} failed: {message}")]
    Failed { module: String, function: String, message: String },
    #[error("{module}.{function} trapped: {trap}")]
    Trap { module: String, function: String, trap: wasmtime::Trap },
    #[error("{module}.{function} exceeded the call deadline of {timeout_ms} ms")]
    Timeout { module: String, function: String, timeout_ms: u64 },
    #[error("{module}.{function} exceeded the memory limit of {limit_mb} MiB")]
    MemoryLimit { module: String, function: String, limit_mb: u32 },
    #[error("{module}.{function} returned invalid output: {message}")]
    InvalidOutput { module: String, function: String, message: String },
    /// The version the call ran on was hard-purged (`force`) while it ran.
    #[error("{module}.{function} was interrupted: its version was hard-purged")]
    Purged { module: String, function: String },
    #[error("call depth limit of {limit} nested calls exceeded at {module}.{function}")]
    DepthExceeded { module: String, function: String, limit: u32 },
    /// Anything else the engine reported (an instantiation failure, a host fault).
    #[error("{module}.{function} failed in the engine: {message}")]
    Engine { module: String, function: String, message: String },
}

impl CallError {
    /// True for the errors that mean "no such module or function" (`NOT_FOUND` on
    /// the wire) rather than "the call ran and failed" (`CALL_FAILED`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CallError::ModuleNotFound { .. } | CallError::FunctionNotFound { .. })
    }
}

/// Why a message to a process (or starting one) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProcessError {
    #[error("no process named `{process}`")]
    NotFound { process: String },
    #[error("a process named `{process}` already exists")]
    AlreadyExists { process: String },
    #[error("a message to `{process}` is not valid JSON: {message}")]
    InvalidJson { process: String, message: String },
    #[error("cannot start a process of `{module}`: {message}")]
    Start { module: String, message: String },
    /// The handler failed; the process was restarted with its init args.
    #[error("process `{process}` crashed handling the message: {cause}")]
    Crashed { process: String, cause: CallError },
    #[error("no reply from process `{process}` within {timeout_ms} ms; the message was withdrawn")]
    Timeout { process: String, timeout_ms: u64 },
    /// Given up on after too many crashes, or stopped.
    #[error("process `{process}` is down: {cause}")]
    Down { process: String, cause: String },
}

impl ProcessError {
    /// True for "no such process" (`NOT_FOUND` on the wire).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ProcessError::NotFound { .. })
    }
}

/// Why a node could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(
        "the data directory {} is in use by another zest node (its lock file {} is held); \
         stop that node or give this one a data directory of its own",
        path.display(), lock_file.display()
    )]
    DataDirInUse { path: PathBuf, lock_file: PathBuf },
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
    #[error("cannot start the background writer thread: {0}")]
    Background(std::io::Error),
    #[error("cannot create a temporary directory for Rust builds: {0}")]
    TempDir(std::io::Error),
}
