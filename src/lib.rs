//! edgeplex: a device agent for edge Kubernetes nodes.
//!
//! It opens each camera and serial sensor once and publishes their frames and samples into
//! shared-memory rings ([`ring`]) that any number of pods read zero-copy. See `ARCHITECTURE.md`
//! for the map of the code and `docs/RING.md` for the ring format.

pub mod agent;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod deviceplugin;
pub mod export;
pub mod failover;
pub mod http;
pub mod kube;
pub mod metrics;
pub mod node;
pub mod power;
/// The ring format, writer and reader: the [`edgeplex_ring`] crate, re-exported.
pub use edgeplex_ring as ring;
pub mod ringtool;
pub mod shutdown;
pub mod source;
pub mod telemetry;

/// Exit code for a configuration or usage error (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when the input (a ring file) is missing or unusable (`EX_NOINPUT`, `EX_DATAERR`).
pub const EXIT_NOINPUT: u8 = 66;

/// The process exit code for an error that reached `main`.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<config::ConfigError>().is_some() {
        return EXIT_CONFIG;
    }
    match e.downcast_ref::<ring::RingError>() {
        Some(ring::RingError::NotFound { .. })
        | Some(ring::RingError::Corrupt { .. })
        | Some(ring::RingError::NotAFile { .. }) => EXIT_NOINPUT,
        Some(ring::RingError::NotTmpfs { .. }) | Some(ring::RingError::BadSpec { .. }) => {
            EXIT_CONFIG
        }
        _ => 1,
    }
}
