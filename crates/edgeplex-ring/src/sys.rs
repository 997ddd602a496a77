//! Every system call and raw-memory access of the ring: futexes, OFD locks, `statfs`,
//! `fallocate`, the mappings and typed views into them.
//!
//! All `unsafe` of the crate is in `src/ring`, and most of it is here, each block with its
//! `SAFETY:` argument. Nothing here knows the ring protocol; it only keeps accesses in bounds and
//! aligned.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use memmap2::{Mmap, MmapMut, MmapOptions};

/// Filesystem magic of tmpfs (`statfs(2)`).
pub const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Filesystem magic of ramfs.
pub const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// What a futex wait returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Woken, or the word had already changed, or a signal arrived: look again.
    Changed,
    /// The timeout passed with no wake-up.
    TimedOut,
}

/// Block while `*word == expected`, for at most `timeout`.
///
/// The futex is shared (no `FUTEX_PRIVATE_FLAG`): the word lives in a file mapping and the waker
/// is another process. Waiting only reads the word, so it works on a `PROT_READ` mapping.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> Wait {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned 4-byte location for the duration of the call (a shared
    // reference to it is held); `ts` outlives the call; the remaining arguments are unused by
    // FUTEX_WAIT. The kernel only reads the word.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
        Wait::TimedOut
    } else {
        // 0 (woken), EAGAIN (value changed), EINTR (signal): the caller re-checks in all cases.
        Wait::Changed
    }
}

/// Wake every process waiting on `word`. Returns how many were woken.
pub fn futex_wake(word: &AtomicU32) -> usize {
    // SAFETY: `word` is a valid, aligned 4-byte location; FUTEX_WAKE does not access it beyond
    // computing the futex key, and ignores the trailing arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    rc.max(0) as usize
}

/// The filesystem type magic (`f_type`) of the filesystem holding `dir`.
pub fn fs_magic(dir: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated string and `st` points to writable memory of the
    // right type for the call's duration.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

fn whole_file_lock(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value (whole file from offset 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

/// Try to take the writer's open-file-description write lock on the whole file.
/// `Ok(false)` means another open file description (another writer) holds it.
pub fn try_lock_writer(file: &File) -> io::Result<bool> {
    let mut fl = whole_file_lock(libc::F_WRLCK as libc::c_short);
    // SAFETY: the fd is open for the call's duration and `fl` is a valid flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}

/// Whether some open file description holds a write lock on `file`: a live writer. Works on a
/// read-only descriptor, across PID namespaces, and reports "unlocked" as soon as a killed
/// writer's descriptors are closed by the kernel.
pub fn writer_lock_held(file: &File) -> io::Result<bool> {
    // A read-lock query conflicts exactly with write locks, and a read-only fd may ask it.
    let mut fl = whole_file_lock(libc::F_RDLCK as libc::c_short);
    // SAFETY: the fd is open for the call's duration and `fl` is a valid flock the kernel fills.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Allocate every block of the file now, so that a full tmpfs fails here with ENOSPC instead of
/// killing the writer with SIGBUS on a later page fault.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ring file too large"))?;
    // SAFETY: the fd is open; posix_fallocate has no memory arguments.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock V4L2 timestamps frames with).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A mapping of a ring file and typed, bounds-checked views into it.
#[derive(Debug)]
pub struct Mem {
    map: Map,
}

#[derive(Debug)]
enum Map {
    Ro(Mmap),
    Rw(MmapMut),
}

impl Mem {
    /// Map the first `len` bytes of `file` shared, read-only (`PROT_READ`), prefaulted.
    ///
    /// # SIGBUS
    /// Touching a page past the file's end raises SIGBUS. The caller must have checked that the
    /// file holds `len` bytes; ring files are never shrunk while reachable (the writer replaces,
    /// never truncates), and only the agent may write the ring directory.
    pub fn map_ro(file: &File, len: u64, populate: bool) -> io::Result<Mem> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut opts = MmapOptions::new();
        opts.len(len);
        if populate {
            opts.populate();
        }
        // SAFETY: see the SIGBUS paragraph above: the caller validated the file's size against
        // `len`, and ring files are never truncated while reachable. Concurrent modification
        // by the writer is the protocol: every read of writer-mutated memory goes through
        // atomics or is validated by the seqlock afterwards.
        let map = unsafe { opts.map(file)? };
        Ok(Mem { map: Map::Ro(map) })
    }

    /// Map the first `len` bytes of `file` shared, read-write, prefaulted. Only the writer,
    /// which holds the file's OFD write lock, does this.
    pub fn map_rw(file: &File, len: u64) -> io::Result<Mem> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: the writer allocated `len` bytes with fallocate (or validated the size of an
        // existing file) and holds the OFD write lock, so no other writer maps it writable;
        // readers only read. The file is never truncated while mapped.
        let map = unsafe { MmapOptions::new().len(len).populate().map_mut(file)? };
        Ok(Mem { map: Map::Rw(map) })
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        match &self.map {
            Map::Ro(m) => m.len(),
            Map::Rw(m) => m.len(),
        }
    }

    fn base(&self) -> *const u8 {
        match &self.map {
            Map::Ro(m) => m.as_ptr(),
            Map::Rw(m) => m.as_ptr(),
        }
    }

    fn check(&self, off: u64, len: u64, align: u64) -> usize {
        let end = off.checked_add(len).expect("offset overflow");
        assert!(
            end <= self.len() as u64,
            "ring access {off}+{len} past mapping of {}",
            self.len()
        );
        assert!(
            off.is_multiple_of(align),
            "ring access at {off} not {align}-aligned"
        );
        off as usize
    }

    /// The 64-bit atomic at byte offset `off`.
    pub fn u64_at(&self, off: u64) -> &AtomicU64 {
        let off = self.check(off, 8, 8);
        // SAFETY: in bounds and 8-aligned (checked above; the mapping is page-aligned), the
        // mapping lives as long as `self`, and AtomicU64 has the layout of u64. All access to
        // this word, in every process, is atomic. Loads are plain loads, valid on PROT_READ.
        unsafe { &*(self.base().add(off) as *const AtomicU64) }
    }

    /// The 32-bit atomic at byte offset `off`.
    pub fn u32_at(&self, off: u64) -> &AtomicU32 {
        let off = self.check(off, 4, 4);
        // SAFETY: as for `u64_at`, with 4-byte size and alignment.
        unsafe { &*(self.base().add(off) as *const AtomicU32) }
    }

    /// Copy `dst.len()` bytes at `off` out of the mapping.
    pub fn copy_out(&self, off: u64, dst: &mut [u8]) {
        let off = self.check(off, dst.len() as u64, 1);
        // SAFETY: the source range is in bounds (checked) and cannot overlap `dst`, which is
        // private memory. Bytes the writer races on are validated by the seqlock afterwards.
        unsafe { std::ptr::copy_nonoverlapping(self.base().add(off), dst.as_mut_ptr(), dst.len()) }
    }

    /// A pointer to `len` bytes at `off`, bounds-checked, valid while `self` lives. Memory the
    /// writer races on: read it through raw pointers and validate the seqlock afterwards.
    pub fn ptr(&self, off: u64, len: u64) -> *const u8 {
        let off = self.check(off, len, 1);
        self.base().wrapping_add(off)
    }

    /// A shared view of `len` bytes at `off`.
    ///
    /// The bytes live in a file another process may write. Callers that hand this out must
    /// validate the seqlock after use (see `reader::Message`).
    pub fn bytes(&self, off: u64, len: u64) -> &[u8] {
        let off = self.check(off, len, 1);
        // SAFETY: in bounds (checked); the mapping lives as long as `self`. This process never
        // writes through a read-only mapping; the writer's concurrent stores are detected by
        // the seqlock, which every consumer of this view checks after use.
        unsafe { std::slice::from_raw_parts(self.base().add(off), len as usize) }
    }

    /// An exclusive view of `len` bytes at `off`, for the writer.
    pub fn bytes_mut(&mut self, off: u64, len: u64) -> &mut [u8] {
        let off = self.check(off, len, 1);
        match &mut self.map {
            Map::Rw(m) => &mut m[off..off + len as usize],
            Map::Ro(_) => panic!("bytes_mut on a read-only ring mapping"),
        }
    }
}
