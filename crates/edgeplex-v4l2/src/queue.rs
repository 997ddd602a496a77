//! The capture queue: buffers requested from the driver, their mappings, and the state of each.
//!
//! Buffer states as the queue tracks them:
//!
//! ```text
//!  Idle ──qbuf──▶ Queued ──dqbuf──▶ Dequeued ──requeue──▶ Queued
//!    ▲                                   │
//!    └──────────── stop (STREAMOFF) ─────┴── (every buffer)
//! ```
//!
//! Only an `Idle` or `Dequeued` buffer is ever passed to `VIDIOC_QBUF`, and only a `Dequeued`
//! buffer's memory is ever read.

use std::io;
use std::os::raw::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use v4l::v4l2::vidioc;
use v4l::v4l_sys as sys;

const CAPTURE: u32 = sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
const MEMORY_MMAP: u32 = sys::v4l2_memory_V4L2_MEMORY_MMAP;
const MEMORY_USERPTR: u32 = sys::v4l2_memory_V4L2_MEMORY_USERPTR;

/// Distinguishes the frames of one queue from those of another.
static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

/// Issue `request` on `fd` with `arg`, retrying on `EINTR`.
///
/// # Safety
///
/// `request` must be a V4L2 ioctl whose argument is a `T` (the kernel reads and writes at most
/// `size_of::<T>()` bytes through the pointer), and any pointer *inside* `*arg` that the kernel
/// follows (a user pointer buffer) must satisfy that ioctl's own contract.
pub(crate) unsafe fn ioctl<T>(
    fd: c_int,
    request: vidioc::_IOC_TYPE,
    arg: &mut T,
) -> io::Result<()> {
    // The size field of the ioctl number (bits 16..30) is the argument's size.
    debug_assert_eq!(
        ((request >> 16) & 0x3fff) as usize,
        std::mem::size_of::<T>(),
        "ioctl argument type does not match the request"
    );
    let arg: *mut T = arg;
    loop {
        // SAFETY: `fd` is an open descriptor (or the call fails with EBADF); `arg` points to a
        // live, exclusively borrowed `T` for the whole call, and the caller guarantees that
        // `request` takes a `T`.
        let r = unsafe { libc::ioctl(fd, request, arg.cast::<c_void>()) };
        if r != -1 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A `v4l2_buffer` for the capture queue with every other field zero.
fn v4l2_buffer(index: u32, memory: u32) -> sys::v4l2_buffer {
    // SAFETY: `v4l2_buffer` is a plain C struct of integers, a `timeval`, a `v4l2_timecode` and
    // unions of integers and raw pointers: the all-zero bit pattern is a valid value of each.
    let mut b: sys::v4l2_buffer = unsafe { std::mem::zeroed() };
    b.index = index;
    b.type_ = CAPTURE;
    b.memory = memory;
    b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Ours, not known to the driver's queue (after REQBUFS or STREAMOFF).
    Idle,
    /// In the driver's queue: the driver may write it at any time.
    Queued,
    /// Given back by the driver and not queued again yet: ours to read.
    Dequeued,
}

#[derive(Debug)]
struct Buffer {
    /// MMAP: start of our `PROT_READ` mapping of the buffer (unmapped in Drop). USERPTR: the
    /// caller's memory last queued (never unmapped by us), dangling before the first queue.
    ptr: NonNull<u8>,
    /// Length of the mapping or of the caller's memory.
    len: usize,
    state: State,
    /// Which dequeue of this buffer the current [`Frame`] came from.
    generation: u64,
}

/// One dequeued buffer: which buffer it is and what the driver said about it. Read its bytes with
/// [`CaptureQueue::data`], then give it back with [`CaptureQueue::requeue`].
#[derive(Debug)]
#[must_use = "give the buffer back with CaptureQueue::requeue, or the driver runs out of buffers"]
pub struct Frame {
    queue: u64,
    index: u32,
    generation: u64,
    bytesused: u32,
    flags: u32,
    sequence: u32,
    timestamp: Duration,
    userptr: usize,
}

impl Frame {
    /// For a user-pointer queue: the address of the memory the driver filled (the one queued
    /// with this buffer). 0 for an MMAP queue.
    pub fn user_ptr(&self) -> usize {
        self.userptr
    }
    /// The driver's buffer index.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// Bytes of image data the driver wrote (`bytesused`).
    pub fn bytesused(&self) -> u32 {
        self.bytesused
    }
    /// The driver's sequence number (counts frames, including ones the driver dropped).
    pub fn sequence(&self) -> u32 {
        self.sequence
    }
    /// The driver's capture timestamp (usually `CLOCK_MONOTONIC`).
    pub fn timestamp(&self) -> Duration {
        self.timestamp
    }
    /// The `V4L2_BUF_FLAG_*` flags.
    pub fn flags(&self) -> u32 {
        self.flags
    }
    /// The driver flagged the data as possibly corrupt (`V4L2_BUF_FLAG_ERROR`).
    pub fn is_error(&self) -> bool {
        self.flags & sys::V4L2_BUF_FLAG_ERROR != 0
    }
}

/// A V4L2 single-planar video capture queue with `MMAP` or `USERPTR` buffers.
///
/// Create it after the format is negotiated, [`start`](CaptureQueue::start) it, then loop on
/// [`dequeue`](CaptureQueue::dequeue) / [`data`](CaptureQueue::data) /
/// [`requeue`](CaptureQueue::requeue). Dropping it stops streaming (ignoring a device that is
/// gone), unmaps and frees the buffers; it holds the device's descriptor open while it lives.
///
/// The device must be open in non-blocking mode (`v4l::Device::with_path` opens with
/// `O_NONBLOCK`), so that a dequeue with no finished buffer returns instead of blocking.
pub struct CaptureQueue {
    id: u64,
    fd: c_int,
    memory: u32,
    bufs: Vec<Buffer>,
    streaming: bool,
    next_generation: u64,
    // Keeps the descriptor open while `Drop::drop` uses it.
    _handle: Arc<v4l::device::Handle>,
}

impl std::fmt::Debug for CaptureQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureQueue")
            .field("fd", &self.fd)
            .field("memory", &self.memory)
            .field("bufs", &self.bufs)
            .field("streaming", &self.streaming)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers are to mappings owned by this value (MMAP) or to the caller's memory
// (USERPTR, never dereferenced here), neither thread-local in any way; moving the queue to another
// thread moves the ownership of the mappings and the descriptor with it. `CaptureQueue` is not `Sync`: all mutation goes through `&mut self`.
unsafe impl Send for CaptureQueue {}

impl CaptureQueue {
    /// Request `count` `MMAP` buffers from the driver of `dev` and map them. The driver may grant
    /// a different number (at least one); [`buffer_count`](CaptureQueue::buffer_count) says how
    /// many.
    pub fn mmap(dev: &v4l::Device, count: u32) -> io::Result<CaptureQueue> {
        let (mut q, granted) = CaptureQueue::request(dev, count, MEMORY_MMAP)?;
        let fd = q.fd;
        for index in 0..granted {
            let mut b = v4l2_buffer(index, MEMORY_MMAP);
            // SAFETY: VIDIOC_QUERYBUF takes a v4l2_buffer; with MMAP memory and a single-planar
            // type the kernel follows no pointer in it.
            unsafe { ioctl(fd, vidioc::VIDIOC_QUERYBUF, &mut b) }?;
            let len = b.length as usize;
            // SAFETY: for MMAP memory the kernel set the `offset` member of the union.
            let offset = unsafe { b.m.offset };
            // SAFETY: a new shared read-only mapping chosen by the kernel (null hint, no
            // MAP_FIXED), so it cannot overlap any existing Rust object.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    libc::off_t::from(offset),
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let ptr = NonNull::new(p.cast::<u8>())
                .ok_or_else(|| io::Error::other("mmap of a capture buffer returned null"))?;
            // Pushed at once, so that Drop unmaps it whatever fails next.
            q.bufs.push(Buffer {
                ptr,
                len,
                state: State::Idle,
                generation: 0,
            });
        }
        Ok(q)
    }

    /// Request `count` `USERPTR` buffers from the driver of `dev`: the caller provides the memory
    /// of each buffer when it queues it ([`queue_user`](CaptureQueue::queue_user)). Fails
    /// (usually `EINVAL`) when the driver does not support user pointers.
    pub fn userptr(dev: &v4l::Device, count: u32) -> io::Result<CaptureQueue> {
        let (mut q, granted) = CaptureQueue::request(dev, count, MEMORY_USERPTR)?;
        for _ in 0..granted {
            q.bufs.push(Buffer {
                ptr: NonNull::dangling(),
                len: 0,
                state: State::Idle,
                generation: 0,
            });
        }
        Ok(q)
    }

    fn request(dev: &v4l::Device, count: u32, memory: u32) -> io::Result<(CaptureQueue, u32)> {
        let handle = dev.handle();
        let fd = handle.fd();
        let q = CaptureQueue {
            id: NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed),
            fd,
            memory,
            bufs: Vec::new(),
            streaming: false,
            next_generation: 0,
            _handle: handle,
        };
        let mut req = sys::v4l2_requestbuffers {
            count,
            type_: CAPTURE,
            memory,
            capabilities: 0,
            flags: 0,
            reserved: [0; 3],
        };
        // SAFETY: VIDIOC_REQBUFS takes a v4l2_requestbuffers, which holds no pointers.
        unsafe { ioctl(fd, vidioc::VIDIOC_REQBUFS, &mut req) }?;
        if req.count == 0 {
            return Err(io::Error::other(
                "the driver granted no capture buffers (VIDIOC_REQBUFS returned 0)",
            ));
        }
        Ok((q, req.count))
    }

    /// Whether this queue's buffers are the caller's memory (`USERPTR`).
    pub fn is_userptr(&self) -> bool {
        self.memory == MEMORY_USERPTR
    }

    /// Queue buffer `index` of a `USERPTR` queue with the `len` bytes at `ptr` as its memory.
    /// The buffer must not be queued already.
    ///
    /// # Safety
    ///
    /// From this call until the buffer is dequeued ([`dequeue`](CaptureQueue::dequeue) returns
    /// it), or the queue is stopped or dropped, the driver may write `ptr .. ptr + len` at any
    /// time: that memory must be writable, must stay mapped, and nothing in this process may
    /// read or write it or hold a reference to it meanwhile. (The kernel pins the pages while the
    /// buffer is queued, so unmapping it early does not let the driver write elsewhere; it is
    /// still a bug.)
    pub unsafe fn queue_user(&mut self, index: u32, ptr: *mut u8, len: usize) -> io::Result<()> {
        let i = index as usize;
        let Some(buf) = self.bufs.get(i) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no buffer {index}: the driver granted {}", self.bufs.len()),
            ));
        };
        if !self.is_userptr() || buf.state == State::Queued {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "queue_user needs a USERPTR queue and a buffer that is not queued",
            ));
        }
        let (Some(p), Ok(length)) = (NonNull::new(ptr), u32::try_from(len)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a user pointer buffer needs a non-null address and a length below 4 GiB",
            ));
        };
        let mut b = v4l2_buffer(index, MEMORY_USERPTR);
        b.m.userptr = ptr as std::os::raw::c_ulong;
        b.length = length;
        // SAFETY: VIDIOC_QBUF takes a v4l2_buffer. With USERPTR memory the kernel pins and later
        // writes `ptr .. ptr + len`, which our caller guarantees is writable memory nothing else
        // in this process touches until the buffer comes back or the queue stops.
        let r = unsafe { ioctl(self.fd, vidioc::VIDIOC_QBUF, &mut b) };
        let buf = &mut self.bufs[i];
        if r.is_ok() {
            buf.ptr = p;
            buf.len = len;
            buf.state = State::Queued;
        } else {
            buf.state = State::Idle;
        }
        r
    }

    /// How many buffers the driver granted.
    pub fn buffer_count(&self) -> usize {
        self.bufs.len()
    }

    /// Whether the queue is streaming (between [`start`](CaptureQueue::start) and
    /// [`stop`](CaptureQueue::stop)).
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// Queue every buffer the driver does not hold (`MMAP`) and start streaming. Frames from before are
    /// no longer valid (their buffers are queued again).
    ///
    /// A `USERPTR` queue queues nothing itself: queue its buffers with
    /// [`queue_user`](CaptureQueue::queue_user) first.
    pub fn start(&mut self) -> io::Result<()> {
        for index in 0..self.bufs.len() {
            if !self.is_userptr() && self.bufs[index].state != State::Queued {
                self.qbuf(index)?;
            }
        }
        if !self.streaming {
            let mut ty: c_int = CAPTURE as c_int;
            // SAFETY: VIDIOC_STREAMON takes an int (the buffer type).
            unsafe { ioctl(self.fd, vidioc::VIDIOC_STREAMON, &mut ty) }?;
            self.streaming = true;
        }
        Ok(())
    }

    /// Stop streaming. The driver gives every buffer back; frames from before are no longer
    /// valid. The buffers count as ours even when `VIDIOC_STREAMOFF` fails (a device that is
    /// gone): the kernel frees them with the queue.
    pub fn stop(&mut self) -> io::Result<()> {
        let mut ty: c_int = CAPTURE as c_int;
        // SAFETY: VIDIOC_STREAMOFF takes an int (the buffer type).
        let r = unsafe { ioctl(self.fd, vidioc::VIDIOC_STREAMOFF, &mut ty) };
        self.streaming = false;
        for b in &mut self.bufs {
            b.state = State::Idle;
        }
        r
    }

    /// Wait up to `timeout` for the driver to fill a buffer, and take it.
    ///
    /// `Ok(None)` means no frame yet: the caller decides how long is too long. An error means
    /// the device failed (`EIO`/`ENODEV` when it is gone) or the queue is misused (not
    /// streaming, or every buffer held by the caller).
    pub fn dequeue(&mut self, timeout: Duration) -> io::Result<Option<Frame>> {
        if !self.streaming {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the capture queue is not streaming; start it first",
            ));
        }
        if !self.bufs.iter().any(|b| b.state == State::Queued) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no buffer is queued: give frames back with requeue before waiting for the next",
            ));
        }
        // Poll first: a capture loop that keeps up with the driver finds no frame waiting when it
        // comes back, so a VIDIOC_DQBUF before the poll would fail with EAGAIN every frame, a
        // wasted system call (costly where system calls are, as under emulation). A frame
        // already waiting makes the poll return at once.
        // Round up, so that a short wait is not a busy loop.
        let ms = timeout.as_micros().div_ceil(1000).min(c_int::MAX as u128) as c_int;
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid, exclusively borrowed pollfd, and nfds = 1.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r == -1 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(None);
        }
        match self.try_dqbuf()? {
            Some(f) => Ok(Some(f)),
            // vb2 reports POLLERR when the queue is in error (a disconnect) or stopped; with
            // nothing to dequeue that would spin forever, so it is the device failing.
            None if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 => {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            None => Ok(None),
        }
    }

    /// The bytes the driver wrote into `frame`'s buffer (`bytesused`, at most the buffer's
    /// length), or `None` if `frame` is not a frame this queue currently holds (from another
    /// queue, or invalidated by [`start`](CaptureQueue::start) / [`stop`](CaptureQueue::stop)).
    ///
    /// Always `None` for a `USERPTR` queue: that memory is the caller's.
    pub fn data(&self, frame: &Frame) -> Option<&[u8]> {
        if self.is_userptr() {
            return None;
        }
        let b = self.held(frame)?;
        let n = (frame.bytesused as usize).min(b.len);
        // SAFETY: `b.ptr..b.ptr + b.len` is our live PROT_READ mapping of the buffer; it is
        // unmapped only in Drop, which cannot run while `&self` is borrowed. The buffer is
        // Dequeued, so the driver does not write it until it is queued again, which takes
        // `&mut self` and so ends this borrow first. No one else maps it writable: the mapping
        // is made through this queue's descriptor, which the queue owns.
        Some(unsafe { std::slice::from_raw_parts(b.ptr.as_ptr(), n) })
    }

    /// Give `frame`'s buffer back to the driver (`MMAP`; a `USERPTR` buffer is queued again
    /// with [`queue_user`](CaptureQueue::queue_user)).
    pub fn requeue(&mut self, frame: Frame) -> io::Result<()> {
        if self.is_userptr() || self.held(&frame).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "this frame is not held by this capture queue (stale after start/stop)",
            ));
        }
        self.qbuf(frame.index as usize)
    }

    fn held(&self, frame: &Frame) -> Option<&Buffer> {
        let b = self.bufs.get(frame.index as usize)?;
        (frame.queue == self.id && b.state == State::Dequeued && b.generation == frame.generation)
            .then_some(b)
    }

    fn qbuf(&mut self, index: usize) -> io::Result<()> {
        debug_assert_ne!(self.bufs[index].state, State::Queued);
        debug_assert_eq!(self.memory, MEMORY_MMAP);
        let mut b = v4l2_buffer(index as u32, MEMORY_MMAP);
        // SAFETY: VIDIOC_QBUF takes a v4l2_buffer; with MMAP memory and a single-planar type the
        // kernel follows no pointer in it, and writes into memory it allocated and we mapped
        // read-only, which we read only while the buffer is Dequeued.
        let r = unsafe { ioctl(self.fd, vidioc::VIDIOC_QBUF, &mut b) };
        // A buffer the driver refused is still ours.
        self.bufs[index].state = if r.is_ok() {
            State::Queued
        } else {
            State::Idle
        };
        r
    }

    fn try_dqbuf(&mut self) -> io::Result<Option<Frame>> {
        let mut b = v4l2_buffer(0, self.memory);
        // SAFETY: VIDIOC_DQBUF takes a v4l2_buffer; with MMAP or USERPTR memory and a
        // single-planar type the kernel follows no pointer in it (it reports the user pointer).
        match unsafe { ioctl(self.fd, vidioc::VIDIOC_DQBUF, &mut b) } {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
        let index = b.index as usize;
        let Some(buf) = self.bufs.get_mut(index) else {
            return Err(io::Error::other(format!(
                "the driver returned buffer {index}, but granted only {}",
                self.bufs.len()
            )));
        };
        if buf.state != State::Queued {
            return Err(io::Error::other(format!(
                "the driver returned buffer {index}, which was not queued"
            )));
        }
        self.next_generation += 1;
        buf.state = State::Dequeued;
        buf.generation = self.next_generation;
        let ts = b.timestamp;
        let userptr = if self.is_userptr() {
            // SAFETY: for USERPTR memory the kernel set the `userptr` member of the union.
            unsafe { b.m.userptr as usize }
        } else {
            0
        };
        Ok(Some(Frame {
            userptr,
            queue: self.id,
            index: b.index,
            generation: self.next_generation,
            bytesused: b.bytesused,
            flags: b.flags,
            sequence: b.sequence,
            timestamp: Duration::new(
                u64::try_from(ts.tv_sec).unwrap_or(0),
                u32::try_from(ts.tv_usec).unwrap_or(0).min(999_999) * 1000,
            ),
        }))
    }
}

impl Drop for CaptureQueue {
    fn drop(&mut self) {
        if self.streaming {
            // A device that is gone fails STREAMOFF (ENODEV): nothing left to stop.
            let _ = self.stop();
        }
        for b in self.bufs.drain(..) {
            if self.memory == MEMORY_MMAP {
                // SAFETY: `b.ptr`/`b.len` is a mapping made in `mmap` and unmapped only here,
                // once (drained); no borrow of it can outlive `&mut self`.
                unsafe { libc::munmap(b.ptr.as_ptr().cast::<c_void>(), b.len) };
            }
        }
        let mut req = sys::v4l2_requestbuffers {
            count: 0,
            type_: CAPTURE,
            memory: self.memory,
            capabilities: 0,
            flags: 0,
            reserved: [0; 3],
        };
        // Free the driver's buffers, so the device can be renegotiated on this descriptor; a
        // device that is gone fails, and closing the descriptor frees them anyway.
        // SAFETY: VIDIOC_REQBUFS takes a v4l2_requestbuffers, which holds no pointers.
        let _ = unsafe { ioctl(self.fd, vidioc::VIDIOC_REQBUFS, &mut req) };
    }
}
