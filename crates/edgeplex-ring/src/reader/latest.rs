//! [`Reader::latest`]: the newest message, for consumers slower than the writer.

use std::time::Duration;

use super::{Reader, Recv};
use crate::error::RingError;
use crate::seqlock;

impl Reader {
    /// The newest intact message, skipping every older one still in the ring; if there is none
    /// newer than the last one returned, wait up to `timeout` for the next.
    ///
    /// This is the common case for a model slower than the camera. The messages skipped count
    /// as lost, like messages the writer lapped: a gap in [`super::Message::seq`] always equals
    /// [`super::Message::lost_before`], and [`Reader::lost`] counts them.
    pub fn latest(&mut self, timeout: Duration) -> Result<Recv<'_>, RingError> {
        let head = self.head();
        let g = &self.geometry;
        let p = seqlock::plan(self.cursor, head, g.base_seq, g.slot_count);
        let mut skipped = p.lost;
        self.cursor = p.next;
        // `plan` leaves next <= head; everything before head - 1 is older than the newest.
        let behind = head.wrapping_sub(p.next);
        if behind > 1 {
            skipped += behind - 1;
            self.cursor = head.wrapping_sub(1);
        }
        self.lost += skipped;
        match self.next(timeout)? {
            Recv::Message(mut m) => {
                m.lost_before += skipped;
                Ok(Recv::Message(m))
            }
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CreateOptions, Meta, RingSpec, Start, StreamKind, Writer};

    fn writer(dir: &std::path::Path, slots: u32, size: u64) -> Writer {
        let spec = RingSpec {
            name: "t".into(),
            kind: StreamKind::Bytes,
            slot_count: slots,
            slot_size: size,
            video: None,
        };
        let opts = CreateOptions {
            allow_disk: true,
            ..CreateOptions::default()
        };
        Writer::open(&dir.join("t.ring"), &spec, &opts).unwrap()
    }

    fn seq_and_lost(r: Recv<'_>) -> (u64, u64) {
        match r {
            Recv::Message(m) => (m.seq(), m.lost_before()),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn latest_skips_to_the_newest_and_counts_the_skipped_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 8, 64);
        let mut r = Reader::open(&dir.path().join("t.ring"), Start::Oldest).unwrap();
        for i in 0..5u8 {
            w.publish(&[i], Meta::default()).unwrap();
        }
        assert_eq!(seq_and_lost(r.latest(Duration::ZERO).unwrap()), (4, 4));
        assert_eq!(r.lost(), 4);
        // Nothing newer: times out rather than repeating message 4.
        assert!(matches!(r.latest(Duration::ZERO).unwrap(), Recv::TimedOut));
        w.publish(b"x", Meta::default()).unwrap();
        assert_eq!(seq_and_lost(r.latest(Duration::ZERO).unwrap()), (5, 0));
        // Lapped many times over: still the newest, and the gap is all counted.
        for _ in 0..100 {
            w.publish(b"y", Meta::default()).unwrap();
        }
        assert_eq!(seq_and_lost(r.latest(Duration::ZERO).unwrap()), (105, 99));
        assert_eq!(r.lost(), 103);
    }

    #[test]
    fn upcoming_payload_is_where_the_next_message_lands() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 3, 64);
        let mut r = Reader::open(&dir.path().join("t.ring"), Start::Next).unwrap();
        let mut seen = Vec::new();
        // Round the ring twice, by next() and by latest(), a message at a time.
        for i in 0..6u8 {
            let expected = r.upcoming_payload();
            w.publish(&[i], Meta::default()).unwrap();
            let got = if i % 2 == 0 {
                r.next(Duration::ZERO).unwrap()
            } else {
                r.latest(Duration::ZERO).unwrap()
            };
            let Recv::Message(m) = got else {
                panic!("message {i}: {got:?}")
            };
            assert_eq!(m.handle().as_ptr(), expected, "message {i}");
            seen.push(expected);
        }
        // Three distinct slots, reused in order.
        assert_eq!(seen[..3], seen[3..]);
        assert!(seen[0] != seen[1] && seen[1] != seen[2] && seen[0] != seen[2]);
    }

    #[test]
    fn a_handle_outlives_the_reader_and_sees_a_lap() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 2, 64);
        let mut r = Reader::open(&dir.path().join("t.ring"), Start::Next).unwrap();
        w.publish(b"first", Meta::default()).unwrap();
        let h = match r.next(Duration::ZERO).unwrap() {
            Recv::Message(m) => m.handle(),
            other => panic!("{other:?}"),
        };
        drop(r);
        let mut copy = Vec::new();
        assert!(h.copy_to(&mut copy));
        assert_eq!(copy, b"first");
        w.publish(b"second", Meta::default()).unwrap();
        assert!(h.is_intact(), "one slot further: message 0 is untouched");
        w.publish(b"third", Meta::default()).unwrap();
        assert!(!h.is_intact(), "message 2 reused message 0's slot");
        assert!(!h.copy_to(&mut copy));
    }
}
