//! Framing: how a byte stream from a serial port becomes messages.
//!
//! This module owns [`Framing`] (the configured rule) and [`Framer`], a pure, synchronous state
//! machine: bytes in, [`Event`]s out. It does no I/O, takes no locks and reads no clock: the
//! caller passes the time in (only chunk mode's idle flush uses it). It must not know about rings,
//! ports or threads; `serial.rs` wires it to both.
//!
//! # The rules, and the accounting promise
//!
//! Every input byte ends up in exactly one emitted message or in a [`Event::Dropped`] count, in
//! order: concatenating the emitted payloads with the dropped bytes put back where they were gives
//! the input. Bytes are bytes: invalid UTF-8, NUL and any other value pass through unchanged.
//! Except for chunk mode's idle flush, the messages do not depend on how the input was split into
//! [`Framer::push`] calls.
//!
//! - **`lines`**: a message is one line *including* its terminator byte (so an NMEA sentence keeps
//!   its `\r\n`), at most `max_len` bytes. A line that would be longer is cut: its first
//!   `max_len` bytes are emitted as soon as they are buffered, flagged `truncated`, and the rest
//!   of that line, through its terminator, is dropped and reported as [`Event::Dropped`]. (Not
//!   published as continuations: a fragment is not a line, and a port at the wrong baud rate
//!   would otherwise flood the ring with full slots of garbage.)
//! - **`records`**: fixed-size records of `size` bytes.
//! - **`chunks`**: raw bytes, emitted when `max_size` bytes are buffered, or when `idle_ms` has
//!   passed since the newest buffered byte arrived ([`Framer::poll_idle`]).
//!
//! At end of stream ([`Framer::finish`], e.g. the port vanished) a buffered partial line or
//! record is emitted flagged `truncated`; a partial chunk is emitted as an ordinary chunk.

use std::fmt;
use std::time::{Duration, Instant};

/// Largest message any framing may produce (1 MiB); a ring slot holds one message.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// Longest idle gap a chunk framing may wait before flushing (60 s).
pub const MAX_IDLE_MS: u64 = 60_000;

/// How a byte stream is cut into messages. In TOML: `framing = { type = "lines", max_len = 128 }`,
/// `{ type = "records", size = 16 }` or `{ type = "chunks", max_size = 4096, idle_ms = 20 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Framing {
    /// Terminated lines (NMEA, CSV, AT responses). A message is one line including its
    /// terminator; longer lines are cut to `max_len`, flagged, and the rest is counted as dropped.
    Lines {
        /// Largest message, terminator included. NMEA 0183 sentences are at most 82 bytes.
        #[serde(default = "default_max_len")]
        max_len: usize,
        /// The byte that ends a line (default `"\n"`).
        #[serde(default)]
        terminator: Terminator,
    },
    /// Fixed-size binary records.
    Records {
        /// Bytes per record.
        size: usize,
    },
    /// Raw chunks with no structure.
    Chunks {
        /// Emit a chunk as soon as this many bytes are buffered.
        #[serde(default = "default_chunk_size")]
        max_size: usize,
        /// Emit what is buffered after this long without new bytes, in milliseconds.
        #[serde(default = "default_idle_ms")]
        idle_ms: u64,
    },
}

fn default_max_len() -> usize {
    256
}

fn default_chunk_size() -> usize {
    4096
}

fn default_idle_ms() -> u64 {
    20
}

impl Default for Framing {
    /// Lines of at most 256 bytes ending in `\n`.
    fn default() -> Self {
        Framing::Lines {
            max_len: default_max_len(),
            terminator: Terminator::default(),
        }
    }
}

impl Framing {
    /// The largest message this framing emits: the ring's slot size.
    pub fn max_message_len(&self) -> usize {
        match *self {
            Framing::Lines { max_len, .. } => max_len,
            Framing::Records { size } => size,
            Framing::Chunks { max_size, .. } => max_size,
        }
    }

    /// Check the sizes. `key` is the framing's config key (e.g. `stream.gps0.framing`); the
    /// error is one line naming the bad key, its value and what is allowed.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        let (field, len) = match *self {
            Framing::Lines { max_len, .. } => ("max_len", max_len),
            Framing::Records { size } => ("size", size),
            Framing::Chunks { max_size, .. } => ("max_size", max_size),
        };
        if !(1..=MAX_MESSAGE_LEN).contains(&len) {
            return Err(format!(
                "{key}.{field} = {len} is out of range: a message must be 1 to {MAX_MESSAGE_LEN} bytes"
            ));
        }
        if let Framing::Chunks { idle_ms, .. } = *self {
            if !(1..=MAX_IDLE_MS).contains(&idle_ms) {
                return Err(format!(
                    "{key}.idle_ms = {idle_ms} is out of range: use 1 to {MAX_IDLE_MS} milliseconds"
                ));
            }
        }
        Ok(())
    }
}

/// The byte that ends a line. In config: a one-byte string (`"\n"`, `"\r"`, `";"`) or a number
/// 0-255.
#[derive(Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "TerminatorRepr")]
pub struct Terminator(pub u8);

impl Default for Terminator {
    /// `\n`.
    fn default() -> Self {
        Terminator(b'\n')
    }
}

impl serde::Serialize for Terminator {
    /// As a one-character string when it is printable ASCII or a control character TOML can
    /// escape, else as a number.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_ascii() {
            s.serialize_str(&(self.0 as char).to_string())
        } else {
            s.serialize_u8(self.0)
        }
    }
}

impl fmt::Debug for Terminator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Terminator({:?})", self.0 as char)
    }
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum TerminatorRepr {
    Text(String),
    Byte(i64),
}

impl TryFrom<TerminatorRepr> for Terminator {
    type Error = String;

    fn try_from(r: TerminatorRepr) -> Result<Self, Self::Error> {
        match r {
            TerminatorRepr::Text(s) if s.len() == 1 => Ok(Terminator(s.as_bytes()[0])),
            TerminatorRepr::Text(s) => Err(format!(
                "terminator {s:?} must be exactly one byte, such as \"\\n\" or \"\\r\", or a number 0-255"
            )),
            TerminatorRepr::Byte(b) => u8::try_from(b)
                .map(Terminator)
                .map_err(|_| format!("terminator {b} must be a byte value 0-255")),
        }
    }
}

/// What a [`Framer`] emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A message to publish. `truncated` means it was cut short (an over-long line, or a partial
    /// line or record at end of stream).
    Message {
        /// The payload, at most [`Framing::max_message_len`] bytes.
        bytes: &'a [u8],
        /// Publish with `FLAG_TRUNCATED`.
        truncated: bool,
    },
    /// This many input bytes were discarded (the rest of an over-long line). Count them.
    Dropped(usize),
}

/// The framing state machine for one stream. See the module docs for the rules.
#[derive(Debug, Clone)]
pub struct Framer {
    framing: Framing,
    /// Bytes of the message being assembled; always shorter than the message limit between calls.
    buf: Vec<u8>,
    /// Lines: inside the tail of an over-long line, dropping through its terminator.
    discarding: bool,
    /// Chunks: when the newest buffered byte arrived (`None` when nothing is buffered).
    last_input: Option<Instant>,
}

impl Framer {
    /// A framer in its initial state. Sizes below 1 are treated as 1 (validate settings first).
    pub fn new(framing: Framing) -> Framer {
        let framing = match framing {
            Framing::Lines {
                max_len,
                terminator,
            } => Framing::Lines {
                max_len: max_len.max(1),
                terminator,
            },
            Framing::Records { size } => Framing::Records { size: size.max(1) },
            Framing::Chunks { max_size, idle_ms } => Framing::Chunks {
                max_size: max_size.max(1),
                idle_ms,
            },
        };
        Framer {
            framing,
            buf: Vec::with_capacity(framing.max_message_len().min(64 * 1024)),
            discarding: false,
            last_input: None,
        }
    }

    /// The framing rule.
    pub fn framing(&self) -> &Framing {
        &self.framing
    }

    /// Bytes held in a partial message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feed bytes that arrived at `now`, calling `sink` for every event they complete, in order.
    pub fn push<F: FnMut(Event<'_>)>(&mut self, input: &[u8], now: Instant, mut sink: F) {
        match self.framing {
            Framing::Lines {
                max_len,
                terminator,
            } => self.push_lines(input, max_len, terminator.0, &mut sink),
            Framing::Records { size } => self.push_fixed(input, size, &mut sink),
            Framing::Chunks { max_size, .. } => {
                self.push_fixed(input, max_size, &mut sink);
                if !input.is_empty() {
                    self.last_input = (!self.buf.is_empty()).then_some(now);
                }
            }
        }
    }

    fn push_lines<F: FnMut(Event<'_>)>(
        &mut self,
        input: &[u8],
        max_len: usize,
        term: u8,
        sink: &mut F,
    ) {
        let mut rest = input;
        while !rest.is_empty() {
            if self.discarding {
                match rest.iter().position(|&b| b == term) {
                    Some(i) => {
                        sink(Event::Dropped(i + 1));
                        self.discarding = false;
                        rest = &rest[i + 1..];
                    }
                    None => {
                        sink(Event::Dropped(rest.len()));
                        rest = &[];
                    }
                }
                continue;
            }
            // Invariant: buf.len() < max_len here, so room >= 1.
            let room = max_len - self.buf.len();
            let window = &rest[..room.min(rest.len())];
            if let Some(i) = window.iter().position(|&b| b == term) {
                let line = &window[..=i];
                if self.buf.is_empty() {
                    sink(Event::Message {
                        bytes: line,
                        truncated: false,
                    });
                } else {
                    self.buf.extend_from_slice(line);
                    sink(Event::Message {
                        bytes: &self.buf,
                        truncated: false,
                    });
                    self.buf.clear();
                }
                rest = &rest[i + 1..];
            } else {
                self.buf.extend_from_slice(window);
                rest = &rest[window.len()..];
                if self.buf.len() == max_len {
                    // max_len bytes and no terminator: the line is longer than allowed.
                    sink(Event::Message {
                        bytes: &self.buf,
                        truncated: true,
                    });
                    self.buf.clear();
                    self.discarding = true;
                }
            }
        }
    }

    fn push_fixed<F: FnMut(Event<'_>)>(&mut self, input: &[u8], size: usize, sink: &mut F) {
        let mut rest = input;
        while !rest.is_empty() {
            if self.buf.is_empty() && rest.len() >= size {
                sink(Event::Message {
                    bytes: &rest[..size],
                    truncated: false,
                });
                rest = &rest[size..];
                continue;
            }
            let take = (size - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == size {
                sink(Event::Message {
                    bytes: &self.buf,
                    truncated: false,
                });
                self.buf.clear();
            }
        }
    }

    /// Chunks: when buffered bytes become due for an idle flush. `None` for other framings or
    /// when nothing is buffered.
    pub fn idle_deadline(&self) -> Option<Instant> {
        match self.framing {
            Framing::Chunks { idle_ms, .. } => {
                self.last_input.map(|t| t + Duration::from_millis(idle_ms))
            }
            _ => None,
        }
    }

    /// Chunks: emit the buffered bytes if no new bytes arrived for `idle_ms` before `now`.
    /// Returns whether a chunk was emitted.
    pub fn poll_idle<F: FnMut(Event<'_>)>(&mut self, now: Instant, mut sink: F) -> bool {
        match self.idle_deadline() {
            Some(due) if now >= due && !self.buf.is_empty() => {
                sink(Event::Message {
                    bytes: &self.buf,
                    truncated: false,
                });
                self.buf.clear();
                self.last_input = None;
                true
            }
            _ => false,
        }
    }

    /// End of stream: emit any partial message (flagged truncated for lines and records, as an
    /// ordinary chunk for chunks) and return to the initial state.
    pub fn finish<F: FnMut(Event<'_>)>(&mut self, mut sink: F) {
        if !self.buf.is_empty() {
            let truncated = !matches!(self.framing, Framing::Chunks { .. });
            sink(Event::Message {
                bytes: &self.buf,
                truncated,
            });
            self.buf.clear();
        }
        self.discarding = false;
        self.last_input = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a framer emitted: messages (bytes, truncated), in order, and the dropped total.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Out {
        messages: Vec<(Vec<u8>, bool)>,
        /// Input reconstructed: message bytes and dropped ranges, in order.
        dropped: usize,
        /// Dropped bytes as (position in the output stream, count), for the accounting check.
        drops: Vec<(usize, usize)>,
        emitted_len: usize,
    }

    impl Out {
        fn sink(&mut self) -> impl FnMut(Event<'_>) + '_ {
            move |e| match e {
                Event::Message { bytes, truncated } => {
                    self.emitted_len += bytes.len();
                    self.messages.push((bytes.to_vec(), truncated));
                }
                Event::Dropped(n) => {
                    assert!(n > 0, "empty drop event");
                    self.dropped += n;
                    self.drops.push((self.emitted_len, n));
                }
            }
        }

        /// Messages and the totals, without the split-dependent drop event granularity.
        fn summary(&self) -> (Vec<(Vec<u8>, bool)>, usize) {
            (self.messages.clone(), self.dropped)
        }
    }

    fn run(framing: Framing, pieces: &[&[u8]], finish: bool) -> Out {
        let mut f = Framer::new(framing);
        let mut out = Out::default();
        let now = Instant::now();
        for p in pieces {
            f.push(p, now, out.sink());
        }
        if finish {
            f.finish(out.sink());
        }
        out
    }

    fn lines(max_len: usize) -> Framing {
        Framing::Lines {
            max_len,
            terminator: Terminator(b'\n'),
        }
    }

    fn msgs(out: &Out) -> Vec<(&[u8], bool)> {
        out.messages
            .iter()
            .map(|(b, t)| (b.as_slice(), *t))
            .collect()
    }

    #[test]
    fn nmea_lines_keep_their_crlf() {
        let out = run(
            lines(82),
            &[b"$GPGGA,1*4", b"7\r\n$GPRMC,2*11\r", b"\n"],
            false,
        );
        assert_eq!(
            msgs(&out),
            [
                (&b"$GPGGA,1*47\r\n"[..], false),
                (&b"$GPRMC,2*11\r\n"[..], false)
            ]
        );
        assert_eq!(out.dropped, 0);
    }

    #[test]
    fn a_line_of_exactly_max_len_is_whole() {
        let out = run(lines(4), &[b"abc\nabcd\n"], false);
        assert_eq!(
            msgs(&out),
            [(&b"abc\n"[..], false), (&b"abcd"[..], true)],
            "abcd\\n is 5 bytes: cut"
        );
        assert_eq!(out.dropped, 1);
    }

    #[test]
    fn over_long_lines_are_cut_flagged_and_the_rest_dropped() {
        let out = run(lines(8), &[b"short\n0123456789abcdef\nok\n"], false);
        assert_eq!(
            msgs(&out),
            [
                (&b"short\n"[..], false),
                (&b"01234567"[..], true),
                (&b"ok\n"[..], false)
            ]
        );
        assert_eq!(out.dropped, 9, "89abcdef and the newline");
    }

    #[test]
    fn a_stream_without_terminators_is_one_cut_line_then_drops() {
        let out = run(lines(4), &[b"xxxxxxxxxx", b"yyyy"], true);
        assert_eq!(msgs(&out), [(&b"xxxx"[..], true)]);
        assert_eq!(out.dropped, 10);
    }

    #[test]
    fn invalid_utf8_and_nul_pass_through() {
        let input: &[u8] = b"\x00\xff\xfe\xc3\x28\n\x00\n";
        let out = run(lines(64), &[input], false);
        assert_eq!(
            msgs(&out),
            [
                (&b"\x00\xff\xfe\xc3\x28\n"[..], false),
                (&b"\x00\n"[..], false)
            ]
        );
    }

    #[test]
    fn custom_terminator() {
        let f = Framing::Lines {
            max_len: 16,
            terminator: Terminator(b';'),
        };
        let out = run(f, &[b"a=1;b=2\n;"], false);
        assert_eq!(msgs(&out), [(&b"a=1;"[..], false), (&b"b=2\n;"[..], false)]);
    }

    #[test]
    fn finish_flushes_a_partial_line_as_truncated() {
        let out = run(lines(16), &[b"one\ntw"], true);
        assert_eq!(msgs(&out), [(&b"one\n"[..], false), (&b"tw"[..], true)]);
        // And the framer starts afresh: a discarding state does not survive finish.
        let mut f = Framer::new(lines(2));
        let mut o = Out::default();
        f.push(b"abc", Instant::now(), o.sink());
        f.finish(o.sink());
        f.push(b"d\n", Instant::now(), o.sink());
        assert_eq!(
            msgs(&o),
            [(&b"ab"[..], true), (&b"d\n"[..], false)],
            "after finish, d\\n is a new line"
        );
        assert_eq!(o.dropped, 1);
    }

    #[test]
    fn records_are_fixed_size_and_a_partial_one_is_truncated_at_the_end() {
        let out = run(Framing::Records { size: 3 }, &[b"ab", b"cdefg", b"h"], true);
        assert_eq!(
            msgs(&out),
            [
                (&b"abc"[..], false),
                (&b"def"[..], false),
                (&b"gh"[..], true)
            ]
        );
    }

    #[test]
    fn chunks_flush_on_size_and_on_idle() {
        let mut f = Framer::new(Framing::Chunks {
            max_size: 4,
            idle_ms: 10,
        });
        let mut o = Out::default();
        let t0 = Instant::now();
        f.push(b"abcdef", t0, o.sink());
        assert_eq!(msgs(&o), [(&b"abcd"[..], false)]);
        assert_eq!(f.idle_deadline(), Some(t0 + Duration::from_millis(10)));
        assert!(!f.poll_idle(t0 + Duration::from_millis(9), o.sink()));
        // New bytes push the deadline back.
        let t1 = t0 + Duration::from_millis(5);
        f.push(b"g", t1, o.sink());
        assert!(!f.poll_idle(t0 + Duration::from_millis(12), o.sink()));
        assert!(f.poll_idle(t1 + Duration::from_millis(10), o.sink()));
        assert_eq!(msgs(&o), [(&b"abcd"[..], false), (&b"efg"[..], false)]);
        assert_eq!(f.idle_deadline(), None);
        assert_eq!(f.buffered(), 0);
        // A partial chunk at the end is an ordinary chunk.
        f.push(b"h", t1, o.sink());
        f.finish(o.sink());
        assert_eq!(o.messages.last(), Some(&(b"h".to_vec(), false)));
    }

    #[test]
    fn exact_chunk_leaves_no_idle_deadline() {
        let mut f = Framer::new(Framing::Chunks {
            max_size: 2,
            idle_ms: 10,
        });
        let mut o = Out::default();
        f.push(b"ab", Instant::now(), o.sink());
        assert_eq!(f.idle_deadline(), None);
        assert_eq!(o.messages.len(), 1);
    }

    #[test]
    fn other_framings_have_no_idle_deadline() {
        let mut f = Framer::new(Framing::Records { size: 4 });
        f.push(b"ab", Instant::now(), |_| {});
        assert_eq!(f.idle_deadline(), None);
        assert!(!f.poll_idle(Instant::now() + Duration::from_secs(3600), |_| {}));
        assert_eq!(f.buffered(), 2);
    }

    #[test]
    fn zero_sizes_are_treated_as_one() {
        let out = run(Framing::Records { size: 0 }, &[b"ab"], false);
        assert_eq!(msgs(&out), [(&b"a"[..], false), (&b"b"[..], false)]);
    }

    #[test]
    fn validate_names_the_key_and_the_limits() {
        assert!(Framing::default().validate("s.framing").is_ok());
        let e = lines(0).validate("stream.gps0.framing").unwrap_err();
        assert!(e.starts_with("stream.gps0.framing.max_len = 0 "), "{e}");
        let e = Framing::Records {
            size: MAX_MESSAGE_LEN + 1,
        }
        .validate("f")
        .unwrap_err();
        assert!(
            e.contains("f.size = 1048577") && e.contains("1048576"),
            "{e}"
        );
        let e = Framing::Chunks {
            max_size: 10,
            idle_ms: 0,
        }
        .validate("f")
        .unwrap_err();
        assert!(e.starts_with("f.idle_ms = 0 "), "{e}");
        assert!(!e.contains('\n'));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrap {
        framing: Framing,
    }

    fn parse(s: &str) -> Result<Framing, String> {
        toml::from_str::<Wrap>(s)
            .map(|w| w.framing)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn framing_parses_from_toml() {
        assert_eq!(
            parse(r#"framing = { type = "lines" }"#),
            Ok(Framing::default())
        );
        assert_eq!(
            parse(r#"framing = { type = "lines", max_len = 82, terminator = "\r" }"#),
            Ok(Framing::Lines {
                max_len: 82,
                terminator: Terminator(b'\r')
            })
        );
        assert_eq!(
            parse(r#"framing = { type = "lines", terminator = 0 }"#),
            Ok(Framing::Lines {
                max_len: 256,
                terminator: Terminator(0)
            })
        );
        assert_eq!(
            parse(r#"framing = { type = "records", size = 16 }"#),
            Ok(Framing::Records { size: 16 })
        );
        assert_eq!(
            parse(r#"framing = { type = "chunks", idle_ms = 5 }"#),
            Ok(Framing::Chunks {
                max_size: 4096,
                idle_ms: 5
            })
        );
        for bad in [
            r#"framing = { type = "lines", max_length = 82 }"#,
            r#"framing = { type = "records" }"#,
            r#"framing = { type = "Lines" }"#,
            r#"framing = { type = "lines", terminator = "\r\n" }"#,
            r#"framing = { type = "lines", terminator = 256 }"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} parsed");
        }
        let e = parse(r#"framing = { type = "lines", terminator = "\r\n" }"#).unwrap_err();
        assert!(e.contains("exactly one byte"), "{e}");
    }

    /// The reference model of `lines`, written independently of the state machine.
    fn lines_model(input: &[u8], max_len: usize, term: u8) -> (Vec<(Vec<u8>, bool)>, usize) {
        let mut messages = Vec::new();
        let mut dropped = 0;
        for seg in input.split_inclusive(|&b| b == term) {
            if seg.len() <= max_len && (seg.last() == Some(&term) || seg.len() < max_len) {
                // A whole line, or an unterminated tail shorter than the limit (finish: cut).
                messages.push((seg.to_vec(), seg.last() != Some(&term)));
            } else {
                messages.push((seg[..max_len].to_vec(), true));
                dropped += seg.len() - max_len;
            }
        }
        (messages, dropped)
    }

    /// Input biased towards terminators so lines of every length show up.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![3 => Just(b'\n'), 1 => Just(b'\r'), 1 => Just(0u8), 10 => any::<u8>()],
            0..400,
        )
    }

    /// Split `input` at the given (unsorted, possibly repeated) cut points.
    fn split<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut prev = 0;
        for c in at {
            pieces.push(&input[prev..c]);
            prev = c;
        }
        pieces.push(&input[prev..]);
        pieces
    }

    fn framings() -> impl Strategy<Value = Framing> {
        prop_oneof![
            (1usize..40, prop_oneof![Just(b'\n'), Just(0u8), any::<u8>()]).prop_map(
                |(max_len, t)| Framing::Lines {
                    max_len,
                    terminator: Terminator(t)
                }
            ),
            (1usize..40).prop_map(|size| Framing::Records { size }),
            (1usize..40).prop_map(|max_size| Framing::Chunks {
                max_size,
                idle_ms: 10
            }),
        ]
    }

    /// Every byte is in a message or a drop, in order.
    fn assert_accounted(framing: Framing, input: &[u8], out: &Out) {
        let mut rebuilt = Vec::new();
        let mut emitted = 0;
        let mut drops = out.drops.iter().peekable();
        let mut pos = 0;
        let mut take_drops = |upto: usize, rebuilt: &mut Vec<u8>, pos: &mut usize| {
            while let Some(&&(at, n)) = drops.peek() {
                if at > upto {
                    break;
                }
                rebuilt.extend_from_slice(&input[*pos..*pos + n]);
                *pos += n;
                drops.next();
            }
        };
        for (m, _) in &out.messages {
            take_drops(emitted, &mut rebuilt, &mut pos);
            assert_eq!(
                &input[pos..pos + m.len()],
                m.as_slice(),
                "message out of place"
            );
            rebuilt.extend_from_slice(m);
            pos += m.len();
            emitted += m.len();
        }
        take_drops(usize::MAX, &mut rebuilt, &mut pos);
        assert_eq!(rebuilt, input, "{framing:?}: bytes lost or invented");
        let max = framing.max_message_len();
        assert!(out
            .messages
            .iter()
            .all(|(m, _)| !m.is_empty() && m.len() <= max));
        if !matches!(framing, Framing::Lines { .. }) {
            assert_eq!(out.dropped, 0);
        }
    }

    proptest! {
        #[test]
        fn every_byte_is_published_or_counted(
            framing in framings(),
            input in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let out = run(framing, &split(&input, &cuts), true);
            assert_accounted(framing, &input, &out);
        }

        #[test]
        fn framing_does_not_depend_on_how_reads_were_split(
            framing in framings(),
            input in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
            finish in any::<bool>(),
        ) {
            let whole = run(framing, &[&input], finish);
            let bytewise: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(whole.summary(), run(framing, &split(&input, &cuts), finish).summary());
            prop_assert_eq!(whole.summary(), run(framing, &bytewise, finish).summary());
        }

        #[test]
        fn lines_match_the_reference_model(
            max_len in 1usize..40,
            input in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let out = run(lines(max_len), &split(&input, &cuts), true);
            prop_assert_eq!(out.summary(), lines_model(&input, max_len, b'\n'));
        }

        #[test]
        fn records_are_all_full_but_the_last(
            size in 1usize..40,
            input in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let out = run(Framing::Records { size }, &split(&input, &cuts), true);
            let expect: Vec<(Vec<u8>, bool)> = input
                .chunks(size)
                .map(|c| (c.to_vec(), c.len() < size))
                .collect();
            prop_assert_eq!(out.messages, expect);
        }

        #[test]
        fn idle_flushes_never_lose_bytes(
            max_size in 1usize..40,
            input in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
            gaps in proptest::collection::vec(0u64..30, 13),
        ) {
            let framing = Framing::Chunks { max_size, idle_ms: 10 };
            let mut f = Framer::new(framing);
            let mut out = Out::default();
            let mut now = Instant::now();
            for (p, gap) in split(&input, &cuts).into_iter().zip(gaps.iter().cycle()) {
                f.push(p, now, out.sink());
                now += Duration::from_millis(*gap);
                f.poll_idle(now, out.sink());
                prop_assert!(f.buffered() < max_size);
            }
            f.finish(out.sink());
            assert_accounted(framing, &input, &out);
        }
    }
}
