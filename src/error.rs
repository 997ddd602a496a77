//! The binary's edge: every command's error, and the exit code it maps to.
//!
//! Exit codes: 64 (`EX_USAGE`) for a configuration, flag or argument the user must change; 66
//! (`EX_NOINPUT`) for a missing or unusable ring; 1 for anything else.

use crate::agent::AgentError;
use crate::failover::FailoverError;
use crate::ring::RingError;
use crate::settings::ConfigError;

/// Exit code for a configuration or usage error (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when the input (a ring file) is missing or unusable (`EX_NOINPUT`, `EX_DATAERR`).
pub const EXIT_NOINPUT: u8 = 66;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value, flag or argument is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `edgeplex run` or `demo` could not start.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// `edgeplex failover` could not start.
    #[error(transparent)]
    Failover(#[from] FailoverError),
    /// A tool command (`ring`, `export`, `bench`) failed; its chain says why.
    #[error("{0:#}")]
    Tool(#[from] anyhow::Error),
}

impl Error {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_CONFIG,
            Error::Agent(e) if e.is_config() => EXIT_CONFIG,
            Error::Agent(_) => 1,
            Error::Failover(
                FailoverError::Kube(_) | FailoverError::NoCluster | FailoverError::Listen { .. },
            ) => EXIT_CONFIG,
            Error::Failover(_) => 1,
            Error::Tool(e) => {
                if e.chain().any(|c| c.is::<ConfigError>()) {
                    return EXIT_CONFIG;
                }
                match e.chain().find_map(|c| c.downcast_ref::<RingError>()) {
                    Some(r) => ring_exit_code(r),
                    None => 1,
                }
            }
        }
    }
}

/// The exit code for a ring error: 66 when the ring is missing or unusable, 64 when a setting
/// is at fault.
pub fn ring_exit_code(e: &RingError) -> u8 {
    match e {
        RingError::NotFound { .. }
        | RingError::Corrupt { .. }
        | RingError::NotAFile { .. }
        | RingError::NotAllocated { .. } => EXIT_NOINPUT,
        RingError::NotTmpfs { .. } | RingError::BadSpec { .. } | RingError::Untrusted { .. } => {
            EXIT_CONFIG
        }
        _ => 1,
    }
}
