//! The V4L2 camera source: negotiate a format (crate `v4l`), and capture through a queue that owns
//! its buffers (crate `edgeplex-v4l2`): with `USERPTR` buffers that are ring slots, so the driver
//! writes each frame where readers read it (no copy), or with `MMAP` buffers copied into a slot
//! the ring lends. Either way each message carries the driver's timestamp, sequence and error
//! flag.
//!
//! "No frame yet" is waiting, never a failure, however slow the camera: only the stall timeout
//! turns a silent camera into a failure.
//!
//! It runs on its stream's own thread and never waits on anything but the device. It owns no
//! ring: the supervisor hands it a writer.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgeplex_v4l2::{CaptureQueue, RingCapture};
use serde::Deserialize;
use v4l::video::Capture as _;
use v4l::{Format, FourCC};

use super::{Device, Opener, SourceError, StreamHealth};
use crate::ring::{layout, Meta, RingSpec, StreamKind, VideoFormat, Writer};
use crate::settings::values::FourCc;

/// How a camera stream is configured (`[stream.NAME]` with `type = "camera"`).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraSettings {
    /// Device path: `/dev/video0`, or a stable `/dev/v4l/by-id/...` link.
    pub device: PathBuf,
    /// Requested width in pixels.
    #[serde(default = "default_width")]
    pub width: u32,
    /// Requested height in pixels.
    #[serde(default = "default_height")]
    pub height: u32,
    /// Requested pixel format, a fourcc such as `YUYV` or `MJPG`.
    #[serde(default = "default_format")]
    pub format: FourCc,
    /// Requested frame rate.
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// V4L2 MMAP buffers to queue.
    #[serde(default = "default_buffers")]
    pub buffers: u32,
    /// Ring slots.
    #[serde(default = "default_slots")]
    pub slot_count: u32,
    /// Seconds without a frame after which the camera counts as failed.
    #[serde(default = "default_stall")]
    pub stall_timeout_secs: f64,
    /// How frames reach the ring: `auto` (user pointers into ring slots, else MMAP and a copy),
    /// `userptr` (fail if the driver refuses), `mmap` (always copy).
    #[serde(default)]
    pub io: IoMode,
    /// Nice value of the capture thread (-20 ..= 19; lower runs first), so that woken readers do
    /// not preempt it mid-frame. Raising priority (below 0) needs CAP_SYS_NICE: in the snap the
    /// `process-control` interface, in a pod `securityContext.capabilities.add: ["SYS_NICE"]`.
    /// Unset: the agent's own.
    #[serde(default)]
    pub nice: Option<i32>,
    /// Real-time policy of the capture thread, `"fifo:N"` or `"rr:N"` (N in 1..=99): woken
    /// readers (ordinary threads) then never preempt it. Needs CAP_SYS_NICE (or RLIMIT_RTPRIO),
    /// and RT runtime in the cgroup on kernels built with CONFIG_RT_GROUP_SCHED. When refused,
    /// the agent logs one line saying why and applies `nice` instead. Unset: no real-time policy.
    #[serde(default)]
    pub realtime: Option<crate::sched::Realtime>,
}

/// How a camera's frames reach its ring (`io = ...`).
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// `USERPTR` into ring slots when the driver supports it and the image fits a slot; otherwise
    /// `MMAP` plus one copy, logged once with the reason.
    #[default]
    Auto,
    /// `USERPTR` into ring slots, or the stream fails with the reason.
    Userptr,
    /// `MMAP` buffers, each frame copied into a slot.
    Mmap,
}

fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_format() -> FourCc {
    FourCc(u32::from_le_bytes(*b"YUYV"))
}
fn default_fps() -> u32 {
    30
}
fn default_buffers() -> u32 {
    4
}
fn default_slots() -> u32 {
    8
}
fn default_stall() -> f64 {
    5.0
}

impl CameraSettings {
    /// Check the settings; the error names the key (`{prefix}.width`), the value and what is
    /// allowed.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        if self.device.as_os_str().is_empty()
            || self.device.as_os_str().as_encoded_bytes().contains(&0)
        {
            return Err(format!(
                "{prefix}.device = {:?} is not a path: give the camera's path, e.g. /dev/video0 or /dev/v4l/by-id/...",
                self.device
            ));
        }
        check_range(prefix, "width", self.width, 1, 16384)?;
        check_range(prefix, "height", self.height, 1, 16384)?;
        check_range(prefix, "fps", self.fps, 1, 1000)?;
        check_range(prefix, "buffers", self.buffers, 2, 32)?;
        check_range(prefix, "slot_count", self.slot_count, 2, 1024)?;
        if let Some(n) = self.nice {
            if !(-20..=19).contains(&n) {
                return Err(format!(
                    "{prefix}.nice = {n} is out of range: allowed -20..=19 (lower runs first)"
                ));
            }
        }
        if !(self.stall_timeout_secs > 0.0 && self.stall_timeout_secs <= 3600.0) {
            return Err(format!(
                "{prefix}.stall_timeout_secs = {} must be between 0 and 3600",
                self.stall_timeout_secs
            ));
        }
        Ok(())
    }
}

impl CameraSettings {
    /// The ring a stream called `name` with these settings is planned to need: the requested
    /// size at the format's bytes per pixel (2 for compressed formats). The real ring follows
    /// what the device negotiates; user-pointer capture adds a slot per buffer lent to the driver.
    pub fn ring_spec(&self, name: &str) -> RingSpec {
        let bytes_per_pixel: u64 = match &self.format.to_string()[..] {
            "GREY" => 1,
            "RGB3" | "BGR3" => 3,
            "RGB4" | "BGR4" | "XR24" | "AR24" | "XB24" | "AB24" => 4,
            _ => 2,
        };
        let stride = u64::from(self.width) * bytes_per_pixel;
        RingSpec {
            name: name.to_owned(),
            kind: StreamKind::Video,
            slot_count: match self.io {
                IoMode::Mmap => self.slot_count,
                IoMode::Auto | IoMode::Userptr => self.slot_count.saturating_add(self.buffers),
            },
            slot_size: stride * u64::from(self.height),
            video: Some(VideoFormat {
                width: self.width,
                height: self.height,
                fourcc: self.format.0,
                stride: u32::try_from(stride).unwrap_or(u32::MAX),
            }),
        }
    }
}

/// Check `value` is within `lo..=hi`, with a message naming the key.
pub fn check_range(prefix: &str, key: &str, value: u32, lo: u32, hi: u32) -> Result<(), String> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{prefix}.{key} = {value} is out of range: allowed {lo}..={hi}"
        ))
    }
}

/// Opens a V4L2 capture device and negotiates its format.
#[derive(Debug)]
pub struct CameraOpener {
    name: String,
    settings: CameraSettings,
    /// The reason `auto` fell back to MMAP, once logged (logged again only when it changes).
    fallback_logged: FallbackLog,
    /// The priority was applied to this (the stream's) thread, or the refusal logged.
    priority_applied: bool,
}

/// Set the calling thread's priority: `realtime` if asked and permitted, else `nice`. A refusal
/// is logged in one line with its reason, never fatal: the camera still works.
fn apply_priority(req: crate::sched::Request) -> crate::sched::Outcome {
    let outcome = crate::sched::apply_to_current_thread(req);
    for why in &outcome.refused {
        tracing::warn!(
            refused = %why,
            applied = %outcome.applied,
            hint = super::hint::sys_nice(super::hint::Runtime::detect()),
            "cannot give the capture thread the priority asked for"
        );
    }
    if outcome.applied != "unchanged" {
        tracing::info!(priority = %outcome.applied, "capture thread priority set");
    }
    outcome
}

/// The last fallback reason logged for a stream, shared by its opener and its cameras.
type FallbackLog = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// Log that `auto` falls back to MMAP, once per stream and reason.
fn log_fallback(logged: &FallbackLog, reason: String) {
    let mut last = logged.lock().unwrap_or_else(|e| e.into_inner());
    if last.as_deref() != Some(reason.as_str()) {
        tracing::warn!(
            reason = %reason,
            "camera: no zero-copy capture; using MMAP buffers and one copy per frame"
        );
        *last = Some(reason);
    }
}

/// How the open camera captures.
#[derive(Debug)]
enum Capture {
    /// `USERPTR` buffers that are ring slots, started at the first pump (it needs the writer).
    Userptr(RingCapture),
    /// `MMAP` buffers, copied into a lent slot.
    Mmap(CaptureQueue),
    /// Between the two, while falling back.
    Closed,
}

/// An MMAP queue, streaming.
fn mmap_queue(dev: &v4l::Device, buffers: u32) -> std::io::Result<CaptureQueue> {
    let mut q = CaptureQueue::mmap(dev, buffers)?;
    q.start()?;
    Ok(q)
}

/// Wait for one MMAP frame and copy it into a lent slot. `Ok(false)`: no frame yet.
fn copy_frame(
    queue: &mut CaptureQueue,
    writer: &mut Writer,
    health: &StreamHealth,
    max_wait: Duration,
) -> std::io::Result<bool> {
    let Some(frame) = queue.dequeue(max_wait)? else {
        return Ok(false);
    };
    let buf = queue.data(&frame).unwrap_or_default();
    let used = buf.len();
    let mut loan = writer.lend();
    let slot = loan.buf();
    let len = used.min(slot.len());
    slot[..len].copy_from_slice(&buf[..len]);
    let mut flags = 0;
    if len < used {
        flags |= layout::FLAG_TRUNCATED;
        health.truncated();
        health.dropped(used - len);
    }
    if frame.is_error() {
        flags |= layout::FLAG_DEVICE_ERROR;
    }
    let capture_ns = u64::try_from(frame.timestamp().as_nanos()).unwrap_or(u64::MAX);
    loan.commit(
        len,
        Meta {
            capture_ns,
            device_seq: u64::from(frame.sequence()),
            flags,
        },
    );
    health.published(len);
    queue.requeue(frame)?;
    Ok(true)
}

impl CameraOpener {
    /// An opener for stream `name`.
    pub fn new(name: &str, settings: CameraSettings) -> CameraOpener {
        CameraOpener {
            name: name.to_owned(),
            settings,
            fallback_logged: FallbackLog::default(),
            priority_applied: false,
        }
    }
}

/// An open, streaming camera.
pub struct Camera {
    name: String,
    device: PathBuf,
    format: Format,
    capture: Capture,
    // Declared after `capture`, so the descriptor closes after the queue let go of the buffers.
    dev: v4l::Device,
    fallback_logged: FallbackLog,
    buffers: u32,
    io: IoMode,
    stall: Duration,
    last_frame: Instant,
    slot_count: u32,
}

impl std::fmt::Debug for Camera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Camera")
            .field("name", &self.name)
            .field("device", &self.device)
            .finish()
    }
}

impl Opener for CameraOpener {
    type Device = Camera;

    fn open(&mut self) -> Result<Camera, SourceError> {
        // `open` runs on the stream's own thread: set its priority once.
        let req = crate::sched::Request {
            realtime: self.settings.realtime,
            nice: self.settings.nice,
        };
        if !self.priority_applied && req != crate::sched::Request::default() {
            apply_priority(req);
            self.priority_applied = true;
        }
        let s = &self.settings;
        let path = &s.device;
        let io = |op, e| {
            SourceError::from_io(
                path,
                op,
                e,
                super::hint::permission_here(super::kinds::DeviceClass::Camera),
            )
        };
        // Reject a missing path before v4l's open, which names no file in its error.
        std::fs::metadata(path).map_err(|e| io("open", e))?;
        let dev = v4l::Device::with_path(path).map_err(|e| io("open", e))?;
        let caps = dev
            .query_caps()
            .map_err(|e| io("query capabilities of", e))?;
        let needed = v4l::capability::Flags::VIDEO_CAPTURE | v4l::capability::Flags::STREAMING;
        if !caps.capabilities.contains(needed) {
            return Err(SourceError::Unsupported {
                device: path.clone(),
                detail: format!(
                    "{} ({}) is not a streaming video capture device (capabilities: {}); \
                     for a camera with several nodes, use the capture node, often the first",
                    caps.card, caps.driver, caps.capabilities
                ),
            });
        }
        let fourcc = s.format.0;
        let wanted = Format::new(s.width, s.height, FourCC::from(fourcc));
        let got = dev
            .set_format(&wanted)
            .map_err(|e| io("set format on", e))?;
        let got_fourcc = u32::from(got.fourcc);
        if (got.width, got.height, got_fourcc) != (s.width, s.height, fourcc) {
            let offered = dev
                .enum_formats()
                .map(|v| {
                    v.iter()
                        .map(|d| d.fourcc.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            tracing::warn!(
                asked = %format!("{}x{} {}", s.width, s.height, s.format),
                got = %format!("{}x{} {}", got.width, got.height, layout::fourcc_str(got_fourcc)),
                offered = %offered,
                "camera chose a different format"
            );
        }
        if got.size == 0 || got.width == 0 || got.height == 0 {
            return Err(SourceError::Unsupported {
                device: path.clone(),
                detail: format!(
                    "driver reported an empty format ({}x{}, {} bytes)",
                    got.width, got.height, got.size
                ),
            });
        }
        match dev.set_params(&v4l::video::capture::Parameters::with_fps(s.fps)) {
            Ok(p) => {
                let i = p.interval;
                let fps = if i.numerator > 0 {
                    f64::from(i.denominator) / f64::from(i.numerator)
                } else {
                    0.0
                };
                if (fps - f64::from(s.fps)).abs() > 0.01 {
                    tracing::warn!(
                        asked = s.fps,
                        got = fps,
                        "camera chose a different frame rate"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "camera does not accept a frame rate; using its default")
            }
        }
        let capture = match s.io {
            IoMode::Mmap => None,
            IoMode::Auto | IoMode::Userptr => {
                let ring_slots = s.slot_count.saturating_add(s.buffers);
                match RingCapture::new(&dev, ring_slots, s.buffers, got.size as usize) {
                    Ok(c) => Some(c),
                    Err(e) if s.io == IoMode::Userptr => {
                        return Err(SourceError::Unsupported {
                            device: path.clone(),
                            detail: format!(
                                "io = \"userptr\", but the driver refuses user pointer buffers \
                                 ({e}); use io = \"auto\" or \"mmap\""
                            ),
                        })
                    }
                    Err(e) => {
                        log_fallback(
                            &self.fallback_logged,
                            format!("the driver refuses user pointer buffers: {e}"),
                        );
                        None
                    }
                }
            }
        };
        let capture = match capture {
            Some(c) => Capture::Userptr(c),
            None => {
                Capture::Mmap(mmap_queue(&dev, s.buffers).map_err(|e| io("map buffers of", e))?)
            }
        };
        tracing::info!(
            device = %path.display(), card = %caps.card, driver = %caps.driver,
            format = %format!("{}x{} {} stride {}", got.width, got.height, layout::fourcc_str(got_fourcc), got.stride),
            io = if matches!(capture, Capture::Userptr(_)) { "userptr" } else { "mmap" },
            "camera open"
        );
        Ok(Camera {
            name: self.name.clone(),
            device: path.clone(),
            format: got,
            capture,
            dev,
            fallback_logged: self.fallback_logged.clone(),
            buffers: s.buffers,
            io: s.io,
            stall: Duration::from_secs_f64(s.stall_timeout_secs),
            last_frame: Instant::now(),
            slot_count: s.slot_count,
        })
    }
}

impl Camera {
    /// Ring slots: the configured history, plus one slot per buffer lent to the driver when
    /// capturing into slots (`auto` keeps that size after a fallback, so the ring is not
    /// replaced).
    fn ring_slots(&self) -> u32 {
        match self.io {
            IoMode::Mmap => self.slot_count,
            IoMode::Auto | IoMode::Userptr => self.slot_count.saturating_add(self.buffers),
        }
    }

    /// `auto` could not capture into slots: switch to MMAP and a copy, logged once.
    fn fallback(&mut self, reason: String) -> Result<(), SourceError> {
        log_fallback(&self.fallback_logged, reason);
        // The user pointer queue lets go of its buffers before MMAP buffers are requested.
        self.capture = Capture::Closed;
        let q = mmap_queue(&self.dev, self.buffers).map_err(|e| {
            SourceError::from_io(
                &self.device,
                "map buffers of",
                e,
                super::hint::permission_here(super::kinds::DeviceClass::Camera),
            )
        })?;
        self.capture = Capture::Mmap(q);
        Ok(())
    }
}

impl Device for Camera {
    fn spec(&self) -> RingSpec {
        let f = &self.format;
        RingSpec {
            name: self.name.clone(),
            kind: StreamKind::Video,
            slot_count: self.ring_slots(),
            slot_size: u64::from(f.size),
            video: Some(VideoFormat {
                width: f.width,
                height: f.height,
                fourcc: u32::from(f.fourcc),
                stride: f.stride,
            }),
        }
    }

    fn pump(
        &mut self,
        writer: &mut Writer,
        health: &StreamHealth,
        max_wait: Duration,
    ) -> Result<(), SourceError> {
        let result = match &mut self.capture {
            Capture::Mmap(queue) => copy_frame(queue, writer, health, max_wait),
            Capture::Userptr(c) if !c.is_streaming() => match c.start(writer) {
                Ok(()) => Ok(false),
                Err(e) => {
                    let _ = c.stop(writer);
                    if self.io == IoMode::Userptr {
                        return Err(SourceError::Unsupported {
                            device: self.device.clone(),
                            detail: format!("io = \"userptr\": {e}; use io = \"auto\" or \"mmap\""),
                        });
                    }
                    self.fallback(format!("{e}"))?;
                    Ok(false)
                }
            },
            Capture::Userptr(c) => match c.next(writer, max_wait) {
                Ok(Some(done)) => {
                    if done.device_error {
                        tracing::debug!(seq = done.seq, "driver flagged a frame as corrupt");
                    }
                    health.published(done.len);
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => {
                    // Stop the driver before the slots are given back.
                    let _ = c.stop(writer);
                    Err(e)
                }
            },
            Capture::Closed => Err(std::io::Error::other(
                "capture queue closed after a failure",
            )),
        };
        match result {
            Ok(true) => {
                self.last_frame = Instant::now();
                Ok(())
            }
            Ok(false) => {
                writer.heartbeat();
                if self.last_frame.elapsed() > self.stall {
                    return Err(SourceError::Disconnected {
                        device: self.device.clone(),
                        detail: format!("no frame for {:.1} s", self.stall.as_secs_f64()),
                    });
                }
                Ok(())
            }
            Err(e) => Err(SourceError::from_io(
                &self.device,
                "capture from",
                e,
                super::hint::permission_here(super::kinds::DeviceClass::Camera),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_applies_to_the_calling_thread_only() {
        let before = rustix::process::getpriority_process(None).expect("getpriority");
        let on_thread = std::thread::spawn(|| {
            // Lowering priority needs no privilege.
            let o = apply_priority(crate::sched::Request {
                realtime: None,
                nice: Some(7),
            });
            assert_eq!(o.applied, "nice:7");
            rustix::process::getpriority_process(Some(rustix::thread::gettid()))
                .expect("getpriority")
        })
        .join()
        .expect("thread");
        assert_eq!(on_thread, 7);
        assert_eq!(
            rustix::process::getpriority_process(None).expect("getpriority"),
            before,
            "the rest of the agent keeps its priority"
        );
    }

    #[test]
    fn io_and_nice_are_parsed_and_checked() {
        let parse = |extra: &str| -> Result<CameraSettings, String> {
            let s: CameraSettings = toml::from_str(&format!("device = \"/dev/video0\"\n{extra}"))
                .map_err(|e| e.to_string())?;
            s.validate("stream.cam0").map(|()| s)
        };
        assert_eq!(parse("").unwrap().io, IoMode::Auto);
        assert_eq!(parse("io = \"userptr\"").unwrap().io, IoMode::Userptr);
        assert_eq!(parse("io = \"mmap\"").unwrap().io, IoMode::Mmap);
        assert!(parse("io = \"dmabuf\"").is_err());
        assert_eq!(parse("nice = -5").unwrap().nice, Some(-5));
        let e = parse("nice = -21").unwrap_err();
        assert!(e.contains("stream.cam0.nice = -21"), "{e}");
        assert!(parse("nice = 20").is_err());
        assert_eq!(
            parse("realtime = \"fifo:10\"").unwrap().realtime,
            Some("fifo:10".parse().unwrap())
        );
        let e = parse("realtime = \"fifo:0\"").unwrap_err();
        assert!(e.contains("fifo:N or rr:N"), "{e}");
    }
}
