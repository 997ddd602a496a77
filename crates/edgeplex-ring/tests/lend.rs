//! Lending several slots to a device at once (`Lender`): readers skip lent slots exactly as a slot
//! being copied into, commits come out in order with the device's metadata, abandoned loans leave
//! no slot marked as being written, and a reopening writer continues the numbering.

use std::time::Duration;

use edgeplex_ring::{
    CreateOptions, Lender, Meta, Reader, Recv, RingSpec, StreamKind, VideoFormat, Writer,
};

fn spec(slots: u32) -> RingSpec {
    RingSpec {
        name: "cam".into(),
        kind: StreamKind::Video,
        slot_count: slots,
        slot_size: 4096,
        video: Some(VideoFormat {
            width: 64,
            height: 32,
            fourcc: u32::from_le_bytes(*b"YUYV"),
            stride: 128,
        }),
    }
}

/// Read everything available: (seq, lost_before, first payload byte, len, device_seq).
fn drain(r: &mut Reader) -> Vec<(u64, u64, u8, usize, u64)> {
    let mut out = Vec::new();
    for _ in 0..100 {
        match r.next(Duration::ZERO).expect("read") {
            Recv::Message(m) => {
                let mut first = [0u8; 1];
                m.copy_into_prefix(&mut first);
                let v = (m.seq(), m.lost_before(), first[0], m.len(), m.device_seq());
                assert!(m.finish(), "intact");
                out.push(v);
            }
            Recv::TimedOut => break,
            Recv::Reopened => {}
        }
    }
    out
}

/// What a device does with a lent slot: write the frame through the raw pointer.
fn device_fills(ptr: *mut u8, len: usize, byte: u8) {
    // SAFETY: `ptr` is a lent slot's payload area of at least `len` bytes in the live writer's
    // mapping, and nothing else in this process touches it while it is lent.
    unsafe { std::ptr::write_bytes(ptr, byte, len) };
}

#[test]
fn lent_slots_are_skipped_committed_in_order_and_abandoned_cleanly() {
    let dir = tempfile::Builder::new()
        .prefix("edgeplex-lend-")
        .tempdir_in("/dev/shm")
        .expect("tmpfs dir");
    let path = dir.path().join("cam.ring");
    let mut w = Writer::open(&path, &spec(8), &CreateOptions::default()).expect("writer");
    for i in 0..6u8 {
        w.publish(&[i; 100], Meta::default()).expect("publish");
    }
    let mut lender = Lender::new();
    let lent: Vec<_> = (0..3).map(|_| lender.lend(&mut w).expect("lend")).collect();
    assert_eq!(
        lent.iter().map(|s| s.seq()).collect::<Vec<_>>(),
        [6, 7, 8],
        "lent in order after head"
    );
    assert!(lent
        .iter()
        .all(|s| (s.as_ptr() as usize).is_multiple_of(4096) && s.len() == 4096));
    // Message 0 sits in slot 0, lent for message 8: the device may be writing it, so a reader
    // starting from the oldest message loses it, exactly as for a slot being copied into.
    let mut r = Reader::open(&path, edgeplex_ring::Start::Oldest).expect("reader");
    let got = drain(&mut r);
    assert_eq!(
        got.iter().map(|g| (g.0, g.1, g.2)).collect::<Vec<_>>(),
        [(1, 1, 1), (2, 0, 2), (3, 0, 3), (4, 0, 4), (5, 0, 5)]
    );

    // The device fills them; commits come out in order with its metadata.
    for (i, s) in lent.iter().enumerate() {
        device_fills(s.as_ptr(), 200, 0xa0 + i as u8);
    }
    let meta = |d| Meta {
        capture_ns: 1000 + d,
        device_seq: d,
        flags: 0,
    };
    assert_eq!(lender.commit_oldest(&mut w, 200, meta(40)), Some(6));
    assert_eq!(lender.commit_oldest(&mut w, 150, meta(41)), Some(7));
    assert_eq!(
        drain(&mut r),
        [(6, 0, 0xa0, 200, 40), (7, 0, 0xa1, 150, 41)]
    );
    // A lent slot can be lent again behind the others, up to slot_count - 1 in all.
    let more: Vec<_> = std::iter::from_fn(|| lender.lend(&mut w)).collect();
    assert_eq!(lender.lent(), 7, "one slot always stays readable");
    assert_eq!(more.first().map(|s| s.seq()), Some(9));

    // The device goes away: nothing published, no slot left marked as being written.
    lender.abandon(&mut w);
    assert_eq!(lender.lent(), 0);
    assert_eq!(w.clear_abandoned(), 0, "abandon cleared every mark");
    assert_eq!(w.head(), 8);
    assert!(drain(&mut r).is_empty(), "nothing published by the abandon");

    // Numbering continues after an abandon, and across a writer restart.
    w.publish(&[9; 10], meta(50)).expect("publish");
    let s = lender.lend(&mut w).expect("lend");
    assert_eq!(s.seq(), 9);
    drop(lender); // a killed agent: the loan is never given back
    drop(w);
    let mut w = Writer::open(&path, &spec(8), &CreateOptions::default()).expect("reopen");
    assert_eq!(
        w.clear_abandoned(),
        1,
        "the killed writer's loan is found and cleared"
    );
    assert_eq!(w.head(), 9);
    let mut lender = Lender::new();
    let s = lender.lend(&mut w).expect("lend");
    device_fills(s.as_ptr(), 10, 0xee);
    assert_eq!(lender.commit_oldest(&mut w, 10, meta(51)), Some(9));
    let got = drain(&mut r);
    assert_eq!(
        got.iter().map(|g| (g.0, g.2, g.4)).collect::<Vec<_>>(),
        [(8, 9, 50), (9, 0xee, 51)]
    );
}

#[test]
fn the_writer_lends_nothing_itself_while_a_device_holds_slots() {
    let dir = tempfile::Builder::new()
        .prefix("edgeplex-lend-")
        .tempdir_in("/dev/shm")
        .expect("tmpfs dir");
    let path = dir.path().join("cam.ring");
    let mut w = Writer::open(&path, &spec(4), &CreateOptions::default()).expect("writer");
    let mut lender = Lender::new();
    lender.lend(&mut w).expect("lend");
    let publish = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        w.publish(b"x", Meta::default())
    }));
    assert!(
        publish.is_err(),
        "publish into a slot a device may be writing"
    );
    let second = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Lender::new().lend(&mut w).map(|s| s.seq())
    }));
    assert!(second.is_err(), "a second lender");
    lender.abandon(&mut w);
    assert_eq!(w.publish(b"x", Meta::default()).expect("publish"), 0);
    // A lender dropped with slots lent releases them; the next lender clears their marks.
    let mut lender = Lender::new();
    lender.lend(&mut w).expect("lend");
    lender.lend(&mut w).expect("lend");
    drop(lender);
    assert_eq!(w.publish(b"y", Meta::default()).expect("publish"), 1);
    let mut lender = Lender::new();
    assert_eq!(lender.lend(&mut w).map(|s| s.seq()), Some(2));
    lender.abandon(&mut w);
    assert_eq!(w.clear_abandoned(), 0);
}
