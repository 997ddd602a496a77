//! Discovery: devices found by rules, and followed while the agent runs.

pub mod watch;
