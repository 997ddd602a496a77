//! PLACEHOLDER written by the lead so the tree builds while the serial source is being written:
//! the serial-source engineer replaces this whole file (and may add `pub mod framing;` to
//! src/source/mod.rs next to `pub mod serial;`). Keep the names `SerialSettings` (Deserialize,
//! `validate(&self, prefix) -> Result<(), String>`) and `SerialOpener::new(name, settings)`
//! (implements `source::Opener`): src/config.rs and src/agent.rs use them.

use serde::Deserialize;

/// Serial stream settings (placeholder).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SerialSettings {
    /// Device path.
    pub device: std::path::PathBuf,
}

impl SerialSettings {
    /// Check the settings.
    pub fn validate(&self, _prefix: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Opener (placeholder).
#[derive(Debug)]
pub struct SerialOpener;

impl SerialOpener {
    /// An opener for stream `name`.
    pub fn new(_name: &str, _settings: SerialSettings) -> SerialOpener {
        SerialOpener
    }
}

impl super::Opener for SerialOpener {
    type Device = super::synthetic::NmeaSimSensor;

    fn open(&mut self) -> Result<Self::Device, super::SourceError> {
        Err(super::SourceError::Unsupported {
            device: "serial".into(),
            detail: "placeholder".into(),
        })
    }
}
