//! Lending several slots at once, in order, to a device that fills them itself (V4L2 `USERPTR`
//! capture): the zero-copy writer path.
//!
//! A [`Lender`] marks the slots of the next messages as being written, exactly as
//! [`Writer::lend`] does for one slot, hands out their payload addresses, and commits them in
//! order with the device's length and metadata. Readers skip a lent slot as they skip a slot
//! being copied into: the old message in it is lost to them (the device may already be writing
//! there). So while `k >= 1` slots are lent, a ring of `slot_count` slots keeps `slot_count - k`
//! messages of history instead of `slot_count - 1`; size the ring with `k` more slots (RING.md,
//! 4.3 "Lending slots to a device").
//!
//! It must not know about devices: it deals in message numbers, addresses and lengths.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::layout::desc;
use super::seqlock::{self, StdFence};
use super::{Meta, SlotLoan, Writer};

/// One slot lent to a device: the message it will carry and its payload area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LentSlot {
    n: u64,
    ptr: *mut u8,
    len: usize,
}

impl LentSlot {
    /// The message number the slot will carry once committed.
    pub fn seq(&self) -> u64 {
        self.n
    }
    /// Start of the slot's payload area in the writer's mapping (page-aligned for video rings).
    /// It may be written (by a device, or through this pointer) only while the slot is lent:
    /// until it is committed or abandoned, or its [`Lender`] dropped, and while the [`Writer`] is
    /// alive. Nothing else in this process touches it meanwhile (the writer lends no slot itself
    /// while slots are lent).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// The payload area's length (the ring's slot size).
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false: a slot has a payload area of at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How many slots of a writer are lent to a device. Shared by the [`Writer`] (which refuses to
/// lend a slot itself while any is lent) and the [`Lender`] lending from it.
#[derive(Debug, Default)]
pub(super) struct LentCount(Arc<AtomicUsize>);

impl LentCount {
    /// Panic if slots are lent: the writer's next slot is one the device may be writing.
    pub(super) fn assert_none(&self) {
        // Relaxed: the count is only changed by this thread, through `&mut Writer`.
        let k = self.0.load(Ordering::Relaxed);
        assert!(
            k == 0,
            "Writer::lend or publish while {k} slots are lent to a device: commit or abandon them first"
        );
    }
}

/// The slots currently lent, oldest first. Owned by the source, used with its [`Writer`]. While
/// it holds slots, the writer refuses [`Writer::lend`] and [`Writer::publish`] (they panic): the
/// next slot is one the device may be writing.
///
/// Dropping a `Lender` with slots lent gives them back without clearing their marks (it has no
/// access to the writer); the next `Lender` to lend from that writer clears them. Whoever handed a
/// [`LentSlot::as_ptr`] to a device must make sure the device has stopped writing first.
#[derive(Debug, Default)]
pub struct Lender {
    lent: VecDeque<LentSlot>,
    /// The lent count of the writer this lender lends from.
    count: Option<Arc<AtomicUsize>>,
}

impl Lender {
    /// No slot lent.
    pub fn new() -> Lender {
        Lender::default()
    }

    /// How many slots are lent.
    pub fn lent(&self) -> usize {
        self.lent.len()
    }

    /// The oldest lent slot: the next to be committed.
    pub fn oldest(&self) -> Option<&LentSlot> {
        self.lent.front()
    }

    /// Lend the slot of the next message after those already lent, marked as being written.
    /// `None` when that would leave readers no slot at all (at most `slot_count - 1` are lent).
    ///
    /// # Panics
    /// If another `Lender` has slots of `w` lent, or this one has slots of another writer lent.
    pub fn lend(&mut self, w: &mut Writer) -> Option<LentSlot> {
        let ours = self
            .count
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &w.lent.0));
        if !ours {
            assert!(
                self.lent.is_empty(),
                "Lender::lend from a second writer while slots of the first are lent"
            );
            // Relaxed: changed only through `&mut Writer`, on this thread.
            let other = w.lent.0.load(Ordering::Relaxed);
            assert!(
                other == 0,
                "another Lender has {other} slots of this writer lent"
            );
            // Marks left by a dropped lender or a killed writer: no device writes them now.
            w.clear_abandoned();
            self.count = Some(w.lent.0.clone());
        }
        let count = u64::from(w.geometry.slot_count);
        if self.lent.len() as u64 + 1 >= count {
            return None;
        }
        let n = w.head.wrapping_add(self.lent.len() as u64);
        let slot = n % count;
        seqlock::begin_write::<_, StdFence>(w.mem.u64_at(w.geometry.desc_at(slot)), n);
        let (at, len) = (w.geometry.payload_at(slot), w.geometry.slot_size);
        let ptr = w.mem.bytes_mut(at, len).as_mut_ptr();
        let s = LentSlot {
            n,
            ptr,
            len: len as usize,
        };
        self.lent.push_back(s);
        w.lent.0.fetch_add(1, Ordering::Relaxed);
        Some(s)
    }

    /// The payload area of the oldest lent slot of `w`, for a writer whose CPU stands in for the
    /// device and fills the slot itself (`edgeplex bench` measures the zero-copy path this way).
    /// `None` if nothing of `w` is lent.
    ///
    /// Never use it on a slot whose address was handed to a device: the device may be writing
    /// it, and whoever handed it over promised (in an `unsafe` contract) that nothing in this
    /// process touches it.
    pub fn oldest_mut<'w>(&self, w: &'w mut Writer) -> Option<&'w mut [u8]> {
        let ours = self
            .count
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &w.lent.0));
        let s = self.lent.front().filter(|_| ours)?;
        let slot = s.n % u64::from(w.geometry.slot_count);
        let (at, len) = (w.geometry.payload_at(slot), w.geometry.slot_size);
        Some(w.mem.bytes_mut(at, len))
    }

    /// Publish the oldest lent slot as the next message, with the first `len` bytes (at most the
    /// slot size) and `meta`; wakes readers. Returns its message number, or `None` if nothing of
    /// `w` is lent.
    pub fn commit_oldest(&mut self, w: &mut Writer, len: usize, meta: Meta) -> Option<u64> {
        let ours = self
            .count
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &w.lent.0));
        let s = *self.lent.front().filter(|_| ours)?;
        // The writer lends nothing itself while we hold slots, so the oldest is message `head`.
        debug_assert_eq!(s.n, w.head);
        self.lent.pop_front();
        w.lent.0.fetch_sub(1, Ordering::Relaxed);
        let slot = s.n % u64::from(w.geometry.slot_count);
        let len = len.min(s.len);
        Some(
            SlotLoan {
                writer: w,
                n: s.n,
                slot,
            }
            .commit(len, meta),
        )
    }

    /// Give every lent slot back without publishing: their marks are cleared (see
    /// [`Writer::clear_abandoned`]). Call it once the device no longer writes them (after
    /// `VIDIOC_STREAMOFF`, or with the device closed).
    pub fn abandon(&mut self, w: &mut Writer) {
        self.release();
        w.clear_abandoned();
    }

    fn release(&mut self) {
        if let Some(c) = &self.count {
            c.fetch_sub(self.lent.len(), Ordering::Relaxed);
        }
        self.lent.clear();
    }
}

impl Drop for Lender {
    fn drop(&mut self) {
        self.release();
    }
}

impl Writer {
    /// Clear the mark of every slot left "being written" without a commit: by a [`Lender`] whose
    /// device went away, a dropped [`SlotLoan`], or a writer that was killed. The slot then holds
    /// no message (its sequence word is 0, which no reader accepts), instead of claiming a
    /// message that will never come. Returns how many slots were cleared.
    ///
    /// Safe for readers at any time (they never accept 0); call it when no slot is lent.
    pub fn clear_abandoned(&mut self) -> usize {
        let mut cleared = 0;
        for slot in 0..u64::from(self.geometry.slot_count) {
            let seq = self
                .mem
                .u64_at(self.geometry.desc_at(slot) + desc::SEQ as u64);
            // Relaxed load: this writer is the only one storing to the word.
            if !seq.load(Ordering::Relaxed).is_multiple_of(2) {
                // SYNC POINT: release, like `end_write`: no payload store of this writer moves
                // after it. A reader that sees 0 drops the message whatever it read.
                seq.store(0, Ordering::Release);
                cleared += 1;
            }
        }
        cleared
    }
}
