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
pub mod discovery;
pub mod error;
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
pub mod sched;
pub mod settings;
pub mod shutdown;
pub mod source;
pub mod telemetry;
pub mod thread;

pub use error::{Error, EXIT_CONFIG, EXIT_NOINPUT};
