//! The seqlock protocol and the reader's cursor arithmetic, free of any mapping.
//!
//! The functions are generic over [`Word`] and [`Fence`] so that the loom model in
//! `tests/loom_seqlock.rs` runs exactly this code against loom's atomics, while the writer and
//! reader run it against `std` atomics in the mapped file. Sequence numbers use wrapping
//! arithmetic throughout; see the proptests below.

use std::sync::atomic::{self, AtomicU64, Ordering};

/// A 64-bit atomic word the protocol stores to and loads from.
pub trait Word {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u64;
    /// Atomic store.
    fn store(&self, value: u64, order: Ordering);
}

/// A memory fence of the atomics family in use.
pub trait Fence {
    /// `std::sync::atomic::fence` or its loom twin.
    fn fence(order: Ordering);
}

impl Word for AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }
    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order)
    }
}

/// Fences from `std`.
#[derive(Debug)]
pub struct StdFence;

impl Fence for StdFence {
    fn fence(order: Ordering) {
        atomic::fence(order)
    }
}

/// Seqlock value while message `n` is being written.
pub fn writing(n: u64) -> u64 {
    n.wrapping_mul(2).wrapping_add(1)
}

/// Seqlock value once message `n` is complete.
pub fn complete(n: u64) -> u64 {
    n.wrapping_mul(2).wrapping_add(2)
}

/// Writer, step 2: claim the slot for message `n`. Readers that see this value, or see it after
/// they read the payload, treat the slot's old message as overwritten.
pub fn begin_write<W: Word, F: Fence>(seq: &W, n: u64) {
    seq.store(writing(n), Ordering::Relaxed);
    // SYNC POINT: the release fence orders the odd store above before every payload and
    // descriptor store that follows. A reader whose acquire fence observes any of those stores
    // therefore also observes the odd value when it re-checks `seq`, and drops the message.
    F::fence(Ordering::Release);
}

/// Writer, step 4: message `n` is complete in its slot.
pub fn end_write<W: Word>(seq: &W, n: u64) {
    // SYNC POINT: release, so a reader that loads this even value with acquire sees the whole
    // payload and descriptor written before it.
    seq.store(complete(n), Ordering::Release);
}

/// Writer, step 5: publish the head (number of messages published).
pub fn publish_head<W: Word>(head: &W, new_head: u64) {
    // SYNC POINT: release, pairs with the acquire in `read_head`: a reader that sees head > n
    // also sees `complete(n)` in message n's slot (or a later value, if it has been lapped).
    head.store(new_head, Ordering::Release);
}

/// Reader: load the head.
pub fn read_head<W: Word>(head: &W) -> u64 {
    // SYNC POINT: acquire, pairs with `publish_head`.
    head.load(Ordering::Acquire)
}

/// Reader, step 2: check that the slot still holds message `n` before reading it. Returns the
/// seqlock value to validate against afterwards, or `None` if the message is gone.
pub fn read_begin<W: Word>(seq: &W, n: u64) -> Option<u64> {
    // SYNC POINT: acquire, pairs with `end_write`: the payload of message n is visible.
    let s = seq.load(Ordering::Acquire);
    (s == complete(n)).then_some(s)
}

/// Reader, step 3: after reading, was the message intact the whole time?
pub fn read_validate<W: Word, F: Fence>(seq: &W, seen: u64) -> bool {
    // SYNC POINT: the acquire fence orders every payload load above before the re-load of `seq`
    // below. If any of those loads saw a store of a later message, the fence synchronises with
    // the writer's release fence in `begin_write`, and this load sees the odd value (or later).
    F::fence(Ordering::Acquire);
    seq.load(Ordering::Relaxed) == seen
}

/// Where a reader with cursor `cursor` should read next, given the published `head`, the first
/// message the file holds (`base`) and the slot count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The message to read next; equal to `head` when there is nothing to read.
    pub next: u64,
    /// Messages skipped because the writer has lapped them.
    pub lost: u64,
}

/// Skip ahead over messages the writer may already be overwriting.
///
/// The slot of message `head - count` is the one the writer fills next, so only the last
/// `count - 1` messages are safe to start on. A cursor behind that skips and counts what it
/// skipped. A cursor before `base` (a new file after a geometry change) starts at `base`; a
/// cursor ahead of `head` (never the case for a sound writer) restarts at `head`.
pub fn plan(cursor: u64, head: u64, base: u64, slot_count: u32) -> Plan {
    let behind = head.wrapping_sub(cursor);
    if behind > i64::MAX as u64 {
        // The cursor is ahead of head: the file was replaced by a foreign writer. Resync.
        return Plan {
            next: head,
            lost: 0,
        };
    }
    let first = oldest(head, base, slot_count);
    if behind > head.wrapping_sub(first) {
        // Everything skipped is lost to this reader, whether the writer lapped it or it lived in
        // an older file (before `base`) that the reader never drained.
        return Plan {
            next: first,
            lost: first.wrapping_sub(cursor),
        };
    }
    Plan {
        next: cursor,
        lost: 0,
    }
}

/// The oldest message a reader starting fresh can read.
pub fn oldest(head: u64, base: u64, slot_count: u32) -> u64 {
    let retained = u64::from(slot_count).saturating_sub(1);
    head.wrapping_sub(head.wrapping_sub(base).min(retained))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fresh_ring() {
        assert_eq!(plan(0, 0, 0, 8), Plan { next: 0, lost: 0 });
        assert_eq!(plan(0, 3, 0, 8), Plan { next: 0, lost: 0 });
        assert_eq!(plan(0, 7, 0, 8), Plan { next: 0, lost: 0 });
        assert_eq!(plan(0, 8, 0, 8), Plan { next: 1, lost: 1 });
        assert_eq!(plan(0, 20, 0, 8), Plan { next: 13, lost: 13 });
    }

    #[test]
    fn reopened_file_after_geometry_change() {
        // The reader drained the old file to 100; the new file starts at 100.
        assert_eq!(plan(100, 103, 100, 8), Plan { next: 100, lost: 0 });
        // It lagged by 2 in the old file before the change.
        assert_eq!(plan(98, 103, 100, 8), Plan { next: 100, lost: 2 });
        // And the new file has also lapped it.
        assert_eq!(
            plan(98, 120, 100, 8),
            Plan {
                next: 113,
                lost: 15
            }
        );
    }

    proptest! {
        /// Near u64::MAX the arithmetic wraps like it does near zero.
        #[test]
        fn wraparound_is_translation_invariant(
            cursor_lag in 0u64..10_000, base_lag in 0u64..10_000, count in 2u32..4096,
            shift in any::<u64>(),
        ) {
            let head = 20_000u64;
            let cursor = head - cursor_lag;
            let base = head - base_lag;
            let p = plan(cursor, head, base, count);
            let q = plan(cursor.wrapping_add(shift), head.wrapping_add(shift), base.wrapping_add(shift), count);
            prop_assert_eq!(q.next, p.next.wrapping_add(shift));
            prop_assert_eq!(q.lost, p.lost);
        }

        /// The plan never starts on a slot the writer may be writing, never before the file's
        /// base, and the lost count is exactly the distance skipped within reach.
        #[test]
        fn plan_is_safe_and_exact(cursor_lag in 0u64..100_000, count in 2u32..1024, start in any::<u64>()) {
            let head = start.wrapping_add(200_000);
            let cursor = head.wrapping_sub(cursor_lag);
            let p = plan(cursor, head, start, count);
            let behind = head.wrapping_sub(p.next);
            prop_assert!(behind < u64::from(count));
            prop_assert_eq!(p.next.wrapping_sub(cursor), p.lost);
        }

        #[test]
        fn seq_values_are_distinct(n in any::<u64>()) {
            prop_assert_ne!(writing(n), complete(n));
            prop_assert_ne!(complete(n), complete(n.wrapping_add(1)));
            prop_assert_eq!(writing(n) % 2, 1);
            prop_assert_eq!(complete(n) % 2, 0);
        }
    }
}
