//! The one list of stream kinds: for each, its `type` name in the configuration, its settings,
//! the opener that runs it, and the class of device it makes this node offer (the
//! `edgeplex.io/camera` and `edgeplex.io/serial` labels).
//!
//! A new kind of source is its own module under `source/` (settings with a `validate` method,
//! an [`Opener`](super::Opener)) plus one line in the `stream_kinds!` list below. Nothing else
//! in the agent names kinds: configuration parsing, thread start-up, node labels and the
//! example-config check all go through [`StreamConfig`].

use std::io;
use std::thread::JoinHandle;

use serde::Serialize;
use toml::{Table, Value};

use super::camera::{CameraOpener, CameraSettings};
use super::serial::{SerialOpener, SerialSettings};
use super::synthetic::{NmeaSimOpener, NmeaSimSettings, TestPatternOpener, TestPatternSettings};
use super::{supervise, Backoff, Opener, RingTarget, StreamHealth};
use crate::settings::{typed, ConfigError};
use crate::shutdown::Shutdown;

/// What kind of device a stream makes its node offer, for the node's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// Frames: `edgeplex.io/camera=true` while such a stream is up.
    Camera,
    /// Samples: `edgeplex.io/serial=true` while such a stream is up.
    Serial,
}

macro_rules! stream_kinds {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $settings:ty, $opener:ty, $class:expr; )*) => {
        /// One configured stream: its kind and that kind's settings.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(tag = "type")]
        pub enum StreamConfig {
            $( $(#[$doc])* #[serde(rename = $name)] $variant($settings), )*
        }

        impl StreamConfig {
            /// Every kind's `type` name, in the order they are listed.
            pub const TYPES: &'static [&'static str] = &[$($name),*];

            /// The `type` value of this stream.
            pub fn type_name(&self) -> &'static str {
                match self { $( StreamConfig::$variant(_) => $name, )* }
            }

            /// The class of device this stream makes the node offer.
            pub fn class(&self) -> DeviceClass {
                match self { $( StreamConfig::$variant(_) => $class, )* }
            }

            /// Parse the settings of a stream of kind `type_name` from `table` (the stream's
            /// table without its `type` key), at dotted key `prefix`, and validate them.
            pub fn parse(type_name: &str, table: Table, prefix: &str) -> Result<StreamConfig, ConfigError> {
                let stream = match type_name {
                    $( $name => StreamConfig::$variant(typed::<$settings>(table, prefix)?), )*
                    other => return Err(ConfigError(format!(
                        "{prefix}.type = {other:?} is unknown; allowed: {}", Self::TYPES.join(", ")
                    ))),
                };
                match &stream {
                    $( StreamConfig::$variant(s) => s.validate(prefix).map_err(ConfigError)?, )*
                }
                Ok(stream)
            }

            /// The ring a stream called `name` with these settings is planned to need (a camera's
            /// real size is known only once it negotiated its format), for checks at load time.
            pub fn planned_ring(&self, name: &str) -> crate::ring::RingSpec {
                match self { $( StreamConfig::$variant(s) => s.ring_spec(name), )* }
            }

            /// The keys a stream of kind `type_name` accepts besides `type`.
            pub fn keys(type_name: &str) -> Vec<String> {
                match type_name {
                    $( $name => crate::settings::known_keys::<$settings>(Table::new()), )*
                    _ => Vec::new(),
                }
            }

            /// Start the stream's supervised thread, publishing into `target`.
            pub fn spawn(
                &self,
                name: &str,
                target: RingTarget,
                health: &StreamHealth,
                shutdown: &Shutdown,
                backoff: &Backoff,
            ) -> io::Result<JoinHandle<()>> {
                match self {
                    $( StreamConfig::$variant(s) => spawn(<$opener>::new(name, s.clone()), target, health, shutdown, backoff), )*
                }
            }
        }
    };
}

stream_kinds! {
    /// A V4L2 camera.
    Camera = "camera", CameraSettings, CameraOpener, DeviceClass::Camera;
    /// A serial sensor.
    Serial = "serial", SerialSettings, SerialOpener, DeviceClass::Serial;
    /// The synthetic test-pattern camera (`edgeplex demo`, machines without hardware).
    TestPattern = "test-pattern", TestPatternSettings, TestPatternOpener, DeviceClass::Camera;
    /// The synthetic NMEA sensor.
    NmeaSim = "nmea-sim", NmeaSimSettings, NmeaSimOpener, DeviceClass::Serial;
}

impl StreamConfig {
    /// Parse `[stream.NAME]`: a table with a `type` and that kind's settings.
    pub fn from_value(value: Value, prefix: &str) -> Result<StreamConfig, ConfigError> {
        let types = Self::TYPES.join(", ");
        let Value::Table(mut t) = value else {
            return Err(ConfigError(format!(
                "{prefix} must be a table with a type, e.g. [{prefix}] type = \"camera\""
            )));
        };
        match t.remove("type") {
            Some(Value::String(kind)) => Self::parse(&kind, t, prefix),
            Some(v) => Err(ConfigError(format!(
                "{prefix}.type = {v} must be one of: {types}"
            ))),
            None => Err(ConfigError(format!(
                "{prefix}.type is required: one of {types}"
            ))),
        }
    }
}

fn spawn<O: Opener + 'static>(
    opener: O,
    target: RingTarget,
    health: &StreamHealth,
    shutdown: &Shutdown,
    backoff: &Backoff,
) -> io::Result<JoinHandle<()>> {
    let (health, shutdown, backoff) = (health.clone(), shutdown.clone(), backoff.clone());
    std::thread::Builder::new()
        .name(format!("stream-{}", health.name()))
        .spawn(move || supervise(opener, &target, &health, &shutdown, backoff))
}
