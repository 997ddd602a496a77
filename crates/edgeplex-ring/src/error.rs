//! Errors of the ring: each says what went wrong with which file and what to do about it.

use std::io;
use std::path::{Path, PathBuf};

use super::layout::HeaderError;

/// Anything that can go wrong creating, opening or reading a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The file is not a valid ring: truncated, foreign, hostile or from another version.
    #[error("ring file {path} is not usable: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed validation (part of the message, so not also a `source`).
        reason: HeaderError,
    },
    /// Permission denied on a ring file or directory.
    #[error("cannot {op} {path}: permission denied; {hint}")]
    PermissionDenied {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
    /// No such ring.
    #[error("no ring at {path}; is the agent running, and is the ring directory mounted here?")]
    NotFound {
        /// Path looked at.
        path: PathBuf,
    },
    /// The ring directory is on a disk-backed filesystem.
    #[error(
        "ring directory {dir} is not on tmpfs: frames would be written to storage; use a tmpfs \
         such as /dev/shm or /run/edgeplex, or allow it explicitly (ring.allow_disk = true)"
    )]
    NotTmpfs {
        /// The directory.
        dir: PathBuf,
    },
    /// Another live process writes this ring.
    #[error("ring {path} already has a live writer (pid {pid} in its namespace); stop it first")]
    WriterActive {
        /// The file.
        path: PathBuf,
        /// Pid recorded in the header.
        pid: u32,
    },
    /// The filesystem is full.
    #[error("no space for ring {path} ({needed} bytes); enlarge the tmpfs or lower slot_count / slot size")]
    NoSpace {
        /// The file.
        path: PathBuf,
        /// Bytes needed.
        needed: u64,
    },
    /// A message larger than a slot.
    #[error("message of {len} bytes does not fit a {capacity}-byte slot")]
    TooLarge {
        /// Message length.
        len: usize,
        /// Slot capacity.
        capacity: u64,
    },
    /// The requested ring layout is invalid.
    #[error("invalid ring layout for {name}: {reason}")]
    BadSpec {
        /// Stream name.
        name: String,
        /// Why.
        reason: HeaderError,
    },
    /// Any other I/O failure.
    #[error("cannot {op} {path}: {error}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error (part of the message, so not also a `source`).
        error: io::Error,
    },
    /// A ring directory or file this process must not trust: a symlink, owned by another user,
    /// writable by others, or with other hard links.
    #[error("{path} {reason}")]
    Untrusted {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong and what to do (part of the message).
        reason: String,
    },
    /// A ring file whose blocks are not all allocated (a sparse file): mapping it would make
    /// the reader allocate memory, or die of SIGBUS on a full tmpfs.
    #[error(
        "ring file {path} is not fully allocated ({allocated} of {size} bytes): not written by an \
         edgeplex writer, or damaged; restart the agent to recreate it"
    )]
    NotAllocated {
        /// The file.
        path: PathBuf,
        /// Bytes allocated (`st_blocks * 512`).
        allocated: u64,
        /// Size the header describes.
        size: u64,
    },
    /// The path is not a regular file (a directory, a device, a FIFO).
    #[error(
        "{path} is not a regular file, so not a ring; ring files are <ring_dir>/<stream>/<stream>.ring"
    )]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
}

impl RingError {
    /// Wrap an I/O error, turning the cases a user can act on into named variants.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> RingError {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound => RingError::NotFound { path },
            io::ErrorKind::PermissionDenied => RingError::PermissionDenied {
                op,
                path,
                hint: "run as the ring's owner or a member of its group, or check the hostPath \
                       mount and the snap's interfaces",
            },
            _ if source.raw_os_error() == Some(libc::ENOSPC) => {
                RingError::NoSpace { path, needed: 0 }
            }
            _ => RingError::Io {
                op,
                path,
                error: source,
            },
        }
    }
}
