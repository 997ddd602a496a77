//! Shared-memory rings: one writer, any number of zero-copy readers in other processes.
//!
//! A ring is one file on tmpfs, laid out as `RING.md` (shipped with this crate) specifies: a
//! 4 KiB header, a table of 64-byte slot descriptors, then `slot_count` page-aligned payload
//! slots. The [`Writer`] is the only type that can change a ring; a [`Reader`] maps it
//! `PROT_READ` and cannot. A slow reader loses the oldest messages and is told how many; it can
//! never slow the writer.
//!
//! Reading a ring that an edgeplex agent (or any [`Writer`]) publishes:
//!
//! ```no_run
//! use std::path::{Path, PathBuf};
//! use std::time::Duration;
//! use edgeplex_ring::{Reader, Recv, Start};
//!
//! let mut reader = Reader::open(Path::new("/dev/shm/edgeplex/cam0/cam0.ring"), Start::Newest)?;
//! let mut frame = Vec::new();
//! loop {
//!     match reader.next(Duration::from_secs(1))? {
//!         Recv::Message(msg) => {
//!             let seq = msg.seq();
//!             // Copies the payload, then checks the writer did not lap the slot meanwhile.
//!             if msg.copy_to(&mut frame) {
//!                 println!("message {seq}: {} bytes", frame.len());
//!             }
//!         }
//!         Recv::Reopened => println!("geometry changed; reading the new file"),
//!         Recv::TimedOut => println!("no message for a second"),
//!     }
//! }
//! # Ok::<(), edgeplex_ring::RingError>(())
//! ```
//!
//! This crate owns all of edgeplex's `unsafe` code (in `sys`). It depends on nothing but `libc`,
//! `memmap2` and `thiserror`; `serde` and `tracing` are optional features.

#![allow(unsafe_code)]

#[cfg(not(all(
    target_os = "linux",
    target_pointer_width = "64",
    target_endian = "little"
)))]
compile_error!(
    "edgeplex rings need 64-bit little-endian Linux (x86_64, aarch64): 64-bit atomic loads \
     must be plain loads that work on a read-only mapping"
);

/// Logs through `tracing` when the `tracing` feature is on; compiles to nothing otherwise.
macro_rules! trace_event {
    ($level:ident, $($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        tracing::$level!($($arg)*);
    }};
}

mod dir;
mod error;
mod hash;
pub mod layout;
mod reader;
pub mod seqlock;
mod shape;
mod sys;
mod wait;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use dir::{effective_uid, RingDir};
pub use error::RingError;
pub use hash::fnv1a64;
pub use layout::{Geometry, HeaderError, RingSpec, StreamKind, VideoFormat};
pub use reader::{Message, MessageHandle, Reader, Recv, Start};
pub use shape::{frame_shape, FrameShape};
pub use sys::{exit_on_sigbus, monotonic_ns, realtime_ns};
pub use wait::wait_for_ring;
pub use writer::{CreateOptions, Lender, LentSlot, Meta, SlotLoan, Writer};

/// File name suffix of ring files.
pub const RING_SUFFIX: &str = "ring";

/// The directory of stream `stream` inside the ring directory: `<ring_dir>/<stream>/`.
///
/// Each stream has a directory of its own so that a container can bind-mount it: a bind mount
/// of the ring file itself would pin that file's inode, and the container would never see the
/// new file a geometry change renames over the old one.
pub fn stream_dir(ring_dir: &Path, stream: &str) -> PathBuf {
    ring_dir.join(stream)
}

/// The ring file of stream `stream`: `<ring_dir>/<stream>/<stream>.ring`.
pub fn ring_path(ring_dir: &Path, stream: &str) -> PathBuf {
    stream_dir(ring_dir, stream).join(format!("{stream}.{RING_SUFFIX}"))
}

/// A decoded header: the immutable geometry plus a snapshot of the writer's live fields.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HeaderInfo {
    /// Immutable layout.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub geometry: Geometry,
    /// Current writer epoch.
    pub epoch: u64,
    /// Number of messages published.
    pub head: u64,
    /// Pid of the last writer (0 after a clean stop). Only meaningful in the writer's PID
    /// namespace; use `writer_alive` to test liveness.
    pub writer_pid: u32,
    /// Whether a writer holds the ring's lock right now.
    pub writer_alive: bool,
    /// Last publish or heartbeat, CLOCK_REALTIME nanoseconds.
    pub heartbeat_ns: u64,
    /// The file has been replaced at its path.
    pub retired: bool,
}

/// Read and validate the header of the ring at `path` without mapping its slots.
pub fn inspect(path: &Path) -> Result<HeaderInfo, RingError> {
    let (file, geometry) = reader::open_validated(path)?;
    let mem = sys::Mem::map_ro(&file, layout::HEADER_SIZE, false)
        .map_err(|e| RingError::io("map", path, e))?;
    Ok(header_info(&file, &mem, geometry))
}

fn header_info(file: &File, mem: &sys::Mem, geometry: Geometry) -> HeaderInfo {
    use layout::off;
    use std::sync::atomic::Ordering::Relaxed;
    // Relaxed everywhere: a snapshot for display, nothing is read on the strength of it.
    HeaderInfo {
        geometry,
        epoch: mem.u64_at(off::EPOCH as u64).load(Relaxed),
        head: mem.u64_at(off::HEAD as u64).load(Relaxed),
        writer_pid: mem.u32_at(off::WRITER_PID as u64).load(Relaxed),
        writer_alive: sys::writer_lock_held(file).unwrap_or(false),
        heartbeat_ns: mem.u64_at(off::HEARTBEAT_NS as u64).load(Relaxed),
        retired: mem.u32_at(off::STATE as u64).load(Relaxed) & layout::STATE_RETIRED != 0,
    }
}

/// Whether the filesystem holding `dir` keeps its pages in memory (tmpfs or ramfs).
pub fn is_memory_fs(dir: &Path) -> Result<bool, RingError> {
    let magic = sys::fs_magic(dir).map_err(|e| RingError::io("statfs", dir, e))?;
    Ok(magic == sys::TMPFS_MAGIC || magic == sys::RAMFS_MAGIC)
}
