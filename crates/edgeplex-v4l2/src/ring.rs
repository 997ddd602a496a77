//! Zero-copy capture: a `USERPTR` capture queue whose buffers are ring slots.
//!
//! [`RingCapture`] lends the next slots of a ring ([`edgeplex_ring::Lender`]) to the driver as
//! user-pointer buffers, and commits each slot when the driver returns it, with the driver's
//! length, timestamp, sequence and error flag. No CPU copy is made: the driver writes each frame
//! where readers read it.
//!
//! Why this is sound: a lent slot is written by nobody in this process (the ring's writer lends
//! and publishes nothing itself while slots are lent), and the slots are lent for as long as the
//! driver may write them: they are given back (committed or abandoned) only after the driver
//! returned the buffer, or after streaming stopped. The capture queue is dropped (stopping
//! streaming and releasing the driver's queue) before the lender.

use std::io;
use std::time::Duration;

use edgeplex_ring::{Lender, Meta, Writer};

use crate::queue::CaptureQueue;

/// What was published for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The ring message number.
    pub seq: u64,
    /// Bytes the driver wrote (the message's length).
    pub len: usize,
    /// The driver flagged the frame as possibly corrupt (`V4L2_BUF_FLAG_ERROR`); the message
    /// carries the ring's device-error flag.
    pub device_error: bool,
}

/// Why [`RingCapture::start`] could not start.
#[derive(Debug)]
pub enum StartError {
    /// The image does not fit a ring slot (`image` bytes, slots of `slot` bytes).
    DoesNotFit {
        /// The driver's image size.
        image: usize,
        /// The ring's slot size.
        slot: usize,
    },
    /// The ring has too few slots to lend one per buffer and keep one for readers.
    TooFewSlots {
        /// Buffers to lend.
        buffers: usize,
        /// The ring's slot count.
        slots: u32,
    },
    /// The driver refused a buffer or STREAMON.
    Io(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::DoesNotFit { image, slot } => write!(
                f,
                "an image of {image} bytes does not fit a ring slot of {slot} bytes"
            ),
            StartError::TooFewSlots { buffers, slots } => write!(
                f,
                "a ring of {slots} slots cannot lend {buffers} to the driver and keep one for readers"
            ),
            StartError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A `USERPTR` capture queue filling ring slots in place. The queue is dropped before the lender:
/// the driver has stopped writing before the slots are released.
#[derive(Debug)]
pub struct RingCapture {
    queue: CaptureQueue,
    lender: Lender,
    image: usize,
    /// Buffers queued at a time (slots lent).
    queued: usize,
}

impl RingCapture {
    /// Prepare to capture from `dev`, whose negotiated image is `image` bytes, into a ring of
    /// `ring_slots` slots, with `queued` of them lent to the driver at a time.
    ///
    /// It asks the driver for one user-pointer buffer per ring slot (few are queued at a time),
    /// so that buffer `i` is always queued with slot `i`: the driver (vb2) then keeps each slot's
    /// pages pinned and mapped between frames instead of pinning and mapping the slot again for
    /// every frame. A driver that grants fewer buffers still works, pinning per frame.
    ///
    /// Fails (usually `EINVAL`) when the driver does not support user pointers: fall back to
    /// [`CaptureQueue::mmap`] and a copy.
    pub fn new(
        dev: &v4l::Device,
        ring_slots: u32,
        queued: u32,
        image: usize,
    ) -> io::Result<RingCapture> {
        let queue = CaptureQueue::userptr(dev, ring_slots.max(queued))?;
        let queued = (queued as usize).min(queue.buffer_count());
        Ok(RingCapture {
            queue,
            lender: Lender::new(),
            image,
            queued,
        })
    }

    /// How many buffers are queued (slots lent) while streaming.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether the queue is streaming.
    pub fn is_streaming(&self) -> bool {
        self.queue.is_streaming()
    }

    /// Lend one slot of `w` per buffer, queue them, and start streaming.
    pub fn start(&mut self, w: &mut Writer) -> Result<(), StartError> {
        if self.image > w.capacity() {
            return Err(StartError::DoesNotFit {
                image: self.image,
                slot: w.capacity(),
            });
        }
        let buffers = self.queued;
        let slots = w.geometry().slot_count;
        if buffers as u64 >= u64::from(slots) {
            return Err(StartError::TooFewSlots { buffers, slots });
        }
        for _ in 0..buffers {
            self.lend_and_queue(w).map_err(StartError::Io)?;
        }
        self.queue.start().map_err(StartError::Io)
    }

    /// Wait up to `timeout` for a frame, publish it, and lend the next slot to its buffer.
    /// `Ok(None)`: no frame yet. On an error the caller drops the capture (which stops the
    /// driver) or calls [`stop`](RingCapture::stop).
    pub fn next(&mut self, w: &mut Writer, timeout: Duration) -> io::Result<Option<Committed>> {
        let Some(frame) = self.queue.dequeue(timeout)? else {
            return Ok(None);
        };
        let expected = self.lender.oldest().map(|s| s.as_ptr() as usize);
        if expected != Some(frame.user_ptr()) {
            return Err(io::Error::other(format!(
                "the driver returned buffer {} out of queue order; capture with io = \"mmap\"",
                frame.index()
            )));
        }
        let len = (frame.bytesused() as usize).min(w.capacity());
        let device_error = frame.is_error();
        let meta = Meta {
            capture_ns: u64::try_from(frame.timestamp().as_nanos()).unwrap_or(u64::MAX),
            device_seq: u64::from(frame.sequence()),
            flags: if device_error {
                edgeplex_ring::layout::FLAG_DEVICE_ERROR
            } else {
                0
            },
        };
        let seq = self
            .lender
            .commit_oldest(w, len, meta)
            .ok_or_else(|| io::Error::other("the ring writer changed under a running capture"))?;
        self.lend_and_queue(w)?;
        Ok(Some(Committed {
            seq,
            len,
            device_error,
        }))
    }

    /// Stop streaming and give every lent slot back without publishing.
    pub fn stop(&mut self, w: &mut Writer) -> io::Result<()> {
        let r = self.queue.stop();
        // Even if STREAMOFF failed (a device that is gone), its buffers are no longer in use: a
        // failed STREAMOFF means the queue was already torn down by the driver.
        self.lender.abandon(w);
        r
    }

    /// Lend the next slot and queue it on buffer `seq mod buffers`: with one buffer per slot,
    /// always the same buffer for the same slot. At most `queued <= buffers` consecutive messages
    /// are queued, so that buffer is free.
    fn lend_and_queue(&mut self, w: &mut Writer) -> io::Result<()> {
        let slot = self
            .lender
            .lend(w)
            .ok_or_else(|| io::Error::other("no ring slot left to lend"))?;
        let index = (slot.seq() % self.queue.buffer_count() as u64) as u32;
        // SAFETY: the slot is lent: nothing in this process reads or writes it (the writer lends
        // and publishes nothing while slots are lent), and it stays lent until the driver returns
        // this buffer (then `next` commits it), or until streaming stopped (`stop`, or Drop, which
        // drops the queue before the lender). The memory is the writer's live mapping, writable,
        // `slot.len()` bytes; the kernel pins it while the buffer is queued.
        // If the driver refused it, the slot stays lent (marked) until the caller stops.
        unsafe { self.queue.queue_user(index, slot.as_ptr(), slot.len()) }
    }
}
