//! The single writer of a ring: creates, reopens or replaces the file, and publishes messages.

use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;
use std::sync::atomic::Ordering;

use super::dir::RingDir;
use super::error::RingError;
use super::layout::{self, desc, off, Geometry, RingSpec};
use super::seqlock::{self, StdFence};
use super::sys::{self, Mem};

// Lending several slots to a device (a child module: it uses the writer's private state).
#[path = "lend.rs"]
mod lend;
pub use lend::{Lender, LentSlot};

/// How ring files are created.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// File mode; readers need read permission only. Default 0o644.
    pub mode: u32,
    /// Group to give the file (numeric gid), so that pods running as that group can read it.
    pub group: Option<u32>,
    /// Accept a ring directory that is not tmpfs or ramfs (frames would reach storage).
    pub allow_disk: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            mode: 0o644,
            group: None,
            allow_disk: false,
        }
    }
}

/// Per-message metadata a source supplies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// Capture time in nanoseconds: CLOCK_MONOTONIC, or CLOCK_REALTIME with
    /// [`layout::FLAG_CAPTURE_REALTIME`] set in `flags`.
    pub capture_ns: u64,
    /// The device's own sequence number (V4L2 `sequence`, a sample counter).
    pub device_seq: u64,
    /// Message flags (`layout::FLAG_*`).
    pub flags: u32,
}

/// The one writer of a ring file. Holds the file's OFD write lock for its whole life.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    _file: File,
    mem: Mem,
    geometry: Geometry,
    head: u64,
    epoch: u64,
    /// Slots lent to a device through a [`Lender`] (see lend.rs).
    lent: lend::LentCount,
}

impl Writer {
    /// Create the ring at `path`, or reopen it if it exists with the same layout, or replace it
    /// (new file renamed over the old one, old one retired) if its layout differs or it is
    /// corrupt. A reopened or replacing writer bumps the epoch and continues the message numbers.
    ///
    /// The directory holding `path` is opened as a [`RingDir`] (created when missing, refused
    /// unless this process can trust it), and the file relative to it, never through a symlink.
    /// An agent opens its ring directory once and uses [`RingDir::open_writer`] instead.
    pub fn open(path: &Path, spec: &RingSpec, opts: &CreateOptions) -> Result<Writer, RingError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Err(RingError::NotAFile {
                path: path.to_path_buf(),
            });
        };
        let dir = RingDir::create(dir, opts.allow_disk)?;
        Self::open_in(&dir, name, spec, opts)
    }

    /// [`Writer::open`] for the file `name` of an already trusted directory.
    pub(crate) fn open_in(
        dir: &RingDir,
        name: &str,
        spec: &RingSpec,
        opts: &CreateOptions,
    ) -> Result<Writer, RingError> {
        Geometry::for_spec(spec, 0, 0).map_err(|reason| RingError::BadSpec {
            name: spec.name.clone(),
            reason,
        })?;
        let path = dir.path().join(name);
        let path = path.as_path();
        let file = match dir.open_file(OsStr::new(name), OFlags::RDWR) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Self::create(dir, name, spec, opts, 0, 1);
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(RingError::Untrusted {
                    path: path.to_path_buf(),
                    reason: "is a symbolic link; the writer never follows one: remove it".into(),
                })
            }
            Err(e) => return Err(RingError::io("open", path, e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| RingError::io("stat", path, e))?;
        if !meta.is_file() {
            return Err(RingError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let euid = rustix::process::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(RingError::Untrusted {
                path: path.to_path_buf(),
                reason: format!(
                    "is owned by uid {}, not by this process (uid {euid}); remove it and the \
                     writer creates its own",
                    meta.uid()
                ),
            });
        }
        if meta.nlink() > 1 {
            return Err(RingError::Untrusted {
                path: path.to_path_buf(),
                reason: format!(
                    "has {} hard links, so writing it would change a file elsewhere; remove it \
                     and the writer creates a new one",
                    meta.nlink()
                ),
            });
        }
        if !sys::try_lock_writer(&file).map_err(|e| RingError::io("lock", path, e))? {
            let pid = read_pid(&file).unwrap_or(0);
            return Err(RingError::WriterActive {
                path: path.to_path_buf(),
                pid,
            });
        }
        let len = meta.len();
        let mut page = vec![0u8; layout::HEADER_SIZE as usize];
        let parsed = if len >= layout::HEADER_SIZE {
            read_page(&file, &mut page).map_err(|e| RingError::io("read", path, e))?;
            layout::parse_header(&page, len)
        } else {
            Err(layout::HeaderError::TooSmall { len })
        };
        let wanted = Geometry::for_spec(spec, 0, 0).expect("checked above");
        match parsed {
            Ok(g) if g.matches(spec) && g.slot_size == wanted.slot_size => {
                apply_permissions(&file, path, opts)?;
                // A file with holes (punched, or left sparse) would kill this writer with
                // SIGBUS on a full tmpfs at the first store into a hole: allocate it all now.
                allocate(&file, path, g.file_size)?;
                let mem =
                    Mem::map_rw(&file, g.file_size).map_err(|e| RingError::io("map", path, e))?;
                let head = mem.u64_at(off::HEAD as u64).load(Ordering::Relaxed);
                let epoch = mem
                    .u64_at(off::EPOCH as u64)
                    .load(Ordering::Relaxed)
                    .wrapping_add(1);
                let w = Writer {
                    path: path.to_path_buf(),
                    _file: file,
                    mem,
                    geometry: g,
                    head,
                    epoch,
                    lent: Default::default(),
                };
                w.announce();
                trace_event!(debug, path = %path.display(), head, epoch, "reopened ring");
                Ok(w)
            }
            Ok(_) => {
                // Only the header page of the old file is written (to retire it): allocate and
                // map just that page.
                allocate(&file, path, layout::HEADER_SIZE)?;
                let old_mem = Mem::map_rw(&file, layout::HEADER_SIZE)
                    .map_err(|e| RingError::io("map", path, e))?;
                let head = old_mem.u64_at(off::HEAD as u64).load(Ordering::Relaxed);
                let epoch = old_mem.u64_at(off::EPOCH as u64).load(Ordering::Relaxed);
                let new = Self::create(dir, name, spec, opts, head, epoch.wrapping_add(1))?;
                retire(&old_mem);
                trace_event!(info, path = %path.display(), head, "ring geometry changed; old file retired");
                Ok(new)
            }
            Err(_e) => {
                trace_event!(warn, path = %path.display(), error = %_e, "replacing unusable ring file");
                Self::create(dir, name, spec, opts, 0, 1)
            }
        }
    }

    /// Build a fresh file in `dir`, anonymous (`O_TMPFILE`) or under an unpredictable name, and
    /// rename it over `name`, so that readers only ever see a complete header. A writer killed
    /// meanwhile leaves nothing behind, or a temporary file [`RingDir::sweep`] removes.
    fn create(
        dir: &RingDir,
        name: &str,
        spec: &RingSpec,
        opts: &CreateOptions,
        base: u64,
        epoch: u64,
    ) -> Result<Writer, RingError> {
        let path = dir.path().join(name);
        let geometry = Geometry::for_spec(spec, sys::realtime_ns(), base).map_err(|reason| {
            RingError::BadSpec {
                name: spec.name.clone(),
                reason,
            }
        })?;
        let (file, temp) = dir
            .create_temp(name, opts.mode)
            .map_err(|e| RingError::io("create a temporary file in", dir.path(), e))?;
        let result = (|| {
            apply_permissions(&file, &path, opts)?;
            if !sys::try_lock_writer(&file).map_err(|e| RingError::io("lock", &path, e))? {
                return Err(RingError::WriterActive {
                    path: path.clone(),
                    pid: 0,
                });
            }
            allocate(&file, &path, geometry.file_size)?;
            let mut mem = Mem::map_rw(&file, geometry.file_size)
                .map_err(|e| RingError::io("map", &path, e))?;
            geometry.encode(mem.bytes_mut(0, layout::HEADER_SIZE));
            mem.u64_at(off::EPOCH as u64)
                .store(epoch, Ordering::Relaxed);
            // Touch every payload page so the first frames do not pay for page faults.
            for slot in 0..u64::from(geometry.slot_count) {
                let at = geometry.payload_at(slot);
                for page in mem
                    .bytes_mut(at, geometry.slot_size)
                    .chunks_mut(layout::PAGE as usize)
                {
                    page[0] = 0;
                }
            }
            dir.install(&file, temp.clone(), name, name)
                .map_err(|e| RingError::io("rename", &path, e))?;
            Ok(mem)
        })();
        let mem = result.inspect_err(|_| {
            if let Some(t) = &temp {
                dir.remove(t);
            }
        })?;
        let w = Writer {
            path: path.clone(),
            _file: file,
            mem,
            geometry,
            head: base,
            epoch,
            lent: Default::default(),
        };
        w.announce();
        trace_event!(debug, path = %path.display(), base, epoch, "created ring");
        Ok(w)
    }

    /// Record this writer's pid, epoch and a heartbeat, and wake readers so they re-check.
    fn announce(&self) {
        let h = &self.mem;
        // Relaxed: informational fields, read only for display and liveness hints.
        h.u64_at(off::EPOCH as u64)
            .store(self.epoch, Ordering::Relaxed);
        h.u32_at(off::WRITER_PID as u64)
            .store(std::process::id(), Ordering::Relaxed);
        self.heartbeat();
        sys::futex_wake(h.u32_at(off::FUTEX as u64));
    }

    /// Publish a copy of `payload` as the next message. Returns its message number.
    pub fn publish(&mut self, payload: &[u8], meta: Meta) -> Result<u64, RingError> {
        let mut loan = self.lend();
        let buf = loan.buf();
        if payload.len() > buf.len() {
            return Err(RingError::TooLarge {
                len: payload.len(),
                capacity: buf.len() as u64,
            });
        }
        buf[..payload.len()].copy_from_slice(payload);
        Ok(loan.commit(payload.len(), meta))
    }

    /// Lend the next slot so a source can fill it in place. The slot's old message is invalid
    /// from this moment; dropping the loan without `commit` publishes nothing.
    ///
    /// # Panics
    /// While a [`Lender`] has slots lent to a device: the next slot is one of them.
    pub fn lend(&mut self) -> SlotLoan<'_> {
        self.lent.assert_none();
        let n = self.head;
        let slot = n % u64::from(self.geometry.slot_count);
        seqlock::begin_write::<_, StdFence>(self.mem.u64_at(self.geometry.desc_at(slot)), n);
        SlotLoan {
            writer: self,
            n,
            slot,
        }
    }

    /// Record that the writer is alive without publishing (an idle source).
    pub fn heartbeat(&self) {
        // Relaxed: a liveness hint for operators; the OFD lock is the authoritative test.
        self.mem
            .u64_at(off::HEARTBEAT_NS as u64)
            .store(sys::realtime_ns(), Ordering::Relaxed);
    }

    /// Number of messages published (the next message number).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// This writer's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The ring's layout.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Path of the ring file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Payload capacity of one slot.
    pub fn capacity(&self) -> usize {
        self.geometry.slot_size as usize
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A clean stop: readers see pid 0 and keep their cursor for the next writer.
        self.mem
            .u32_at(off::WRITER_PID as u64)
            .store(0, Ordering::Relaxed);
        self.heartbeat();
    }
}

/// A slot lent by [`Writer::lend`], to be filled in place and committed.
#[derive(Debug)]
pub struct SlotLoan<'w> {
    writer: &'w mut Writer,
    n: u64,
    slot: u64,
}

impl SlotLoan<'_> {
    /// The slot's whole payload area. Its old contents are undefined.
    pub fn buf(&mut self) -> &mut [u8] {
        let g = &self.writer.geometry;
        let (at, len) = (g.payload_at(self.slot), g.slot_size);
        self.writer.mem.bytes_mut(at, len)
    }

    /// The message number this slot will carry.
    pub fn seq(&self) -> u64 {
        self.n
    }

    /// Publish the first `len` bytes of the slot as the next message; wakes waiting readers.
    ///
    /// # Panics
    /// If `len` exceeds the slot's capacity: a bug in the caller, not input.
    pub fn commit(self, len: usize, meta: Meta) -> u64 {
        let w = self.writer;
        let g = &w.geometry;
        assert!(
            len as u64 <= g.slot_size,
            "commit of {len} bytes into a {}-byte slot",
            g.slot_size
        );
        let d = g.desc_at(self.slot);
        let m = &w.mem;
        // Relaxed: ordered by the seqlock (begin_write's release fence before, end_write's
        // release store after).
        m.u64_at(d + desc::LEN as u64)
            .store(len as u64, Ordering::Relaxed);
        m.u64_at(d + desc::CAPTURE_NS as u64)
            .store(meta.capture_ns, Ordering::Relaxed);
        m.u64_at(d + desc::DEVICE_SEQ as u64)
            .store(meta.device_seq, Ordering::Relaxed);
        let now = sys::realtime_ns();
        m.u64_at(d + desc::PUBLISH_NS as u64)
            .store(now, Ordering::Relaxed);
        m.u64_at(d + desc::EPOCH as u64)
            .store(w.epoch, Ordering::Relaxed);
        m.u32_at(d + desc::FLAGS as u64)
            .store(meta.flags, Ordering::Relaxed);
        seqlock::end_write(m.u64_at(d + desc::SEQ as u64), self.n);
        let head = self.n.wrapping_add(1);
        seqlock::publish_head(m.u64_at(off::HEAD as u64), head);
        // Relaxed: liveness hint only.
        m.u64_at(off::HEARTBEAT_NS as u64)
            .store(now, Ordering::Relaxed);
        // SYNC POINT: release, after head. A reader that loaded the old futex value before its
        // head check either sees this new value in FUTEX_WAIT (EAGAIN) or is queued and woken.
        m.u32_at(off::FUTEX as u64)
            .store(head as u32, Ordering::Release);
        // Readers map read-only and cannot register as waiters, so the writer always wakes.
        sys::futex_wake(m.u32_at(off::FUTEX as u64));
        w.head = head;
        self.n
    }
}

/// Mark a replaced file retired and wake its readers so they reopen the path.
fn retire(mem: &Mem) {
    let state = mem.u32_at(off::STATE as u64);
    // SYNC POINT: release, pairs with the reader's acquire load of the state: a reader that
    // sees RETIRED also sees the old file's final head and reopens only after draining it.
    state.store(
        state.load(Ordering::Relaxed) | layout::STATE_RETIRED,
        Ordering::Release,
    );
    let futex = mem.u32_at(off::FUTEX as u64);
    futex.store(
        futex.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Release,
    );
    sys::futex_wake(futex);
}

fn apply_permissions(file: &File, path: &Path, opts: &CreateOptions) -> Result<(), RingError> {
    // fchmod after open: the umask must not narrow what readers were promised.
    file.set_permissions(Permissions::from_mode(opts.mode))
        .map_err(|e| RingError::io("chmod", path, e))?;
    if let Some(gid) = opts.group {
        std::os::unix::fs::fchown(file, None, Some(gid)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                RingError::PermissionDenied {
                    op: "set the group of",
                    path: path.to_path_buf(),
                    hint: "the agent must be a member of ring.group, or run as root",
                }
            } else {
                RingError::io("chown", path, e)
            }
        })?;
    }
    Ok(())
}

fn allocate(file: &File, path: &Path, len: u64) -> Result<(), RingError> {
    sys::allocate(file, len).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EFBIG) => RingError::NoSpace {
            path: path.to_path_buf(),
            needed: len,
        },
        _ => RingError::io("allocate", path, e),
    })
}

fn read_page(file: &File, page: &mut [u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(page, 0)
}

fn read_pid(file: &File) -> Option<u32> {
    let mut b = [0u8; 4];
    use std::os::unix::fs::FileExt;
    file.read_exact_at(&mut b, off::WRITER_PID as u64).ok()?;
    Some(u32::from_le_bytes(b))
}
