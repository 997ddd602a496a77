//! A loom model of the ring's seqlock protocol, running the very functions the writer and
//! reader use (`edgeplex_ring::seqlock`) against loom's atomics and fences.
//!
//! The payload words are loaded with relaxed atomic loads, which is exactly what the reader's
//! copy does (`Message::copy_to`: a byte-wise atomic memcpy, crate `atomic-memcpy`, relaxed
//! loads), so the model covers the copy path too; `src/sys.rs` has a test of that copy against
//! a concurrent writer meant for miri.
//!
//! The model: a ring of 2 slots, each a seqlock word and a 2-word payload; one writer thread
//! publishes 3 messages (payload words = message number + 1), one reader makes a bounded number
//! of attempts and lags behind as the scheduler pleases. Loom explores the interleavings and
//! the weak-memory outcomes (relaxed loads that see older or newer stores) within a preemption
//! bound, and the reader asserts in every one of them:
//!
//! - a message it validates as intact has exactly the payload written for it (never torn, never
//!   another message's);
//! - it never delivers a message twice or out of order;
//! - delivered + lost == its final cursor (it started at 0).
//!
//! Two negative models show the checks have teeth: a reader that skips `read_validate`, and a
//! writer whose `begin_write` lacks its release fence, must each let some execution deliver a
//! torn payload.

use std::sync::atomic::Ordering::{self, Relaxed};

use edgeplex_ring::seqlock::{self, Fence, Word};
use loom::sync::atomic::AtomicU64;
use loom::sync::Arc;
use loom::thread;

const SLOTS: u32 = 2;
const MESSAGES: u64 = 3;
const ATTEMPTS: usize = 4;

/// loom's `AtomicU64` as a protocol word (a newtype: both the trait and the type are foreign).
struct LoomWord(AtomicU64);

impl Word for LoomWord {
    fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }
    fn store(&self, value: u64, order: Ordering) {
        self.0.store(value, order)
    }
}

/// loom's fences.
struct LoomFence;

impl Fence for LoomFence {
    fn fence(order: Ordering) {
        loom::sync::atomic::fence(order)
    }
}

/// A broken fence, for the negative model: does nothing.
struct NoFence;

impl Fence for NoFence {
    fn fence(_: Ordering) {}
}

struct Slot {
    seq: LoomWord,
    words: [AtomicU64; 2],
}

struct Ring {
    head: LoomWord,
    slots: [Slot; SLOTS as usize],
}

impl Ring {
    fn new() -> Ring {
        Ring {
            head: LoomWord(AtomicU64::new(0)),
            slots: std::array::from_fn(|_| Slot {
                seq: LoomWord(AtomicU64::new(0)),
                words: [AtomicU64::new(0), AtomicU64::new(0)],
            }),
        }
    }

    fn slot(&self, n: u64) -> &Slot {
        &self.slots[(n % u64::from(SLOTS)) as usize]
    }
}

/// The writer's steps 1-5 for each message, as `Writer::lend` and `SlotLoan::commit` do them.
fn write_all<F: Fence>(ring: &Ring) {
    for n in 0..MESSAGES {
        let slot = ring.slot(n);
        seqlock::begin_write::<_, F>(&slot.seq, n);
        for w in &slot.words {
            // Relaxed, like the payload bytes: ordered by the seqlock.
            w.store(n + 1, Relaxed);
        }
        seqlock::end_write(&slot.seq, n);
        seqlock::publish_head(&ring.head, n + 1);
    }
}

#[derive(Debug, Default)]
struct Outcome {
    delivered: Vec<u64>,
    lost: u64,
    cursor: u64,
    /// A delivered message whose payload was not the one written for it.
    torn: Option<(u64, u64, u64)>,
}

/// The reader's steps, as `Reader::step` and `Message::finish` do them, for `ATTEMPTS` rounds.
fn read_some(ring: &Ring, validate: bool) -> Outcome {
    let mut o = Outcome::default();
    for _ in 0..ATTEMPTS {
        let head = seqlock::read_head(&ring.head);
        let plan = seqlock::plan(o.cursor, head, 0, SLOTS);
        o.cursor = plan.next;
        o.lost += plan.lost;
        if o.cursor == head {
            thread::yield_now();
            continue;
        }
        let n = o.cursor;
        o.cursor += 1;
        let slot = ring.slot(n);
        let Some(seen) = seqlock::read_begin(&slot.seq, n) else {
            o.lost += 1;
            continue;
        };
        let (a, b) = (slot.words[0].load(Relaxed), slot.words[1].load(Relaxed));
        if validate && !seqlock::read_validate::<_, LoomFence>(&slot.seq, seen) {
            o.lost += 1;
            continue;
        }
        if (a, b) != (n + 1, n + 1) && o.torn.is_none() {
            o.torn = Some((n, a, b));
        }
        o.delivered.push(n);
    }
    o
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b
}

/// Run the model with the given writer fence and reader validation; `check` sees every
/// execution's outcome.
fn run<F: Fence + 'static>(validate: bool, check: impl Fn(&Outcome) + Sync + Send + 'static) {
    let check = std::sync::Arc::new(check);
    builder().check(move || {
        let ring = Arc::new(Ring::new());
        let writer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || write_all::<F>(&ring))
        };
        let o = read_some(&ring, validate);
        writer.join().unwrap();
        check(&o);
    });
}

#[test]
fn seqlock_never_delivers_a_torn_or_repeated_message() {
    static EXECUTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static DELIVERED_SOMETHING: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
    static LOST_SOMETHING: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
    run::<LoomFence>(true, |o| {
        EXECUTIONS.fetch_add(1, Relaxed);
        assert!(o.torn.is_none(), "validated a torn payload: {o:?}");
        assert!(
            o.delivered.windows(2).all(|w| w[0] < w[1]),
            "delivered twice or out of order: {o:?}"
        );
        assert!(o.delivered.iter().all(|&n| n < MESSAGES), "{o:?}");
        assert!(o.cursor <= MESSAGES, "{o:?}");
        assert_eq!(
            o.delivered.len() as u64 + o.lost,
            o.cursor,
            "delivered + lost != cursor: {o:?}"
        );
        DELIVERED_SOMETHING.fetch_or(!o.delivered.is_empty(), Relaxed);
        LOST_SOMETHING.fetch_or(o.lost > 0, Relaxed);
    });
    // The model reached the interesting states at all.
    assert!(DELIVERED_SOMETHING.load(Relaxed));
    assert!(
        LOST_SOMETHING.load(Relaxed),
        "no execution lapped the reader"
    );
    eprintln!("explored {} executions", EXECUTIONS.load(Relaxed));
}

/// Negative: without `read_validate`, some execution hands out a torn payload. This proves the
/// model explores the overlap the seqlock exists for.
#[test]
fn model_catches_a_reader_that_skips_validation() {
    static TORN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    run::<LoomFence>(false, |o| {
        TORN.fetch_or(o.torn.is_some(), Relaxed);
    });
    assert!(
        TORN.load(Relaxed),
        "no execution delivered a torn payload without validation: the model is too weak"
    );
}

/// Negative: with the reader's validation intact but no release fence after the writer's odd
/// seq store, some execution validates a torn payload. This proves the model checks memory
/// ordering, not just interleavings.
#[test]
fn model_catches_a_writer_without_the_release_fence() {
    static TORN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    run::<NoFence>(true, |o| {
        TORN.fetch_or(o.torn.is_some(), Relaxed);
    });
    assert!(
        TORN.load(Relaxed),
        "no execution validated a torn payload despite the missing fence: the model is too weak"
    );
}
