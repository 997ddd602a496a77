//! The C ABI of the edgeplex ring reader: `libedgeplex_ring_c.so` and `libedgeplex_ring_c.a`, with
//! the header `include/edgeplex_ring.h`.
//!
//! Every function is a thin conversion over `edgeplex-ring`'s [`Reader`] and [`MessageHandle`];
//! the protocol is not implemented here. `unsafe` appears only where C hands in raw pointers,
//! each function documents what it requires, and no panic crosses the boundary (each call runs
//! under `catch_unwind` and reports a panic as an error). Errors set a thread-local message that
//! [`edgeplex_last_error`] returns: the same one-line text the edgeplex CLI prints.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use edgeplex_ring::{wait_for_ring, MessageHandle, Reader, Recv, RingError, Start};

/// Success.
pub const EDGEPLEX_OK: c_int = 0;
/// Nothing arrived within the timeout.
pub const EDGEPLEX_TIMEDOUT: c_int = 1;
/// An error; [`edgeplex_last_error`] says which.
pub const EDGEPLEX_ERROR: c_int = -1;

/// A reader of one ring (opaque).
#[derive(Debug)]
pub struct EdgeplexRing {
    reader: Reader,
}

/// One message, in place in its slot (opaque). It keeps the ring file mapped until freed, even
/// after the ring is closed.
#[derive(Debug)]
pub struct EdgeplexMsg {
    handle: MessageHandle,
}

/// The layout of a ring file.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeplexGeometry {
    /// 0 bytes, 1 video, 2 serial.
    pub kind: u32,
    /// Frame width in pixels (video).
    pub width: u32,
    /// Frame height in pixels (video).
    pub height: u32,
    /// V4L2 fourcc, little-endian (video).
    pub fourcc: u32,
    /// Bytes per line (video).
    pub stride: u32,
    /// Number of slots.
    pub slot_count: u32,
    /// Payload capacity of one slot.
    pub slot_size: u64,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: impl Into<Vec<u8>>) {
    let mut bytes: Vec<u8> = msg.into();
    bytes.retain(|&b| b != 0);
    let c = CString::new(bytes).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Run `f`, turning an error or a panic into `fallback` and a thread-local message.
fn guard<T>(fallback: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(msg)) => {
            set_error(msg);
            fallback
        }
        Err(_) => {
            set_error("internal error in libedgeplex_ring_c (a panic); please report it");
            fallback
        }
    }
}

fn timeout(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// # Safety
/// `path` is NULL or a NUL-terminated string.
unsafe fn path_arg<'a>(path: *const c_char) -> Result<&'a Path, String> {
    if path.is_null() {
        return Err("path is NULL".into());
    }
    // SAFETY: non-NULL and NUL-terminated, by the caller's contract.
    let c = unsafe { CStr::from_ptr(path) };
    Ok(Path::new(std::ffi::OsStr::from_bytes(c.to_bytes())))
}

/// The message of the last error on this thread ("" if none). Valid until the next call on this
/// thread.
#[no_mangle]
pub extern "C" fn edgeplex_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Open the ring at `path`. `start`: 0 newest, 1 oldest, 2 next. `wait_ms` > 0 waits that long
/// for a ring that does not exist yet. Returns NULL on error.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_ring_open(
    path: *const c_char,
    start: c_int,
    wait_ms: i64,
) -> *mut EdgeplexRing {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from this function's contract.
        let path = unsafe { path_arg(path) }?;
        let start = match start {
            0 => Start::Newest,
            1 => Start::Oldest,
            2 => Start::Next,
            s => {
                return Err(format!(
                    "start must be 0 (newest), 1 (oldest) or 2 (next), not {s}"
                ))
            }
        };
        let reader = match timeout(wait_ms) {
            Some(t) if !t.is_zero() => Reader::wait_open(path, start, t),
            _ => Reader::open(path, start),
        }
        .map_err(|e| e.to_string())?;
        Ok(Box::into_raw(Box::new(EdgeplexRing { reader })))
    })
}

/// Wait up to `timeout_ms` for a ring to appear at `path`: `EDGEPLEX_OK` or `EDGEPLEX_ERROR`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_wait_for_ring(path: *const c_char, timeout_ms: i64) -> c_int {
    guard(EDGEPLEX_ERROR, || {
        // SAFETY: forwarded from this function's contract.
        let path = unsafe { path_arg(path) }?;
        let t = timeout(timeout_ms).unwrap_or(Duration::ZERO);
        wait_for_ring(path, t).map_err(|e| e.to_string())?;
        Ok(EDGEPLEX_OK)
    })
}

/// # Safety
/// `ring` is NULL or from `edgeplex_ring_open` and not closed; `out` is NULL or writable.
unsafe fn receive(
    ring: *mut EdgeplexRing,
    timeout_ms: i64,
    out: *mut *mut EdgeplexMsg,
    latest: bool,
) -> c_int {
    guard(EDGEPLEX_ERROR, || {
        // SAFETY: by the caller's contract, a live ring this thread may use exclusively.
        let ring = unsafe { ring.as_mut() }.ok_or("ring is NULL")?;
        if out.is_null() {
            return Err("out is NULL".into());
        }
        let deadline = timeout(timeout_ms).map(|t| Instant::now() + t);
        loop {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            let recv = if latest {
                ring.reader.latest(left)
            } else {
                ring.reader.next(left)
            };
            match recv.map_err(|e: RingError| e.to_string())? {
                Recv::Message(m) => {
                    let msg = Box::new(EdgeplexMsg { handle: m.handle() });
                    // SAFETY: `out` is non-NULL and writable by the caller's contract.
                    unsafe { out.write(Box::into_raw(msg)) };
                    return Ok(EDGEPLEX_OK);
                }
                Recv::Reopened => {}
                Recv::TimedOut if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Ok(EDGEPLEX_TIMEDOUT)
                }
                Recv::TimedOut => {}
            }
        }
    })
}

/// The next message, waiting up to `timeout_ms` (< 0: forever). On `EDGEPLEX_OK`, `*out` holds
/// a message to free with `edgeplex_msg_free`. A geometry change is followed transparently.
///
/// # Safety
/// `ring` is NULL or from `edgeplex_ring_open`, not closed, and not used by another thread at
/// the same time; `out` is NULL or points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_ring_next(
    ring: *mut EdgeplexRing,
    timeout_ms: i64,
    out: *mut *mut EdgeplexMsg,
) -> c_int {
    // SAFETY: forwarded from this function's contract.
    unsafe { receive(ring, timeout_ms, out, false) }
}

/// The newest message, skipping older ones (counted as lost), else waits like
/// `edgeplex_ring_next`.
///
/// # Safety
/// As for `edgeplex_ring_next`.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_ring_latest(
    ring: *mut EdgeplexRing,
    timeout_ms: i64,
    out: *mut *mut EdgeplexMsg,
) -> c_int {
    // SAFETY: forwarded from this function's contract.
    unsafe { receive(ring, timeout_ms, out, true) }
}

/// Fill `*out` with the current file's layout.
///
/// # Safety
/// `ring` is NULL or a live ring; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_ring_geometry(
    ring: *const EdgeplexRing,
    out: *mut EdgeplexGeometry,
) -> c_int {
    guard(EDGEPLEX_ERROR, || {
        // SAFETY: NULL or a live ring, by the caller's contract.
        let ring = unsafe { ring.as_ref() }.ok_or("ring is NULL")?;
        if out.is_null() {
            return Err("out is NULL".into());
        }
        let g = ring.reader.geometry();
        let geo = EdgeplexGeometry {
            kind: g.kind.code(),
            width: g.video.width,
            height: g.video.height,
            fourcc: g.video.fourcc,
            stride: g.video.stride,
            slot_count: g.slot_count,
            slot_size: g.slot_size,
        };
        // SAFETY: non-NULL and writable by the caller's contract.
        unsafe { out.write(geo) };
        Ok(EDGEPLEX_OK)
    })
}

/// Messages lost so far (lapped, or skipped by `edgeplex_ring_latest`); 0 for NULL.
///
/// # Safety
/// `ring` is NULL or a live ring.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_ring_lost(ring: *const EdgeplexRing) -> u64 {
    // SAFETY: NULL or a live ring, by the caller's contract.
    unsafe { ring.as_ref() }.map_or(0, |r| r.reader.lost())
}

/// 1 if a writer holds the ring's lock now, else 0.
///
/// # Safety
/// `ring` is NULL or a live ring.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_ring_writer_alive(ring: *const EdgeplexRing) -> c_int {
    // SAFETY: NULL or a live ring, by the caller's contract.
    unsafe { ring.as_ref() }.map_or(0, |r| c_int::from(r.reader.writer_alive()))
}

/// Close the ring (NULL is ignored). Messages not yet freed stay valid.
///
/// # Safety
/// `ring` is NULL or from `edgeplex_ring_open`, and not used again.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_ring_close(ring: *mut EdgeplexRing) {
    if !ring.is_null() {
        // SAFETY: allocated by `edgeplex_ring_open` with Box, released once, by the contract.
        drop(unsafe { Box::from_raw(ring) });
    }
}

/// # Safety
/// `msg` is NULL or a live message.
unsafe fn msg_ref<'a>(msg: *const EdgeplexMsg) -> Option<&'a MessageHandle> {
    // SAFETY: NULL or a live message, by the caller's contract.
    unsafe { msg.as_ref() }.map(|m| &m.handle)
}

macro_rules! msg_getter {
    ($(#[$doc:meta])* $name:ident -> $t:ty = $get:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// `msg` is NULL (the result is 0) or a live message.
        #[no_mangle]
        pub unsafe extern "C" fn $name(msg: *const EdgeplexMsg) -> $t {
            // SAFETY: forwarded from this function's contract.
            unsafe { msg_ref(msg) }.map_or(0, |m| m.$get() as $t)
        }
    };
}

msg_getter!(
    /// Message number since the ring was created.
    edgeplex_msg_seq -> u64 = seq
);
msg_getter!(
    /// Epoch of the writer that published it.
    edgeplex_msg_epoch -> u64 = epoch
);
msg_getter!(
    /// Capture time, ns (CLOCK_MONOTONIC unless flag 2, CLOCK_REALTIME).
    edgeplex_msg_capture_ns -> u64 = capture_ns
);
msg_getter!(
    /// The device's sequence number (restarts with each writer).
    edgeplex_msg_device_seq -> u64 = device_seq
);
msg_getter!(
    /// When the writer published it, CLOCK_REALTIME ns.
    edgeplex_msg_publish_ns -> u64 = publish_ns
);
msg_getter!(
    /// Message flags.
    edgeplex_msg_flags -> u32 = flags
);
msg_getter!(
    /// Messages lost between the previous message and this one.
    edgeplex_msg_lost_before -> u64 = lost_before
);
msg_getter!(
    /// Payload length in bytes.
    edgeplex_msg_len -> usize = len
);

/// The payload in place (NULL for NULL). The writer may overwrite it once it laps the slot: use
/// it, then check `edgeplex_msg_intact`.
///
/// # Safety
/// `msg` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_msg_data(msg: *const EdgeplexMsg) -> *const u8 {
    // SAFETY: forwarded from this function's contract.
    unsafe { msg_ref(msg) }.map_or(std::ptr::null(), |m| m.as_ptr())
}

/// 1 if the writer has not overwritten the slot since the message was handed out, else 0.
///
/// # Safety
/// `msg` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_msg_intact(msg: *const EdgeplexMsg) -> c_int {
    // SAFETY: forwarded from this function's contract.
    unsafe { msg_ref(msg) }.map_or(0, |m| c_int::from(m.is_intact()))
}

/// Copy the payload into `dst` (capacity `cap`) and check it: `EDGEPLEX_OK` if the copy is
/// intact, else `EDGEPLEX_ERROR` (too small, or overwritten during the copy).
///
/// # Safety
/// `msg` is NULL or a live message; `dst` is NULL or writable for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_msg_copy(
    msg: *const EdgeplexMsg,
    dst: *mut u8,
    cap: usize,
) -> c_int {
    guard(EDGEPLEX_ERROR, || {
        // SAFETY: forwarded from this function's contract.
        let m = unsafe { msg_ref(msg) }.ok_or("msg is NULL")?;
        if dst.is_null() || cap < m.len() {
            return Err(format!(
                "dst holds {cap} bytes; the message has {}",
                m.len()
            ));
        }
        let mut buf = Vec::new();
        if !m.copy_to(&mut buf) {
            return Err(format!(
                "message {} was overwritten by the writer while being copied",
                m.seq()
            ));
        }
        // SAFETY: `dst` is writable for `cap >= buf.len()` bytes and does not overlap `buf`.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) };
        Ok(EDGEPLEX_OK)
    })
}

/// Free a message (NULL is ignored).
///
/// # Safety
/// `msg` is NULL or from `edgeplex_ring_next`/`_latest`, and not used again.
#[no_mangle]
pub unsafe extern "C" fn edgeplex_msg_free(msg: *mut EdgeplexMsg) {
    if !msg.is_null() {
        // SAFETY: allocated with Box by `receive`, released once, by the contract.
        drop(unsafe { Box::from_raw(msg) });
    }
}

/// FNV-1a 64 of `len` bytes at `data`: the hash `edgeplex ring cat --meta --hash` prints.
///
/// # Safety
/// `data` is readable for `len` bytes (or `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn edgeplex_fnv1a64(data: *const u8, len: usize) -> u64 {
    if data.is_null() || len == 0 {
        return edgeplex_ring::fnv1a64(&[]);
    }
    // SAFETY: readable for `len` bytes by the caller's contract. Payload bytes the writer races
    // on are, at worst, a wrong hash, which `edgeplex_msg_intact` afterwards reports.
    edgeplex_ring::fnv1a64(unsafe { std::slice::from_raw_parts(data, len) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    /// The header's struct layout and constants are the Rust side's: a C file of static
    /// assertions, generated from the Rust values, must compile against `edgeplex_ring.h`.
    #[test]
    fn header_matches_the_rust_abi() {
        let header = concat!(env!("CARGO_MANIFEST_DIR"), "/include/edgeplex_ring.h");
        let mut c = format!("#include \"{header}\"\n#include <stddef.h>\n");
        let mut check =
            |expr: String| c.push_str(&format!("_Static_assert({expr}, \"{expr}\");\n"));
        check(format!(
            "sizeof(EdgeplexGeometry) == {}",
            size_of::<EdgeplexGeometry>()
        ));
        for (field, off) in [
            ("kind", offset_of!(EdgeplexGeometry, kind)),
            ("width", offset_of!(EdgeplexGeometry, width)),
            ("height", offset_of!(EdgeplexGeometry, height)),
            ("fourcc", offset_of!(EdgeplexGeometry, fourcc)),
            ("stride", offset_of!(EdgeplexGeometry, stride)),
            ("slot_count", offset_of!(EdgeplexGeometry, slot_count)),
            ("slot_size", offset_of!(EdgeplexGeometry, slot_size)),
        ] {
            check(format!("offsetof(EdgeplexGeometry, {field}) == {off}"));
        }
        use edgeplex_ring::layout;
        for (name, v) in [
            ("EDGEPLEX_OK", i64::from(EDGEPLEX_OK)),
            ("EDGEPLEX_TIMEDOUT", i64::from(EDGEPLEX_TIMEDOUT)),
            ("EDGEPLEX_ERROR", i64::from(EDGEPLEX_ERROR)),
            (
                "EDGEPLEX_KIND_BYTES",
                layout::StreamKind::Bytes.code().into(),
            ),
            (
                "EDGEPLEX_KIND_VIDEO",
                layout::StreamKind::Video.code().into(),
            ),
            (
                "EDGEPLEX_KIND_SERIAL",
                layout::StreamKind::Serial.code().into(),
            ),
            ("EDGEPLEX_FLAG_TRUNCATED", layout::FLAG_TRUNCATED.into()),
            (
                "EDGEPLEX_FLAG_CAPTURE_REALTIME",
                layout::FLAG_CAPTURE_REALTIME.into(),
            ),
            (
                "EDGEPLEX_FLAG_DEVICE_ERROR",
                layout::FLAG_DEVICE_ERROR.into(),
            ),
        ] {
            check(format!("{name} == {v}"));
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("abi.c");
        std::fs::write(&file, c).unwrap();
        let out = Command::new("cc")
            .args(["-std=c11", "-Wall", "-Werror", "-fsyntax-only"])
            .arg(&file)
            .output()
            .expect("run cc (Debian: gcc)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
