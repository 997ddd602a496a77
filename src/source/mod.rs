//! Sources: the producers that fill rings, and the supervisor that keeps each one running.
//!
//! Every stream runs on its own OS thread ([`supervise`]): open the device, publish into its
//! ring until the device fails, then retry with capped exponential backoff, resuming the same
//! ring. Capture never waits on anything async. A source only talks to the rest of the agent
//! through its [`StreamHealth`].

pub mod camera;
pub mod framing;
pub mod hint;
pub mod kinds;
pub mod serial;
pub mod set;
pub mod synthetic;

pub use set::StreamSet;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ring::{CreateOptions, RingError, RingSpec, Writer};
use crate::shutdown::Shutdown;

/// Why a device could not be opened or stopped delivering.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device node does not exist (not plugged in, wrong path).
    #[error("{device} does not exist; check the path (stable names are under /dev/v4l/by-id/ and /dev/serial/by-id/) and that the device is plugged in")]
    NotFound {
        /// Device path.
        device: PathBuf,
    },
    /// Permission denied on the device node.
    #[error("cannot open {device}: permission denied; {hint}")]
    PermissionDenied {
        /// Device path.
        device: PathBuf,
        /// What grants access where the agent runs ([`hint`]).
        hint: &'static str,
    },
    /// The device went away while streaming (unplugged, driver unloaded, port closed).
    #[error("{device} disconnected: {detail}")]
    Disconnected {
        /// Device path.
        device: PathBuf,
        /// What was seen.
        detail: String,
    },
    /// The device cannot do what the configuration asks.
    #[error("{device}: {detail}")]
    Unsupported {
        /// Device path.
        device: PathBuf,
        /// What is unsupported and what is available.
        detail: String,
    },
    /// Any other device I/O error.
    #[error("{device}: {op}: {error}")]
    Io {
        /// Device path.
        device: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The OS error (part of the message, so not also a `source`).
        error: std::io::Error,
    },
    /// The ring could not be created or reopened.
    #[error(transparent)]
    Ring(#[from] RingError),
}

impl SourceError {
    /// A short, stable label for metrics (`kind` label of `edgeplex_source_errors_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::NotFound { .. } => "not_found",
            SourceError::PermissionDenied { .. } => "permission",
            SourceError::Disconnected { .. } => "disconnected",
            SourceError::Unsupported { .. } => "unsupported",
            SourceError::Io { .. } => "io",
            SourceError::Ring(_) => "ring",
        }
    }

    /// Map an I/O error on `device` to the variant a user can act on. `hint` says what grants
    /// access to this kind of device where the agent runs ([`hint::permission_here`]).
    pub fn from_io(
        device: &std::path::Path,
        op: &'static str,
        e: std::io::Error,
        hint: &'static str,
    ) -> SourceError {
        let device = device.to_path_buf();
        match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::NotFound { device },
            std::io::ErrorKind::PermissionDenied => SourceError::PermissionDenied { device, hint },
            _ if matches!(
                e.raw_os_error(),
                Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::EIO)
            ) =>
            {
                SourceError::Disconnected {
                    device,
                    detail: e.to_string(),
                }
            }
            _ => SourceError::Io {
                device,
                op,
                error: e,
            },
        }
    }
}

/// A device that is open and delivering.
pub trait Device {
    /// The ring layout for what the device negotiated. Asked once after each open; a change
    /// from the previous open replaces the ring file (readers follow).
    fn spec(&self) -> RingSpec;

    /// Capture and publish what is available, waiting at most about `max_wait` (so the
    /// supervisor can notice shutdown). Returns an error when the device failed; the supervisor
    /// then drops the device and reopens it after a backoff.
    fn pump(
        &mut self,
        writer: &mut Writer,
        stats: &StreamHealth,
        max_wait: Duration,
    ) -> Result<(), SourceError>;
}

/// Something that can (re)open a device.
pub trait Opener: Send {
    /// The open device.
    type Device: Device;

    /// Open the device and negotiate its format.
    fn open(&mut self) -> Result<Self::Device, SourceError>;
}

/// Live state of one stream, shared with the rest of the agent (metrics, readiness, the node
/// publisher). Cheap to clone; all fields are updated from the stream's thread.
#[derive(Debug, Clone)]
pub struct StreamHealth {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    name: String,
    kind: String,
    class: Option<kinds::DeviceClass>,
    up: AtomicBool,
    started: AtomicBool,
    messages: AtomicU64,
    bytes: AtomicU64,
    reconnects: AtomicU64,
    dropped_bytes: AtomicU64,
    truncated: AtomicU64,
    last_publish_ns: AtomicU64,
    last_publish_mono_ns: AtomicU64,
    interval: Option<prometheus::Histogram>,
    errors: Mutex<Vec<(&'static str, u64)>>,
    last_error: Mutex<Option<String>>,
    ring: Mutex<Option<(PathBuf, u32, u64)>>,
}

/// A copy of a stream's health, for readers of it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HealthSnapshot {
    /// Stream name.
    pub name: String,
    /// The stream's `type` ([`kinds::StreamConfig::type_name`]).
    pub kind: String,
    /// The class of device it offers, for the node's labels.
    pub class: Option<kinds::DeviceClass>,
    /// The device is open and delivering.
    pub up: bool,
    /// The stream's thread has started (ready probe).
    pub started: bool,
    /// Messages published.
    pub messages: u64,
    /// Payload bytes published.
    pub bytes: u64,
    /// Successful reopens after a failure.
    pub reconnects: u64,
    /// Bytes the device sent that could not be published (counted, never silent).
    pub dropped_bytes: u64,
    /// Messages published cut short (flagged `TRUNCATED`).
    pub truncated: u64,
    /// CLOCK_REALTIME ns of the last publish.
    pub last_publish_ns: u64,
    /// Errors by kind.
    pub errors: Vec<(&'static str, u64)>,
    /// The current failure, if the stream is down.
    pub last_error: Option<String>,
    /// Ring path, slot count and slot size.
    pub ring: Option<(PathBuf, u32, u64)>,
}

impl StreamHealth {
    /// Health for stream `name` of kind `kind` offering `class`, down until its device opens.
    pub fn new(name: &str, kind: &str, class: kinds::DeviceClass) -> StreamHealth {
        let opts = prometheus::HistogramOpts::new(
            "edgeplex_capture_interval_seconds",
            "Time between consecutive messages of a stream.",
        )
        .const_label("stream", name)
        .buckets(vec![
            0.001, 0.005, 0.01, 0.02, 0.034, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        // Static options; any stream name is a valid label value.
        let interval = prometheus::Histogram::with_opts(opts).ok();
        let inner = HealthInner {
            name: name.to_owned(),
            kind: kind.to_owned(),
            class: Some(class),
            interval,
            ..Default::default()
        };
        StreamHealth {
            inner: Arc::new(inner),
        }
    }

    /// Stream name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether `other` is this very stream (a clone of the same handle), not merely one of
    /// the same name.
    pub fn is_same(&self, other: &StreamHealth) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Mark the stream down at once because its device node went away (discovery saw it
    /// leave), before its thread notices.
    pub fn device_removed(&self, device: &std::path::Path) {
        self.set_failed(&SourceError::Disconnected {
            device: device.to_path_buf(),
            detail: "the device node was removed".into(),
        });
    }

    /// Whether the device is up.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Count a published message of `bytes` payload bytes.
    pub fn published(&self, bytes: usize) {
        let h = &self.inner;
        h.messages.fetch_add(1, Ordering::Relaxed);
        h.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        h.last_publish_ns
            .store(crate::ring::realtime_ns(), Ordering::Relaxed);
        let now = crate::ring::monotonic_ns();
        let prev = h.last_publish_mono_ns.swap(now, Ordering::Relaxed);
        if let (Some(hist), true) = (&h.interval, prev != 0) {
            hist.observe(now.saturating_sub(prev) as f64 / 1e9);
        }
    }

    /// The capture-interval histogram, for registration by the metrics exporter.
    pub fn interval_histogram(&self) -> Option<prometheus::Histogram> {
        self.inner.interval.clone()
    }

    /// Count bytes the device sent that were dropped (with a reason in the log).
    pub fn dropped(&self, bytes: usize) {
        self.inner
            .dropped_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Count a message published truncated.
    pub fn truncated(&self) {
        self.inner.truncated.fetch_add(1, Ordering::Relaxed);
    }

    fn set_up(&self, ring: (PathBuf, u32, u64)) {
        *self.inner.ring.lock().unwrap_or_else(|e| e.into_inner()) = Some(ring);
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.inner.up.store(true, Ordering::Relaxed);
    }

    fn set_failed(&self, e: &SourceError) {
        self.inner.up.store(false, Ordering::Relaxed);
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        let mut errors = self.inner.errors.lock().unwrap_or_else(|e| e.into_inner());
        match errors.iter_mut().find(|(k, _)| *k == e.kind()) {
            Some((_, n)) => *n += 1,
            None => errors.push((e.kind(), 1)),
        }
    }

    /// A consistent-enough copy for metrics and probes.
    pub fn snapshot(&self) -> HealthSnapshot {
        let h = &self.inner;
        HealthSnapshot {
            name: h.name.clone(),
            kind: h.kind.clone(),
            class: h.class,
            up: h.up.load(Ordering::Relaxed),
            started: h.started.load(Ordering::Relaxed),
            messages: h.messages.load(Ordering::Relaxed),
            bytes: h.bytes.load(Ordering::Relaxed),
            reconnects: h.reconnects.load(Ordering::Relaxed),
            dropped_bytes: h.dropped_bytes.load(Ordering::Relaxed),
            truncated: h.truncated.load(Ordering::Relaxed),
            last_publish_ns: h.last_publish_ns.load(Ordering::Relaxed),
            errors: h.errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            last_error: h
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            ring: h.ring.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// Capped exponential backoff: `initial`, doubling, at most `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The next delay, doubling the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to `initial` after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Where and how a stream's ring is created.
#[derive(Debug, Clone)]
pub struct RingTarget {
    /// Ring file path.
    pub path: PathBuf,
    /// File mode, group, disk policy.
    pub options: CreateOptions,
    /// The agent's ring directory, opened and checked once: the stream's ring is then opened
    /// relative to it (`<dir>/<stream>/<stream>.ring`, `path` must be that). `None` opens `path`
    /// itself (its directory is still checked).
    pub dir: Option<std::sync::Arc<crate::ring::RingDir>>,
}

/// Run one stream until shutdown: open, publish, and on failure log once, mark the stream
/// failed, and retry with backoff, resuming the same ring. Call on the stream's own thread.
pub fn supervise<O: Opener>(
    mut opener: O,
    target: &RingTarget,
    health: &StreamHealth,
    shutdown: &Shutdown,
    backoff: Backoff,
) {
    let _span = tracing::info_span!("stream", stream = %health.name()).entered();
    health.inner.started.store(true, Ordering::Relaxed);
    let mut backoff = backoff;
    let mut writer: Option<Writer> = None;
    let mut failing: Option<String> = None;
    let mut ever_up = false;
    while !shutdown.requested() {
        let session = || -> Result<(), SourceError> {
            let mut device = opener.open()?;
            let spec = device.spec();
            let reuse = writer.as_ref().is_some_and(|w| w.geometry().matches(&spec));
            if !reuse {
                writer = None; // release our lock before reopening or replacing the file
                writer = Some(match &target.dir {
                    Some(dir) => dir.open_writer(health.name(), &spec, &target.options)?,
                    None => Writer::open(&target.path, &spec, &target.options)?,
                });
            }
            let w = writer.as_mut().expect("writer set above");
            let g = w.geometry();
            health.set_up((target.path.clone(), g.slot_count, g.slot_size));
            if ever_up {
                health.inner.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            ever_up = true;
            if let Some(prev) = failing.take() {
                tracing::info!(previous_error = %prev, "device recovered");
            } else {
                tracing::info!(ring = %target.path.display(), "stream up");
            }
            backoff.reset();
            while !shutdown.requested() {
                device.pump(w, health, Duration::from_millis(200))?;
            }
            Ok(())
        };
        // A panicking device library must not take the agent down: treat it as a device
        // failure and retry like any other.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(session))
            .unwrap_or_else(|panic| {
                let detail = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                Err(SourceError::Disconnected {
                    device: target.path.clone(),
                    detail: format!("source panicked: {detail}"),
                })
            });
        // The device is closed (dropped with the session): slots it had been lent and never
        // returned are marked as being written. Clear them now (RING.md 4.3, item 3), before a
        // retry or a geometry change retires this file, and before a clean stop.
        if let Some(w) = writer.as_mut() {
            let cleared = w.clear_abandoned();
            if cleared > 0 {
                tracing::debug!(cleared, "slots lent to the device given back unpublished");
            }
        }
        let Err(e) = result else { break };
        health.set_failed(&e);
        let msg = e.to_string();
        if failing.as_deref() != Some(msg.as_str()) {
            // Logged once when the failure starts (or changes), not on every retry.
            tracing::error!(error = %msg, kind = e.kind(), "stream failed; retrying with backoff");
            failing = Some(msg);
        }
        if let Some(w) = &writer {
            w.heartbeat();
        }
        let delay = backoff.next_delay();
        if !shutdown.sleep_until(Instant::now() + delay) {
            break;
        }
    }
    tracing::info!("stream stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that, like USERPTR capture, keeps slots of the ring lent (being written) while
    /// it runs: publishes one frame, then fails with two slots lent. Its second open negotiates
    /// a different image size (a geometry change), publishes one frame and asks to stop.
    struct Lending {
        opens: u32,
        shutdown: Shutdown,
    }

    struct LendingDevice {
        size: u64,
        lender: crate::ring::Lender,
        published: bool,
        last: bool,
        shutdown: Shutdown,
    }

    impl Opener for Lending {
        type Device = LendingDevice;
        fn open(&mut self) -> Result<LendingDevice, SourceError> {
            self.opens += 1;
            Ok(LendingDevice {
                size: if self.opens == 1 { 4096 } else { 8192 },
                lender: crate::ring::Lender::new(),
                published: false,
                last: self.opens > 1,
                shutdown: self.shutdown.clone(),
            })
        }
    }

    impl Device for LendingDevice {
        fn spec(&self) -> RingSpec {
            RingSpec {
                name: "cam".into(),
                kind: crate::ring::StreamKind::Video,
                slot_count: 6,
                slot_size: self.size,
                video: None,
            }
        }
        fn pump(
            &mut self,
            w: &mut Writer,
            _: &StreamHealth,
            _: Duration,
        ) -> Result<(), SourceError> {
            if !self.published {
                self.lender.lend(w).expect("lend");
                let meta = crate::ring::Meta::default();
                self.lender.commit_oldest(w, 10, meta).expect("commit");
                self.lender.lend(w).expect("lend");
                self.lender.lend(w).expect("lend");
                self.published = true;
                return Ok(());
            }
            if self.last {
                self.shutdown.trigger();
                return Ok(());
            }
            // Unplugged with two slots lent; the lender is dropped with the device.
            Err(SourceError::Disconnected {
                device: "/dev/video9".into(),
                detail: "gone".into(),
            })
        }
    }

    /// Seqlock words of every slot of the ring file open as `f`.
    fn seq_words(f: &std::fs::File) -> Vec<u64> {
        use std::os::unix::fs::FileExt;
        let mut page = vec![0u8; crate::ring::layout::HEADER_SIZE as usize];
        f.read_exact_at(&mut page, 0).expect("header");
        let len = f.metadata().expect("stat").len();
        let g = crate::ring::layout::parse_header(&page, len).expect("valid header");
        (0..u64::from(g.slot_count))
            .map(|slot| {
                let mut b = [0u8; 8];
                f.read_exact_at(&mut b, g.desc_at(slot))
                    .expect("descriptor");
                u64::from_le_bytes(b)
            })
            .collect()
    }

    /// A device that fails with slots lent leaves none marked as being written, in the ring it
    /// leaves (retired by a geometry change here) or the one it continues in; numbering
    /// continues. On the code before the supervisor cleared lent slots, the retired file kept
    /// its two lent slots at odd (being written) values forever.
    #[test]
    fn a_device_failing_with_lent_slots_leaves_none_being_written() {
        let dir = tempfile::Builder::new()
            .prefix("edgeplex-supervise-")
            .tempdir_in("/dev/shm")
            .expect("tmpfs dir");
        let path = dir.path().join("cam.ring");
        let shutdown = Shutdown::default();
        // Hold the first file open (a reader's view) so it can be checked after it is retired.
        let watcher = {
            let sd = shutdown.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    if let Ok(f) = std::fs::File::open(&path) {
                        return Some(f);
                    }
                    if sd.requested() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                None
            })
        };
        let target = RingTarget {
            path: path.clone(),
            options: CreateOptions::default(),
            dir: None,
        };
        let health = StreamHealth::new("cam", "camera", kinds::DeviceClass::Camera);
        let opener = Lending {
            opens: 0,
            shutdown: shutdown.clone(),
        };
        supervise(
            opener,
            &target,
            &health,
            &shutdown,
            Backoff::new(Duration::from_millis(200), Duration::from_millis(200)),
        );
        let old = watcher.join().expect("watcher").expect("first ring file");
        let old_path = {
            use std::os::fd::AsRawFd;
            PathBuf::from(format!("/proc/self/fd/{}", old.as_raw_fd()))
        };
        let retired = crate::ring::inspect(&old_path).expect("inspect the retired file");
        assert!(
            retired.retired,
            "the geometry change retired the first file"
        );
        assert_eq!(retired.head, 1);
        let words = seq_words(&old);
        assert!(
            words.iter().all(|w| w % 2 == 0),
            "retired file: a slot left marked as being written: {words:?}"
        );
        let now = crate::ring::inspect(&path).expect("inspect");
        assert_eq!(now.geometry.slot_size, 8192);
        assert_eq!(now.geometry.base_seq, 1, "numbering continues");
        assert_eq!(now.head, 2);
        assert_eq!(now.epoch, retired.epoch + 1);
        let words = seq_words(&std::fs::File::open(&path).expect("open"));
        assert!(
            words.iter().all(|w| w % 2 == 0),
            "the ring after a clean stop: {words:?}"
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let got: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
