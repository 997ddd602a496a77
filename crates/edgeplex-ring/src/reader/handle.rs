//! [`MessageHandle`]: a message that keeps its own reference to the ring's mapping, for the
//! language bindings (a numpy view, a C `edgeplex_msg`) whose lifetimes Rust cannot check.
//!
//! It hands out a raw pointer and a length, never a `&[u8]`: the payload is memory another
//! process races on. It never touches the reader's cursor or counters.

use std::sync::Arc;

use super::{Message, MessageMeta};
use crate::layout::{desc, StreamKind, VideoFormat};
use crate::seqlock::{self, StdFence};
use crate::sys::Mem;

/// A message that owns a reference to its ring file's mapping: `'static`, `Send` and `Sync`.
///
/// The mapping stays valid as long as any handle to it lives, even after the [`super::Reader`]
/// followed a replaced file or was dropped. The payload is not copied.
///
/// # The rule for using the payload
/// Exactly as for [`Message`]: the bytes at [`MessageHandle::as_ptr`] are valid to read until
/// the writer laps this message's slot, and may change while being read. Read them, then call
/// [`MessageHandle::is_intact`]; if it returns `false`, discard everything derived from them, or
/// take a checked copy with [`MessageHandle::copy_to`].
#[derive(Debug, Clone)]
pub struct MessageHandle {
    mem: Arc<Mem>,
    n: u64,
    seen: u64,
    desc_off: u64,
    payload_off: u64,
    len: u64,
    meta: MessageMeta,
    lost_before: u64,
    kind: StreamKind,
    video: VideoFormat,
}

impl Message<'_> {
    /// A handle on this message that no longer borrows the reader (see [`MessageHandle`]).
    /// Using the handle does not count torn messages in [`super::Reader::lost`].
    pub fn handle(&self) -> MessageHandle {
        let g = &self.reader.geometry;
        MessageHandle {
            mem: Arc::clone(&self.reader.mem),
            n: self.n,
            seen: self.seen,
            desc_off: g.desc_at(self.slot),
            payload_off: g.payload_at(self.slot),
            len: self.len,
            meta: self.meta,
            lost_before: self.lost_before,
            kind: g.kind,
            video: g.video,
        }
    }
}

impl MessageHandle {
    /// The message number: its position in the stream since the ring was first created.
    pub fn seq(&self) -> u64 {
        self.n
    }

    /// Epoch of the writer that published it.
    pub fn epoch(&self) -> u64 {
        self.meta.epoch
    }

    /// Capture timestamp in nanoseconds (CLOCK_MONOTONIC unless `FLAG_CAPTURE_REALTIME`).
    pub fn capture_ns(&self) -> u64 {
        self.meta.capture_ns
    }

    /// The device's sequence number (restarts with each writer).
    pub fn device_seq(&self) -> u64 {
        self.meta.device_seq
    }

    /// When the writer published it, CLOCK_REALTIME nanoseconds.
    pub fn publish_ns(&self) -> u64 {
        self.meta.publish_ns
    }

    /// Message flags (`layout::FLAG_*`).
    pub fn flags(&self) -> u32 {
        self.meta.flags
    }

    /// Messages lost between the previous message the reader returned and this one.
    pub fn lost_before(&self) -> u64 {
        self.lost_before
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What the ring that holds the message carries.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// Video geometry of the ring file that holds the message (zero for other kinds). After a
    /// geometry change, each message describes its own file.
    pub fn video(&self) -> VideoFormat {
        self.video
    }

    /// The first byte of the payload, in place; [`MessageHandle::len`] bytes are readable for
    /// as long as this handle (or a clone) lives. See the type's documentation for the rule.
    pub fn as_ptr(&self) -> *const u8 {
        self.mem.ptr_at(self.payload_off, self.len)
    }

    /// Whether the writer has not touched this message's slot since the reader handed it out.
    pub fn is_intact(&self) -> bool {
        seqlock::read_validate::<_, StdFence>(
            self.mem.u64_at(self.desc_off + desc::SEQ as u64),
            self.seen,
        )
    }

    /// Copy the payload into `out` (replacing its contents) and return whether the copy is
    /// intact.
    pub fn copy_to(&self, out: &mut Vec<u8>) -> bool {
        out.clear();
        out.resize(self.len as usize, 0);
        self.mem.copy_out(self.payload_off, out);
        self.is_intact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn handle_is_send_sync_static() {
        assert_send_sync::<MessageHandle>();
    }
}
