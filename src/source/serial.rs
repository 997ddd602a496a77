//! The serial source: a serial port (UART, USB serial adapter, pty) read through the `serialport`
//! crate, framed into messages ([`super::framing`]) and published into the stream's ring.
//!
//! This module owns the port settings ([`SerialSettings`]), opening the port and mapping its
//! errors to [`SourceError`] ([`SerialOpener`]), and the read-frame-publish loop
//! ([`SerialDevice`]). It must not retry, sleep or decide about backoff (that is
//! [`super::supervise`]'s job), must not write to the port, and must never lose a byte silently:
//! every byte read is published or counted in [`StreamHealth::dropped`].
//!
//! # Timestamps
//! Each message carries `capture_ns` = CLOCK_REALTIME (flag `FLAG_CAPTURE_REALTIME`) taken when
//! the `read` that delivered the message's last byte returned. A chunk flushed after an idle gap,
//! or a partial message flushed when the port vanished, carries the time of the read that
//! delivered its last byte, not the flush time. The serial driver and line discipline buffer
//! bytes before we read them, so the timestamp can trail the wire by the port's buffering (up to
//! one `read`'s worth at the configured baud rate, plus scheduling latency).
//!
//! `device_seq` counts the stream's messages from 0 since the stream started in this process and
//! continues across reconnects.
//!
//! # Disconnects
//! A port whose device vanished (USB adapter unplugged, pty master closed) reports a hang-up
//! (`POLLHUP`, seen as `BrokenPipe`), `EIO`, `ENXIO` or `ENODEV`, or reads of 0 bytes; each is
//! [`SourceError::Disconnected`]. Before returning it, a partial message in the framer is
//! published flagged `FLAG_TRUNCATED` (see [`super::framing`]). Bytes the kernel still held for
//! the vanished port are discarded by the kernel and cannot be counted. When the supervisor stops
//! the stream (shutdown), a partial message is counted as dropped.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serialport::SerialPort;

use super::framing::{Event, Framer, Framing};
use super::{Device, Opener, SourceError, StreamHealth};
use crate::ring::{self, layout, Meta, RingError, RingSpec, StreamKind, Writer};

/// Lowest accepted baud rate.
pub const MIN_BAUD: u32 = 50;
/// Highest accepted baud rate.
pub const MAX_BAUD: u32 = 4_000_000;
/// Most slots a serial ring may have.
pub const MAX_SLOT_COUNT: u32 = 65_536;
/// Most memory one serial ring's slots may take (256 MiB).
pub const MAX_RING_BYTES: u64 = 256 << 20;

/// Parity bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None.
    #[default]
    None,
    /// XON/XOFF in band: the kernel consumes the bytes 0x11 and 0x13, so they never reach the
    /// ring. Do not use it with binary data.
    Software,
    /// RTS/CTS lines.
    Hardware,
}

/// Settings of one serial stream, as configured. Call [`SerialSettings::validate`] before use.
///
/// ```toml
/// device = "/dev/serial/by-id/usb-u-blox_AG_GNSS_receiver-if00"
/// baud = 9600
/// framing = { type = "lines", max_len = 128 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSettings {
    /// The port: any path, symlinks included (`/dev/serial/by-id/...` names survive re-plugging;
    /// `/dev/ttyUSB0` may change). Resolved again on every reopen.
    pub device: PathBuf,
    /// Baud rate, 50 to 4000000 (default 9600).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Data bits per character, 5 to 8 (default 8).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity (default none).
    #[serde(default)]
    pub parity: Parity,
    /// Stop bits, 1 or 2 (default 1).
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Flow control (default none).
    #[serde(default)]
    pub flow_control: FlowControl,
    /// How bytes become messages (default: lines of at most 256 bytes ending in `\n`). The
    /// largest message it allows is the ring's slot size.
    #[serde(default)]
    pub framing: Framing,
    /// Ring slots: how many messages readers can fall behind by (default 1024, at least 2).
    #[serde(default = "default_slot_count")]
    pub slot_count: u32,
}

fn default_baud() -> u32 {
    9600
}

fn default_data_bits() -> u8 {
    8
}

fn default_stop_bits() -> u8 {
    1
}

fn default_slot_count() -> u32 {
    1024
}

impl Default for SerialSettings {
    /// The defaults of every field, with an empty `device` (which `validate` rejects).
    fn default() -> Self {
        SerialSettings {
            device: PathBuf::new(),
            baud: default_baud(),
            data_bits: default_data_bits(),
            parity: Parity::default(),
            stop_bits: default_stop_bits(),
            flow_control: FlowControl::default(),
            framing: Framing::default(),
            slot_count: default_slot_count(),
        }
    }
}

impl SerialSettings {
    /// Default settings for `device`.
    pub fn new(device: impl Into<PathBuf>) -> SerialSettings {
        SerialSettings {
            device: device.into(),
            ..SerialSettings::default()
        }
    }

    /// Check every value. `key_prefix` is where these settings live in the config (e.g.
    /// `stream.gps0`); the error is one line naming the key, the bad value and what is allowed.
    pub fn validate(&self, key_prefix: &str) -> Result<(), String> {
        let key = |name: &str| {
            if key_prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{key_prefix}.{name}")
            }
        };
        if self.device.as_os_str().is_empty() {
            return Err(format!(
                "{} is empty: set the serial port's path, e.g. /dev/serial/by-id/usb-...-if00 or /dev/ttyUSB0",
                key("device")
            ));
        }
        if self.device.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(format!(
                "{} = {:?} contains a NUL byte: it is not a path",
                key("device"),
                self.device
            ));
        }
        if self.device.to_str().is_none() {
            return Err(format!(
                "{} = {:?} is not valid UTF-8: the serial library needs a UTF-8 path",
                key("device"),
                self.device
            ));
        }
        if !(MIN_BAUD..=MAX_BAUD).contains(&self.baud) {
            return Err(format!(
                "{} = {} is out of range: use a rate from {MIN_BAUD} to {MAX_BAUD}, e.g. 9600 or 115200",
                key("baud"),
                self.baud
            ));
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(format!(
                "{} = {} is not allowed: use 5, 6, 7 or 8",
                key("data_bits"),
                self.data_bits
            ));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(format!(
                "{} = {} is not allowed: use 1 or 2",
                key("stop_bits"),
                self.stop_bits
            ));
        }
        self.framing.validate(&key("framing"))?;
        if !(2..=MAX_SLOT_COUNT).contains(&self.slot_count) {
            return Err(format!(
                "{} = {} is out of range: use 2 to {MAX_SLOT_COUNT}",
                key("slot_count"),
                self.slot_count
            ));
        }
        let ring_bytes = u64::from(self.slot_count) * self.framing.max_message_len() as u64;
        if ring_bytes > MAX_RING_BYTES {
            return Err(format!(
                "{} = {} is too many for messages of up to {} bytes: the ring would take {} MiB, \
                 more than {} MiB; lower slot_count or the framing's size",
                key("slot_count"),
                self.slot_count,
                self.framing.max_message_len(),
                ring_bytes >> 20,
                MAX_RING_BYTES >> 20
            ));
        }
        Ok(())
    }

    /// The ring a stream called `name` with these settings needs: one slot per message.
    pub fn ring_spec(&self, name: &str) -> RingSpec {
        RingSpec {
            name: name.to_owned(),
            kind: StreamKind::Serial,
            slot_count: self.slot_count,
            slot_size: self.framing.max_message_len() as u64,
            video: None,
        }
    }
}

/// Opens (and reopens) one serial port for [`super::supervise`].
#[derive(Debug)]
pub struct SerialOpener {
    name: String,
    settings: SerialSettings,
    next_seq: Arc<AtomicU64>,
}

impl SerialOpener {
    /// An opener for stream `name` with `settings` (validate them first).
    pub fn new(name: impl Into<String>, settings: SerialSettings) -> SerialOpener {
        SerialOpener {
            name: name.into(),
            settings,
            next_seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &SerialSettings {
        &self.settings
    }
}

impl Opener for SerialOpener {
    type Device = SerialDevice;

    fn open(&mut self) -> Result<SerialDevice, SourceError> {
        let s = &self.settings;
        let path = s.device.as_path();
        let unsupported = |detail: String| SourceError::Unsupported {
            device: path.to_path_buf(),
            detail,
        };
        let path_str = path
            .to_str()
            .ok_or_else(|| unsupported("the path is not valid UTF-8".into()))?;
        let data_bits = serialport::DataBits::try_from(s.data_bits)
            .map_err(|()| unsupported(format!("{} data bits (use 5 to 8)", s.data_bits)))?;
        let stop_bits = serialport::StopBits::try_from(s.stop_bits)
            .map_err(|()| unsupported(format!("{} stop bits (use 1 or 2)", s.stop_bits)))?;
        let parity = match s.parity {
            Parity::None => serialport::Parity::None,
            Parity::Odd => serialport::Parity::Odd,
            Parity::Even => serialport::Parity::Even,
        };
        let flow = match s.flow_control {
            FlowControl::None => serialport::FlowControl::None,
            FlowControl::Software => serialport::FlowControl::Software,
            FlowControl::Hardware => serialport::FlowControl::Hardware,
        };
        // Exclusive (TIOCEXCL + flock): a second reader of the port would steal bytes.
        let port = serialport::new(path_str, s.baud)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .parity(parity)
            .flow_control(flow)
            .timeout(Duration::from_millis(200))
            .exclusive(true)
            .open_native()
            .map_err(|e| open_error(path, e))?;
        tracing::debug!(device = %path.display(), baud = s.baud, "serial port open");
        Ok(SerialDevice {
            path: path.to_path_buf(),
            spec: s.ring_spec(&self.name),
            port,
            framer: Framer::new(s.framing),
            buf: vec![0; READ_SIZE],
            next_seq: Arc::clone(&self.next_seq),
            last_arrival_ns: 0,
            zero_reads: 0,
            warned_truncation: false,
            health: None,
        })
    }
}

/// Bytes asked for per `read`: the size of the tty layer's receive buffer.
const READ_SIZE: usize = 4096;

/// Consecutive 0-byte reads taken as a vanished port (a raw tty with VMIN=1 returns 0 only
/// after a hang-up).
const ZERO_READS_GONE: u32 = 3;

/// An open serial port feeding a [`Framer`]; publishes complete messages.
#[derive(Debug)]
pub struct SerialDevice {
    path: PathBuf,
    spec: RingSpec,
    port: serialport::TTYPort,
    framer: Framer,
    buf: Vec<u8>,
    next_seq: Arc<AtomicU64>,
    /// CLOCK_REALTIME of the read that delivered the newest buffered byte.
    last_arrival_ns: u64,
    zero_reads: u32,
    warned_truncation: bool,
    /// For counting a partial message dropped at shutdown.
    health: Option<StreamHealth>,
}

impl Device for SerialDevice {
    fn spec(&self) -> RingSpec {
        self.spec.clone()
    }

    fn pump(
        &mut self,
        writer: &mut Writer,
        stats: &StreamHealth,
        max_wait: Duration,
    ) -> Result<(), SourceError> {
        if self.health.is_none() {
            self.health = Some(stats.clone());
        }
        self.flush_idle(writer, stats)?;
        let now = Instant::now();
        let wait = match self.framer.idle_deadline() {
            Some(due) => due.saturating_duration_since(now).min(max_wait),
            None => max_wait,
        };
        // Only stores the timeout used by the next read's poll; cannot fail on Unix.
        let _ = self.port.set_timeout(wait);
        match self.port.read(&mut self.buf) {
            Ok(0) => {
                self.zero_reads += 1;
                if self.zero_reads >= ZERO_READS_GONE {
                    return Err(self.disconnected(writer, stats, "the port returned end of file"));
                }
            }
            Ok(n) => {
                self.zero_reads = 0;
                self.last_arrival_ns = ring::realtime_ns();
                let mut sink = Sink::new(writer, stats, &self.next_seq, self.last_arrival_ns);
                self.framer
                    .push(&self.buf[..n], Instant::now(), |e| sink.event(e));
                let (result, cut) = sink.finish();
                self.note_truncation(cut);
                result?;
            }
            Err(e) if is_no_data(&e) => writer.heartbeat(),
            Err(e) => {
                let err = read_error(&self.path, e);
                return Err(match err {
                    SourceError::Disconnected { detail, .. } => {
                        self.disconnected(writer, stats, &detail)
                    }
                    other => {
                        // Not a vanished port, but the device is dropped and reopened all the
                        // same: flush what the framer holds first.
                        self.flush_partial(writer, stats);
                        other
                    }
                });
            }
        }
        self.flush_idle(writer, stats)
    }
}

impl SerialDevice {
    /// Path of the port.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn flush_idle(&mut self, writer: &mut Writer, stats: &StreamHealth) -> Result<(), SourceError> {
        if self.framer.idle_deadline().is_none() {
            return Ok(());
        }
        let mut sink = Sink::new(writer, stats, &self.next_seq, self.last_arrival_ns);
        self.framer.poll_idle(Instant::now(), |e| sink.event(e));
        sink.finish().0.map_err(SourceError::from)
    }

    /// Publish (flagged truncated) or count whatever partial message the framer holds.
    fn flush_partial(&mut self, writer: &mut Writer, stats: &StreamHealth) {
        let mut sink = Sink::new(writer, stats, &self.next_seq, self.last_arrival_ns);
        self.framer.finish(|e| sink.event(e));
        let (result, cut) = sink.finish();
        self.note_truncation(cut);
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not publish the partial message");
        }
    }

    fn disconnected(
        &mut self,
        writer: &mut Writer,
        stats: &StreamHealth,
        detail: &str,
    ) -> SourceError {
        self.flush_partial(writer, stats);
        SourceError::Disconnected {
            device: self.path.clone(),
            detail: detail.to_owned(),
        }
    }

    fn note_truncation(&mut self, cut: u64) {
        if cut > 0 && !self.warned_truncation {
            self.warned_truncation = true;
            tracing::warn!(
                device = %self.path.display(),
                max_len = self.framer.framing().max_message_len(),
                "messages longer than the framing allows were cut (flagged TRUNCATED, the rest \
                 counted as dropped); check the baud rate and the framing's size"
            );
        }
    }
}

impl Drop for SerialDevice {
    fn drop(&mut self) {
        let left = self.framer.buffered();
        if left > 0 {
            if let Some(h) = &self.health {
                h.dropped(left);
            }
            tracing::debug!(bytes = left, "partial message dropped at stop");
        }
    }
}

/// Publishes framer events into the ring and counts them; keeps the first error.
struct Sink<'a> {
    writer: &'a mut Writer,
    stats: &'a StreamHealth,
    next_seq: &'a AtomicU64,
    capture_ns: u64,
    error: Option<RingError>,
    truncated: u64,
}

impl<'a> Sink<'a> {
    fn new(
        writer: &'a mut Writer,
        stats: &'a StreamHealth,
        next_seq: &'a AtomicU64,
        capture_ns: u64,
    ) -> Sink<'a> {
        Sink {
            writer,
            stats,
            next_seq,
            capture_ns,
            error: None,
            truncated: 0,
        }
    }

    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Dropped(n) => self.stats.dropped(n),
            Event::Message { bytes, truncated } => {
                if self.error.is_some() {
                    self.stats.dropped(bytes.len());
                    return;
                }
                let mut flags = layout::FLAG_CAPTURE_REALTIME;
                if truncated {
                    flags |= layout::FLAG_TRUNCATED;
                }
                // Relaxed: only the stream's own thread touches the counter.
                let device_seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                let meta = Meta {
                    capture_ns: self.capture_ns,
                    device_seq,
                    flags,
                };
                match self.writer.publish(bytes, meta) {
                    Ok(_) => {
                        self.stats.published(bytes.len());
                        if truncated {
                            self.stats.truncated();
                            self.truncated += 1;
                        }
                    }
                    Err(e) => {
                        self.stats.dropped(bytes.len());
                        self.error = Some(e);
                    }
                }
            }
        }
    }

    fn finish(self) -> (Result<(), RingError>, u64) {
        (self.error.map_or(Ok(()), Err), self.truncated)
    }
}

/// A read that delivered nothing, but the port is fine.
fn is_no_data(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// `serialport` keeps only the text of an OS error; recover the errno for the ones that
/// decide what a user should do. The texts are those of `nix::Errno::desc`.
fn errno_from_text(text: &str) -> Option<i32> {
    match text {
        "I/O error" => Some(libc::EIO),
        "No such device or address" => Some(libc::ENXIO),
        "No such device" => Some(libc::ENODEV),
        "Not a typewriter" => Some(libc::ENOTTY),
        _ => None,
    }
}

fn read_error(path: &Path, e: io::Error) -> SourceError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return SourceError::Disconnected {
            device: path.to_path_buf(),
            detail: "hang-up (the device was unplugged or the port closed)".into(),
        };
    }
    let e = match (e.raw_os_error(), errno_from_text(&e.to_string())) {
        (None, Some(errno)) => io::Error::from_raw_os_error(errno),
        _ => e,
    };
    SourceError::from_io(
        path,
        "read",
        e,
        super::hint::permission_here(super::kinds::DeviceClass::Serial),
    )
}

fn open_error(path: &Path, e: serialport::Error) -> SourceError {
    use serialport::ErrorKind as K;
    let io_err = match e.kind() {
        // EBUSY from TIOCEXCL, or the exclusive flock held by another process.
        K::NoDevice => io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "the port is in use by another program ({}); stop it, or point this stream at \
                 another port",
                e.description
            ),
        ),
        K::Io(kind) => match kind {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => io::Error::from(kind),
            _ => io::Error::new(kind, e.description),
        },
        K::InvalidInput | K::Unknown => match errno_from_text(&e.description) {
            Some(libc::ENOTTY) => {
                return SourceError::Unsupported {
                    device: path.to_path_buf(),
                    detail: "not a serial port (it is not a tty device); check the path".into(),
                }
            }
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::other(e.description),
        },
    };
    SourceError::from_io(
        path,
        "open",
        io_err,
        super::hint::permission_here(super::kinds::DeviceClass::Serial),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::framing::Terminator;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrap {
        serial: SerialSettings,
    }

    fn parse(s: &str) -> Result<SerialSettings, String> {
        toml::from_str::<Wrap>(s)
            .map(|w| w.serial)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn settings_default_everything_but_the_device() {
        let s = parse("[serial]\ndevice = \"/dev/serial/by-id/usb-x-if00\"\n").unwrap();
        assert_eq!(s, SerialSettings::new("/dev/serial/by-id/usb-x-if00"));
        assert_eq!(s.baud, 9600);
        assert_eq!((s.data_bits, s.stop_bits), (8, 1));
        assert_eq!(s.parity, Parity::None);
        assert_eq!(s.flow_control, FlowControl::None);
        assert_eq!(s.slot_count, 1024);
        assert!(s.validate("stream.gps0").is_ok());
        assert!(parse("[serial]\nbaud = 9600\n")
            .unwrap_err()
            .contains("device"));
    }

    #[test]
    fn settings_parse_every_field() {
        let s = parse(
            r#"
            [serial]
            device = "/dev/ttyUSB0"
            baud = 115200
            data_bits = 7
            parity = "even"
            stop_bits = 2
            flow_control = "hardware"
            framing = { type = "lines", max_len = 82, terminator = "\r" }
            slot_count = 64
            "#,
        )
        .unwrap();
        assert_eq!(
            s,
            SerialSettings {
                device: "/dev/ttyUSB0".into(),
                baud: 115200,
                data_bits: 7,
                parity: Parity::Even,
                stop_bits: 2,
                flow_control: FlowControl::Hardware,
                framing: Framing::Lines {
                    max_len: 82,
                    terminator: Terminator(b'\r')
                },
                slot_count: 64,
            }
        );
        assert!(s.validate("s").is_ok());
        let spec = s.ring_spec("gps0");
        assert_eq!(
            (
                spec.kind,
                spec.slot_count,
                spec.slot_size,
                spec.name.as_str()
            ),
            (StreamKind::Serial, 64, 82, "gps0")
        );
    }

    #[test]
    fn settings_refuse_unknown_keys_and_names() {
        for bad in [
            "[serial]\ndevice = \"/dev/x\"\nbaudrate = 9600\n",
            "[serial]\ndevice = \"/dev/x\"\nparity = \"Even\"\n",
            "[serial]\ndevice = \"/dev/x\"\nparity = \"mark\"\n",
            "[serial]\ndevice = \"/dev/x\"\nflow_control = \"xonxoff\"\n",
            "[serial]\ndevice = \"/dev/x\"\nbaud = -1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_names_the_key_the_value_and_the_rule() {
        let ok = SerialSettings::new("/dev/ttyS0");
        let check = |f: &dyn Fn(&mut SerialSettings), want: &str| {
            let mut s = ok.clone();
            f(&mut s);
            let e = s.validate("stream.gps0").unwrap_err();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
            assert!(!e.contains('\n'), "{e:?}");
        };
        check(
            &|s| s.device = PathBuf::new(),
            "stream.gps0.device is empty",
        );
        check(
            &|s| s.baud = 0,
            "stream.gps0.baud = 0 is out of range: use a rate from 50 to 4000000",
        );
        check(&|s| s.baud = 4_000_001, "stream.gps0.baud = 4000001 ");
        check(
            &|s| s.data_bits = 9,
            "stream.gps0.data_bits = 9 is not allowed: use 5, 6, 7 or 8",
        );
        check(&|s| s.data_bits = 4, "stream.gps0.data_bits = 4 ");
        check(
            &|s| s.stop_bits = 0,
            "stream.gps0.stop_bits = 0 is not allowed: use 1 or 2",
        );
        check(
            &|s| s.slot_count = 1,
            "stream.gps0.slot_count = 1 is out of range: use 2 to 65536",
        );
        check(
            &|s| s.framing = Framing::Records { size: 0 },
            "stream.gps0.framing.size = 0 ",
        );
        check(
            &|s| {
                s.framing = Framing::Chunks {
                    max_size: 1 << 20,
                    idle_ms: 10,
                };
                s.slot_count = 1024;
            },
            "stream.gps0.slot_count = 1024 is too many",
        );
        let e = SerialSettings::default().validate("").unwrap_err();
        assert!(e.starts_with("device is empty"), "{e}");
    }

    #[test]
    fn a_missing_port_is_not_found() {
        let mut o = SerialOpener::new("s", SerialSettings::new("/nonexistent/ttyUSB9"));
        let e = o.open().unwrap_err();
        assert!(matches!(e, SourceError::NotFound { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/ttyUSB9"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_tty_is_unsupported() {
        let mut o = SerialOpener::new("s", SerialSettings::new("/dev/null"));
        let e = o.open().unwrap_err();
        assert!(matches!(e, SourceError::Unsupported { .. }), "{e:?}");
        assert!(e.to_string().contains("not a serial port"), "{e}");
    }

    #[test]
    fn open_errors_map_to_what_a_user_can_act_on() {
        use serialport::{Error, ErrorKind as K};
        let p = Path::new("/dev/ttyUSB0");
        let e = open_error(
            p,
            Error::new(K::Io(io::ErrorKind::PermissionDenied), "Permission denied"),
        );
        assert!(matches!(e, SourceError::PermissionDenied { .. }));
        assert!(e.to_string().contains("dialout"), "{e}");
        let e = open_error(
            p,
            Error::new(
                K::NoDevice,
                "Unable to acquire exclusive lock on serial port",
            ),
        );
        assert_eq!(e.kind(), "io");
        assert!(e.to_string().contains("in use by another program"), "{e}");
        for text in ["No such device or address", "No such device", "I/O error"] {
            let e = open_error(p, Error::new(K::Unknown, text));
            assert!(
                matches!(e, SourceError::Disconnected { .. }),
                "{text}: {e:?}"
            );
        }
        let e = read_error(p, io::Error::new(io::ErrorKind::BrokenPipe, "Broken pipe"));
        assert!(matches!(e, SourceError::Disconnected { .. }));
        let e = read_error(p, io::Error::other("I/O error"));
        assert!(matches!(e, SourceError::Disconnected { .. }));
        let e = read_error(p, io::Error::other("something else"));
        assert_eq!(e.kind(), "io");
    }
}
