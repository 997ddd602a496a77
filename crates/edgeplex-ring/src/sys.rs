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

use memmap2::{MmapOptions, MmapRaw};

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

/// Whether `file` lives on tmpfs or ramfs. `false` when `fstatfs` fails.
pub fn fd_is_memory_fs(file: &File) -> bool {
    rustix::fs::fstatfs(file).is_ok_and(|st| {
        #[allow(clippy::unnecessary_cast)]
        let magic = st.f_type as i64;
        magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
    })
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
///
/// The mapping is held as raw memory (`memmap2::MmapRaw`): no `&[u8]` over the whole file is
/// ever formed, because another process writes it concurrently. Readers get atomics, raw
/// pointers, and copies made with a byte-wise atomic memcpy.
#[derive(Debug)]
pub struct Mem {
    map: MmapRaw,
    writable: bool,
}

impl Mem {
    /// Map the first `len` bytes of `file` shared, read-only (`PROT_READ`), prefaulted if
    /// `populate`.
    ///
    /// # SIGBUS
    /// Touching a page past the file's end raises SIGBUS. The caller must have checked that the
    /// file holds `len` bytes, and that they are allocated (so `populate` allocates nothing);
    /// ring files are never shrunk while reachable (the writer replaces, never truncates), and
    /// only the agent may write the ring directory. A file truncated anyway by someone who can
    /// write it raises SIGBUS on access: see [`exit_on_sigbus`] for tools that read untrusted
    /// rings.
    pub fn map_ro(file: &File, len: u64, populate: bool) -> io::Result<Mem> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut opts = MmapOptions::new();
        opts.len(len);
        if populate {
            opts.populate();
        }
        let map = opts.map_raw_read_only(file)?;
        Ok(Mem {
            map,
            writable: false,
        })
    }

    /// Map the first `len` bytes of `file` shared, read-write, prefaulted. Only the writer,
    /// which holds the file's OFD write lock and allocated every block, does this.
    pub fn map_rw(file: &File, len: u64) -> io::Result<Mem> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let map = MmapOptions::new().len(len).populate().map_raw(file)?;
        Ok(Mem {
            map,
            writable: true,
        })
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    fn base(&self) -> *const u8 {
        self.map.as_ptr()
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

    /// Copy `dst.len()` bytes at `off` out of the mapping with a byte-wise atomic memcpy, so
    /// that a concurrent store by the writer is a stale or torn value (caught by the seqlock
    /// afterwards), never a data race.
    pub fn copy_out(&self, off: u64, dst: &mut [u8]) {
        let off = self.check(off, dst.len() as u64, 1);
        // SAFETY: `off + dst.len()` is within the mapping (checked), which is readable for as
        // long as `self` lives; the bytes are initialised file contents. Concurrent writes come
        // from the writer process (stores the Rust memory model of this process cannot see);
        // the loads are atomic, so there is no data race here, and a torn copy is detected by
        // the seqlock.
        unsafe { atomic_copy(self.base().add(off), dst) }
    }

    /// A raw pointer to byte `off`, after checking that `len` bytes from it are in the mapping.
    pub fn ptr_at(&self, off: u64, len: u64) -> *const u8 {
        let off = self.check(off, len, 1);
        self.base().wrapping_add(off)
    }

    /// An exclusive view of `len` bytes at `off`, for the writer.
    pub fn bytes_mut(&mut self, off: u64, len: u64) -> &mut [u8] {
        assert!(self.writable, "bytes_mut on a read-only ring mapping");
        let off = self.check(off, len, 1);
        // SAFETY: in bounds (checked); the mapping is writable and lives as long as `self`,
        // which is borrowed mutably for the slice's life, so this process makes no other access
        // to it meanwhile. Other processes (readers) only read; the writer holds the ring's
        // OFD lock, so no other writer maps it.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(off), len as usize) }
    }
}

/// Copy `dst.len()` bytes from `src` with byte-wise atomic loads (crate `atomic-memcpy`): 4 KiB
/// blocks, then 64-byte blocks, then single bytes.
///
/// # Safety
/// `src` must be valid for reads of `dst.len()` initialised bytes for the whole call, and every
/// concurrent write to them in this process must be atomic (`atomic_memcpy::atomic_store` or
/// atomic stores of any width); writes by other processes are invisible to this process's
/// memory model and are allowed.
pub unsafe fn atomic_copy(src: *const u8, dst: &mut [u8]) {
    /// `N` bytes at `src`, loaded byte-wise atomically.
    ///
    /// # Safety
    /// As for `atomic_copy`, for `N` bytes.
    unsafe fn chunk<const N: usize>(src: *const u8) -> [u8; N] {
        // SAFETY: the caller guarantees `N` readable, initialised bytes; `[u8; N]` has
        // alignment 1 and no padding.
        let v = unsafe {
            atomic_memcpy::atomic_load(src as *const [u8; N], std::sync::atomic::Ordering::Relaxed)
        };
        // SAFETY: every byte was copied from initialised memory.
        unsafe { v.assume_init() }
    }
    const BIG: usize = 4096;
    const SMALL: usize = 64;
    let mut done = 0;
    while dst.len() - done >= BIG {
        // SAFETY: `done + BIG <= dst.len()`: within the range the caller vouched for.
        let c = unsafe { chunk::<BIG>(src.add(done)) };
        dst[done..done + BIG].copy_from_slice(&c);
        done += BIG;
    }
    while dst.len() - done >= SMALL {
        // SAFETY: `done + SMALL <= dst.len()`: within the range the caller vouched for.
        let c = unsafe { chunk::<SMALL>(src.add(done)) };
        dst[done..done + SMALL].copy_from_slice(&c);
        done += SMALL;
    }
    while done < dst.len() {
        // SAFETY: `done < dst.len()`: within the range the caller vouched for.
        dst[done] = unsafe { chunk::<1>(src.add(done)) }[0];
        done += 1;
    }
}

static SIGBUS_MESSAGE: std::sync::OnceLock<Box<[u8]>> = std::sync::OnceLock::new();
static SIGBUS_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(66);

/// Make a SIGBUS from a truncated mapping end the process with `message` on stderr and exit
/// code `code`, instead of killing it by signal. For command-line tools that map rings they do
/// not trust (a file truncated under a mapping raises SIGBUS on the next access). The first
/// call's message wins. A SIGBUS that is not an access past the end of a mapped file
/// (`BUS_ADRERR`) keeps its default action.
pub fn exit_on_sigbus(message: &str, code: u8) -> io::Result<()> {
    let _ = SIGBUS_MESSAGE.set(format!("{message}\n").into_bytes().into_boxed_slice());
    SIGBUS_CODE.store(i32::from(code), std::sync::atomic::Ordering::Relaxed);
    // SAFETY: zeroed sigaction is a valid starting value; the handler below only calls
    // async-signal-safe functions (write, _exit, sigaction, raise) and reads statics that are
    // initialised before it is installed.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    if code != libc::BUS_ADRERR {
        // Not a truncated file: default action (die by the signal, as without this handler).
        // SAFETY: async-signal-safe calls with valid arguments.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    if let Some(m) = SIGBUS_MESSAGE.get() {
        // SAFETY: write(2) and _exit(2) are async-signal-safe; `m` is a live static buffer.
        unsafe {
            libc::write(2, m.as_ptr() as *const libc::c_void, m.len());
        }
    }
    // SAFETY: _exit is async-signal-safe and does not return.
    unsafe { libc::_exit(SIGBUS_CODE.load(std::sync::atomic::Ordering::Relaxed)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seqlock::{self, StdFence};
    use std::cell::UnsafeCell;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    /// One seqlock slot on the heap: what a ring slot is, minus the file.
    struct Slot {
        seq: AtomicU64,
        bytes: UnsafeCell<[u8; 4096 + 64 + 3]>,
    }

    // SAFETY: `bytes` is only accessed with atomic_memcpy loads and stores.
    unsafe impl Sync for Slot {}

    /// The reader's copy against a concurrent writer, in one process, under the seqlock: run it
    /// under miri (`cargo +nightly miri test -p edgeplex-ring atomic_copy`) to check that the
    /// copy has no data race and no UB, and that a copy the seqlock validates is never torn. The
    /// writer stores with `atomic_memcpy::atomic_store`, the in-process stand-in for a writer
    /// in another process.
    #[test]
    fn atomic_copy_under_a_concurrent_writer_is_race_free_and_validated() {
        const ROUNDS: u64 = if cfg!(miri) { 6 } else { 2000 };
        let slot = Arc::new(Slot {
            seq: AtomicU64::new(seqlock::complete(0)),
            bytes: UnsafeCell::new([0; 4096 + 64 + 3]),
        });
        let writer = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || {
                for n in 1..=ROUNDS {
                    seqlock::begin_write::<_, StdFence>(&slot.seq, n);
                    let fill = [n as u8; 4096 + 64 + 3];
                    // SAFETY: the slot's bytes are valid, aligned for [u8; N], and only ever
                    // accessed atomically (this store, the reader's atomic loads).
                    unsafe {
                        atomic_memcpy::atomic_store(slot.bytes.get(), fill, Ordering::Relaxed)
                    };
                    seqlock::end_write(&slot.seq, n);
                }
            })
        };
        let mut intact = 0;
        let mut out = vec![0u8; 4096 + 64 + 3];
        for _ in 0..ROUNDS {
            let seen = slot.seq.load(Ordering::Acquire);
            if seen % 2 == 1 {
                continue;
            }
            // SAFETY: the buffer is valid for its whole length; all writes to it are atomic.
            unsafe { atomic_copy(slot.bytes.get() as *const u8, &mut out) };
            if seqlock::read_validate::<_, StdFence>(&slot.seq, seen) {
                intact += 1;
                assert!(out.iter().all(|&b| b == out[0]), "a validated copy is torn");
            }
        }
        writer.join().unwrap();
        assert!(intact > 0 || cfg!(miri));
    }
}
