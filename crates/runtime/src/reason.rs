//! Why a reload step failed or was left alone: the stable reason strings of
//! CONTRACT.md §5.1, and the two entries of a result that carry one (`skipped[]`
//! and `errors[]`).
//!
//! These sit at the bottom of the crate: the engine, processes, extensions,
//! manifests and the reload orchestrator all report with them, and none of them
//! needs to know about the others to do so.

use std::fmt;

/// The stable reason strings of CONTRACT.md §5.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    NotFound,
    AppNotFound,
    Unchanged,
    InUse,
    EmptyPath,
    Enoent,
    NotAFile,
    ForbiddenPath,
    UnsupportedExtension,
    CompileError,
    CompileFailed,
    InvalidModule,
    NotRunning,
    CodeChangeFailed,
    MissingExport,
    InvalidCodeChangeTarget,
    RolledBack,
    Timeout,
    /// The new build lacks a callable of the current one, or changes its
    /// type, and the request did not allow it (`allow_breaking`).
    BreakingChange,
    /// A reload step panicked (a bug in zest). See `docs/reload.md`.
    InternalError,
    /// Cluster (§10): a target never answered its prepare.
    NodeUnreachable,
    /// Cluster: a target answered but could not stage the builds.
    PrepareFailed,
    /// Cluster: etcd cannot be reached; nothing was changed.
    ClusterUnavailable,
    /// Cluster: the coordinator's lease (and with it the lock) was lost.
    LeaseLost,
    /// Cluster: fetched bytes whose sha256 is not the one asked for.
    ArtifactMismatch,
}

impl Reason {
    pub const ALL: [Reason; 25] = [
        Reason::NotFound,
        Reason::AppNotFound,
        Reason::Unchanged,
        Reason::InUse,
        Reason::EmptyPath,
        Reason::Enoent,
        Reason::NotAFile,
        Reason::ForbiddenPath,
        Reason::UnsupportedExtension,
        Reason::CompileError,
        Reason::CompileFailed,
        Reason::InvalidModule,
        Reason::NotRunning,
        Reason::CodeChangeFailed,
        Reason::MissingExport,
        Reason::InvalidCodeChangeTarget,
        Reason::RolledBack,
        Reason::Timeout,
        Reason::BreakingChange,
        Reason::InternalError,
        Reason::NodeUnreachable,
        Reason::PrepareFailed,
        Reason::ClusterUnavailable,
        Reason::LeaseLost,
        Reason::ArtifactMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "not_found",
            Reason::AppNotFound => "app_not_found",
            Reason::Unchanged => "unchanged",
            Reason::InUse => "in_use",
            Reason::EmptyPath => "empty_path",
            Reason::Enoent => "enoent",
            Reason::NotAFile => "not_a_file",
            Reason::ForbiddenPath => "forbidden_path",
            Reason::UnsupportedExtension => "unsupported_extension",
            Reason::CompileError => "compile_error",
            Reason::CompileFailed => "compile_failed",
            Reason::InvalidModule => "invalid_module",
            Reason::NotRunning => "not_running",
            Reason::CodeChangeFailed => "code_change_failed",
            Reason::MissingExport => "missing_export",
            Reason::InvalidCodeChangeTarget => "invalid_code_change_target",
            Reason::RolledBack => "rolled_back",
            Reason::Timeout => "timeout",
            Reason::BreakingChange => "breaking_change",
            Reason::InternalError => "internal_error",
            Reason::NodeUnreachable => "node_unreachable",
            Reason::PrepareFailed => "prepare_failed",
            Reason::ClusterUnavailable => "cluster_unavailable",
            Reason::LeaseLost => "lease_lost",
            Reason::ArtifactMismatch => "artifact_mismatch",
        }
    }

    /// The reason of a contract string (a result read back from another node).
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|reason| reason.as_str() == text)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A target left alone, with why (`skipped[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub target: String,
    pub reason: Reason,
}

/// A target that failed, with why and the human detail (`errors[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub target: String,
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    pub fn new(target: impl Into<String>, reason: Reason, message: impl Into<String>) -> Self {
        Failure { target: target.into(), reason, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_the_contract_strings_and_parse_back() {
        let strings: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            strings,
            [
                "not_found",
                "app_not_found",
                "unchanged",
                "in_use",
                "empty_path",
                "enoent",
                "not_a_file",
                "forbidden_path",
                "unsupported_extension",
                "compile_error",
                "compile_failed",
                "invalid_module",
                "not_running",
                "code_change_failed",
                "missing_export",
                "invalid_code_change_target",
                "rolled_back",
                "timeout",
                "breaking_change",
                "internal_error",
                "node_unreachable",
                "prepare_failed",
                "cluster_unavailable",
                "lease_lost",
                "artifact_mismatch",
            ]
        );
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(Reason::parse("banana"), None);
    }
}
