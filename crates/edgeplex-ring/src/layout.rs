//! The on-disk layout of a ring file, version 1, and the validation every reader runs before it
//! trusts a byte of it.
//!
//! This module is plain, safe arithmetic over byte slices: it never touches a mapping. The byte
//! offsets here are the contract that `docs/RING.md` describes; a change to any of them is a new
//! format version.

use std::fmt;

/// The first eight bytes of every ring file.
pub const MAGIC: [u8; 8] = *b"EDGEPLXR";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Size of the header page. The slot descriptor table starts right after it.
pub const HEADER_SIZE: u64 = 4096;
/// Size of one slot descriptor.
pub const DESC_SIZE: u64 = 64;
/// Alignment of the payload area and granularity of a file's size.
pub const PAGE: u64 = 4096;
/// Payload capacity is always a multiple of this (one cache line).
pub const SLOT_ALIGN: u64 = 64;
/// Smallest slot count: a reader can safely hold `slot_count - 1` messages.
pub const MIN_SLOT_COUNT: u32 = 2;
/// Largest slot count a reader accepts.
pub const MAX_SLOT_COUNT: u32 = 1 << 20;
/// Largest payload capacity of one slot a reader accepts (1 GiB).
pub const MAX_SLOT_SIZE: u64 = 1 << 30;
/// Largest ring file a reader accepts (64 GiB): anything larger is hostile or a mistake.
pub const MAX_FILE_SIZE: u64 = 64 << 30;
/// Longest stream name stored in the header, in bytes.
pub const NAME_LEN: usize = 64;

/// Byte offsets of the header fields. All integers are little-endian.
pub mod off {
    /// `[u8; 8]` magic.
    pub const MAGIC: usize = 0;
    /// `u32` format version.
    pub const VERSION: usize = 8;
    /// `u32` header size (4096).
    pub const HEADER_SIZE: usize = 12;
    /// `u32` number of slots.
    pub const SLOT_COUNT: usize = 16;
    /// `u32` stream kind.
    pub const KIND: usize = 20;
    /// `u64` payload capacity of each slot.
    pub const SLOT_SIZE: usize = 24;
    /// `u64` offset of the slot descriptor table.
    pub const DESC_OFFSET: usize = 32;
    /// `u64` offset of the first payload.
    pub const DATA_OFFSET: usize = 40;
    /// `u64` total size of the file.
    pub const FILE_SIZE: usize = 48;
    /// `u64` creation time, CLOCK_REALTIME nanoseconds.
    pub const CREATED_NS: usize = 56;
    /// `u32` video width in pixels.
    pub const WIDTH: usize = 64;
    /// `u32` video height in pixels.
    pub const HEIGHT: usize = 68;
    /// `u32` video pixel format, a V4L2 fourcc.
    pub const FOURCC: usize = 72;
    /// `u32` bytes per line of a video frame.
    pub const STRIDE: usize = 76;
    /// `[u8; 64]` stream name, UTF-8, NUL padded.
    pub const NAME: usize = 80;
    /// `u64` number of the first message this file holds.
    pub const BASE_SEQ: usize = 144;
    /// `AtomicU32` state bits ([`super::STATE_RETIRED`]).
    pub const STATE: usize = 256;
    /// `AtomicU64` writer epoch.
    pub const EPOCH: usize = 264;
    /// `AtomicU32` pid of the current writer, 0 after a clean stop.
    pub const WRITER_PID: usize = 272;
    /// `AtomicU64` CLOCK_REALTIME nanoseconds of the writer's last publish or heartbeat.
    pub const HEARTBEAT_NS: usize = 280;
    /// `AtomicU64` head: the number of messages published so far.
    pub const HEAD: usize = 320;
    /// `AtomicU32` futex word: the low 32 bits of head, stored after head.
    pub const FUTEX: usize = 384;
}

/// Byte offsets inside one 64-byte slot descriptor.
pub mod desc {
    /// `AtomicU64` seqlock word: 0 empty, `2n+1` writing message `n`, `2n+2` message `n` complete.
    pub const SEQ: usize = 0;
    /// `u64` payload length.
    pub const LEN: usize = 8;
    /// `u64` capture timestamp, nanoseconds, clock given by the flags.
    pub const CAPTURE_NS: usize = 16;
    /// `u64` the device's own sequence number.
    pub const DEVICE_SEQ: usize = 24;
    /// `u64` CLOCK_REALTIME nanoseconds when the writer published the message.
    pub const PUBLISH_NS: usize = 32;
    /// `u64` epoch of the writer that wrote the message.
    pub const EPOCH: usize = 40;
    /// `u32` message flags.
    pub const FLAGS: usize = 48;
}

/// State bit: the file has been replaced at its path; reopen the path.
pub const STATE_RETIRED: u32 = 1;

/// Message flag: the payload was cut to fit (an over-long serial line, say).
pub const FLAG_TRUNCATED: u32 = 1;
/// Message flag: `capture_ns` is CLOCK_REALTIME rather than CLOCK_MONOTONIC.
pub const FLAG_CAPTURE_REALTIME: u32 = 2;
/// Message flag: the source reported an error for this frame (V4L2_BUF_FLAG_ERROR).
pub const FLAG_DEVICE_ERROR: u32 = 4;

/// What a ring carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum StreamKind {
    /// Opaque bytes.
    Bytes,
    /// Video frames; the header's video fields are meaningful.
    Video,
    /// Serial samples: lines, records or chunks.
    Serial,
}

impl StreamKind {
    /// The value stored in the header.
    pub fn code(self) -> u32 {
        match self {
            StreamKind::Bytes => 0,
            StreamKind::Video => 1,
            StreamKind::Serial => 2,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(StreamKind::Bytes),
            1 => Some(StreamKind::Video),
            2 => Some(StreamKind::Serial),
            _ => None,
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamKind::Bytes => "bytes",
            StreamKind::Video => "video",
            StreamKind::Serial => "serial",
        })
    }
}

/// Video geometry of a frame stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VideoFormat {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// V4L2 pixel format code (`YUYV`, `MJPG`, ...), little-endian fourcc.
    pub fourcc: u32,
    /// Bytes per line.
    pub stride: u32,
}

/// Render a fourcc code as its four characters.
pub fn fourcc_str(code: u32) -> String {
    code.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// Parse a four-character code such as `YUYV`.
pub fn fourcc_from_str(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    (b.len() == 4).then(|| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// What a writer asks for: everything that decides a ring's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSpec {
    /// Stream name, stored in the header (at most 64 bytes).
    pub name: String,
    /// What the ring carries.
    pub kind: StreamKind,
    /// Number of slots, at least 2.
    pub slot_count: u32,
    /// Largest payload one slot holds; rounded up to a multiple of 64 (of 4096 for video).
    pub slot_size: u64,
    /// Video geometry, for video rings.
    pub video: Option<VideoFormat>,
}

/// The validated, immutable part of a ring header.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Geometry {
    /// Stream name.
    pub name: String,
    /// What the ring carries.
    pub kind: StreamKind,
    /// Number of slots.
    pub slot_count: u32,
    /// Payload capacity of each slot, bytes.
    pub slot_size: u64,
    /// Offset of the descriptor table.
    pub desc_offset: u64,
    /// Offset of slot 0's payload.
    pub data_offset: u64,
    /// Size of the file.
    pub file_size: u64,
    /// Creation time, CLOCK_REALTIME nanoseconds.
    pub created_ns: u64,
    /// Number of the first message this file holds.
    pub base_seq: u64,
    /// Video geometry (zero for other kinds).
    pub video: VideoFormat,
}

impl Geometry {
    /// The layout a writer creates for `spec`, or why it cannot.
    pub fn for_spec(spec: &RingSpec, created_ns: u64, base_seq: u64) -> Result<Self, HeaderError> {
        if spec.name.len() > NAME_LEN || spec.name.contains('\0') {
            return Err(HeaderError::BadName);
        }
        let align = if spec.kind == StreamKind::Video {
            PAGE
        } else {
            SLOT_ALIGN
        };
        let slot_size = round_up(spec.slot_size.max(1), align).ok_or(HeaderError::Overflow)?;
        let (desc_offset, data_offset, file_size) = layout_for(spec.slot_count, slot_size)?;
        Ok(Geometry {
            name: spec.name.clone(),
            kind: spec.kind,
            slot_count: spec.slot_count,
            slot_size,
            desc_offset,
            data_offset,
            file_size,
            created_ns,
            base_seq,
            video: spec.video.unwrap_or_default(),
        })
    }

    /// Whether this file already has the layout `spec` asks for.
    pub fn matches(&self, spec: &RingSpec) -> bool {
        let Ok(want) = Geometry::for_spec(spec, 0, 0) else {
            return false;
        };
        self.name == want.name
            && self.kind == want.kind
            && self.slot_count == want.slot_count
            && self.slot_size == want.slot_size
            && self.video == want.video
    }

    /// Offset of slot `i`'s descriptor.
    pub fn desc_at(&self, slot: u64) -> u64 {
        self.desc_offset + slot * DESC_SIZE
    }

    /// Offset of slot `i`'s payload.
    pub fn payload_at(&self, slot: u64) -> u64 {
        self.data_offset + slot * self.slot_size
    }

    /// Serialise the immutable header fields into a header page.
    pub fn encode(&self, page: &mut [u8]) {
        assert!(page.len() >= HEADER_SIZE as usize, "header page too small");
        page[..HEADER_SIZE as usize].fill(0);
        put(page, off::MAGIC, &MAGIC);
        put(page, off::VERSION, &VERSION.to_le_bytes());
        put(page, off::HEADER_SIZE, &(HEADER_SIZE as u32).to_le_bytes());
        put(page, off::SLOT_COUNT, &self.slot_count.to_le_bytes());
        put(page, off::KIND, &self.kind.code().to_le_bytes());
        put(page, off::SLOT_SIZE, &self.slot_size.to_le_bytes());
        put(page, off::DESC_OFFSET, &self.desc_offset.to_le_bytes());
        put(page, off::DATA_OFFSET, &self.data_offset.to_le_bytes());
        put(page, off::FILE_SIZE, &self.file_size.to_le_bytes());
        put(page, off::CREATED_NS, &self.created_ns.to_le_bytes());
        put(page, off::WIDTH, &self.video.width.to_le_bytes());
        put(page, off::HEIGHT, &self.video.height.to_le_bytes());
        put(page, off::FOURCC, &self.video.fourcc.to_le_bytes());
        put(page, off::STRIDE, &self.video.stride.to_le_bytes());
        put(page, off::NAME, self.name.as_bytes());
        put(page, off::BASE_SEQ, &self.base_seq.to_le_bytes());
        put(page, off::HEAD, &self.base_seq.to_le_bytes());
        put(page, off::FUTEX, &(self.base_seq as u32).to_le_bytes());
    }
}

/// Why a header cannot be trusted. Every reader checks all of these before it maps the slots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The file cannot even hold the header page.
    #[error(
        "file is {len} bytes, smaller than the {HEADER_SIZE}-byte header: truncated, or not a ring"
    )]
    TooSmall {
        /// Actual file length.
        len: u64,
    },
    /// The magic bytes are wrong.
    #[error("bad magic {found:02x?}: not an edgeplex ring file")]
    BadMagic {
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// A format version this build cannot read.
    #[error("format version {found} is not supported (this build reads version {VERSION}); upgrade the reader")]
    UnsupportedVersion {
        /// Version found in the file.
        found: u32,
    },
    /// The header size field is not 4096.
    #[error("header size {found} is not {HEADER_SIZE}")]
    BadHeaderSize {
        /// Header size found.
        found: u32,
    },
    /// Slot count out of range.
    #[error("slot count {found} is outside {MIN_SLOT_COUNT}..={MAX_SLOT_COUNT}")]
    BadSlotCount {
        /// Slot count found.
        found: u32,
    },
    /// Slot size zero, unaligned or absurd.
    #[error("slot size {found} is not a non-zero multiple of {SLOT_ALIGN} up to {MAX_SLOT_SIZE}")]
    BadSlotSize {
        /// Slot size found.
        found: u64,
    },
    /// Unknown stream kind.
    #[error("unknown stream kind {found}")]
    BadKind {
        /// Kind code found.
        found: u32,
    },
    /// The name is too long, has a NUL, or is not UTF-8.
    #[error("stream name is not UTF-8 of at most {NAME_LEN} bytes without NUL")]
    BadName,
    /// Layout arithmetic overflows or exceeds the file-size cap.
    #[error("slot count times slot size overflows or exceeds {MAX_FILE_SIZE} bytes")]
    Overflow,
    /// A derived offset disagrees with the one stored.
    #[error("{field} is {found}, expected {expected}")]
    LayoutMismatch {
        /// Which field.
        field: &'static str,
        /// Value the geometry implies.
        expected: u64,
        /// Value stored.
        found: u64,
    },
    /// The head (messages published) comes before the number of the file's first message (in
    /// wrapping order: `head - base_seq` modulo 2^64 exceeds 2^63 - 1): no writer stores that,
    /// and a reader would deliver phantom messages.
    #[error(
        "head {head} comes before base_seq {base}: no writer stores that; the file is corrupt"
    )]
    HeadBeforeBase {
        /// Head found.
        head: u64,
        /// base_seq found.
        base: u64,
    },
    /// The file is shorter than its header says.
    #[error("file is {actual} bytes but its header describes {expected}: truncated")]
    Truncated {
        /// Size the header describes.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
}

/// Validate a header page against the real size of its file.
///
/// `page` holds the first bytes of the file (at most [`HEADER_SIZE`] are looked at; fewer means
/// the file is too small); `file_len` is the size `fstat` reports. Nothing in the header is trusted
/// until every check here has passed.
pub fn parse_header(page: &[u8], file_len: u64) -> Result<Geometry, HeaderError> {
    if file_len < HEADER_SIZE || page.len() < HEADER_SIZE as usize {
        return Err(HeaderError::TooSmall {
            len: file_len.min(page.len() as u64),
        });
    }
    let magic: [u8; 8] = page[..8].try_into().expect("8 bytes");
    if magic != MAGIC {
        return Err(HeaderError::BadMagic { found: magic });
    }
    let version = get_u32(page, off::VERSION);
    if version != VERSION {
        return Err(HeaderError::UnsupportedVersion { found: version });
    }
    let header_size = get_u32(page, off::HEADER_SIZE);
    if u64::from(header_size) != HEADER_SIZE {
        return Err(HeaderError::BadHeaderSize { found: header_size });
    }
    let slot_count = get_u32(page, off::SLOT_COUNT);
    let kind_code = get_u32(page, off::KIND);
    let kind = StreamKind::from_code(kind_code).ok_or(HeaderError::BadKind { found: kind_code })?;
    let slot_size = get_u64(page, off::SLOT_SIZE);
    let (desc_offset, data_offset, file_size) = layout_for(slot_count, slot_size)?;
    for (field, at, expected) in [
        ("descriptor offset", off::DESC_OFFSET, desc_offset),
        ("data offset", off::DATA_OFFSET, data_offset),
        ("file size", off::FILE_SIZE, file_size),
    ] {
        let found = get_u64(page, at);
        if found != expected {
            return Err(HeaderError::LayoutMismatch {
                field,
                expected,
                found,
            });
        }
    }
    if file_len < file_size {
        return Err(HeaderError::Truncated {
            expected: file_size,
            actual: file_len,
        });
    }
    let base_seq = get_u64(page, off::BASE_SEQ);
    let head = get_u64(page, off::HEAD);
    // Wrapping order, as everywhere on message numbers: head must not come before base_seq.
    if head.wrapping_sub(base_seq) > i64::MAX as u64 {
        return Err(HeaderError::HeadBeforeBase {
            head,
            base: base_seq,
        });
    }
    let raw_name = &page[off::NAME..off::NAME + NAME_LEN];
    let name_len = raw_name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    let name = std::str::from_utf8(&raw_name[..name_len]).map_err(|_| HeaderError::BadName)?;
    Ok(Geometry {
        name: name.to_owned(),
        kind,
        slot_count,
        slot_size,
        desc_offset,
        data_offset,
        file_size,
        created_ns: get_u64(page, off::CREATED_NS),
        base_seq,
        video: VideoFormat {
            width: get_u32(page, off::WIDTH),
            height: get_u32(page, off::HEIGHT),
            fourcc: get_u32(page, off::FOURCC),
            stride: get_u32(page, off::STRIDE),
        },
    })
}

/// Descriptor offset, data offset and file size for a slot count and size, all checked.
fn layout_for(slot_count: u32, slot_size: u64) -> Result<(u64, u64, u64), HeaderError> {
    if !(MIN_SLOT_COUNT..=MAX_SLOT_COUNT).contains(&slot_count) {
        return Err(HeaderError::BadSlotCount { found: slot_count });
    }
    if slot_size == 0 || !slot_size.is_multiple_of(SLOT_ALIGN) || slot_size > MAX_SLOT_SIZE {
        return Err(HeaderError::BadSlotSize { found: slot_size });
    }
    let count = u64::from(slot_count);
    let desc_bytes = count.checked_mul(DESC_SIZE).ok_or(HeaderError::Overflow)?;
    let data_offset = HEADER_SIZE
        .checked_add(round_up(desc_bytes, PAGE).ok_or(HeaderError::Overflow)?)
        .ok_or(HeaderError::Overflow)?;
    let file_size = count
        .checked_mul(slot_size)
        .and_then(|d| d.checked_add(data_offset))
        .and_then(|s| round_up(s, PAGE))
        .ok_or(HeaderError::Overflow)?;
    if file_size > MAX_FILE_SIZE {
        return Err(HeaderError::Overflow);
    }
    Ok((HEADER_SIZE, data_offset, file_size))
}

/// `v` rounded up to a multiple of `to` (a power of two), or `None` on overflow.
pub fn round_up(v: u64, to: u64) -> Option<u64> {
    debug_assert!(to.is_power_of_two());
    v.checked_add(to - 1).map(|x| x & !(to - 1))
}

fn put(page: &mut [u8], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

fn get_u32(page: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(page[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(page: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(page[at..at + 8].try_into().expect("8 bytes"))
}

// The mutable words sit on their own cache lines, apart from each other and from the
// immutable fields readers copy, and every atomic is naturally aligned.
const _: () = {
    assert!(
        off::STATE.is_multiple_of(64)
            && off::HEAD.is_multiple_of(64)
            && off::FUTEX.is_multiple_of(64)
    );
    assert!(
        off::EPOCH.is_multiple_of(8)
            && off::HEARTBEAT_NS.is_multiple_of(8)
            && off::WRITER_PID.is_multiple_of(4)
    );
    assert!(off::BASE_SEQ + 8 <= off::STATE);
    assert!(off::NAME + NAME_LEN <= off::BASE_SEQ);
    assert!(off::FUTEX + 4 <= HEADER_SIZE as usize);
    assert!(desc::FLAGS + 4 <= DESC_SIZE as usize);
    assert!(HEADER_SIZE.is_multiple_of(PAGE));
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(count: u32, size: u64) -> RingSpec {
        RingSpec {
            name: "cam0".into(),
            kind: StreamKind::Video,
            slot_count: count,
            slot_size: size,
            video: Some(VideoFormat {
                width: 640,
                height: 480,
                fourcc: 0x5659_5559,
                stride: 1280,
            }),
        }
    }

    fn page_for(g: &Geometry) -> Vec<u8> {
        let mut page = vec![0u8; HEADER_SIZE as usize];
        g.encode(&mut page);
        page
    }

    #[test]
    fn round_trip() {
        let g = Geometry::for_spec(&spec(8, 640 * 480 * 2), 42, 7).unwrap();
        assert_eq!(g.slot_size, 614_400);
        assert_eq!(g.data_offset, 8192);
        assert_eq!(g.file_size, 8192 + 8 * 614_400);
        assert_eq!(parse_header(&page_for(&g), g.file_size).unwrap(), g);
    }

    #[test]
    fn rejects_small_and_foreign_files() {
        assert_eq!(parse_header(&[], 0), Err(HeaderError::TooSmall { len: 0 }));
        assert_eq!(
            parse_header(&[0; 100], 100),
            Err(HeaderError::TooSmall { len: 100 })
        );
        assert!(matches!(
            parse_header(&[0; 4096], 4096),
            Err(HeaderError::BadMagic { .. })
        ));
    }

    #[test]
    fn rejects_truncated_file() {
        let g = Geometry::for_spec(&spec(4, 4096), 0, 0).unwrap();
        let e = parse_header(&page_for(&g), g.file_size - 1).unwrap_err();
        assert_eq!(
            e,
            HeaderError::Truncated {
                expected: g.file_size,
                actual: g.file_size - 1
            }
        );
    }

    #[test]
    fn rejects_head_below_base() {
        let g = Geometry::for_spec(&spec(4, 4096), 0, 10).unwrap();
        let mut page = page_for(&g);
        page[off::HEAD..off::HEAD + 8].copy_from_slice(&9u64.to_le_bytes());
        assert_eq!(
            parse_header(&page, g.file_size),
            Err(HeaderError::HeadBeforeBase { head: 9, base: 10 })
        );
    }

    #[test]
    fn rejects_overflowing_geometry() {
        let g = Geometry::for_spec(&spec(4, 4096), 0, 0).unwrap();
        let mut page = page_for(&g);
        page[off::SLOT_COUNT..off::SLOT_COUNT + 4].copy_from_slice(&MAX_SLOT_COUNT.to_le_bytes());
        page[off::SLOT_SIZE..off::SLOT_SIZE + 8].copy_from_slice(&MAX_SLOT_SIZE.to_le_bytes());
        assert_eq!(parse_header(&page, u64::MAX), Err(HeaderError::Overflow));
    }

    proptest! {
        /// Whatever bytes a hostile file holds, validation returns, and anything it accepts
        /// describes a layout that fits inside the file.
        #[test]
        fn arbitrary_headers_never_panic(
            fields in proptest::collection::vec(any::<u64>(), 8),
            len in any::<u64>(),
            keep_magic in any::<bool>(),
        ) {
            let g = Geometry::for_spec(&spec(4, 4096), 0, 0).unwrap();
            let mut page = page_for(&g);
            if !keep_magic {
                page[0] ^= 1;
            }
            let offsets = [off::VERSION, off::HEADER_SIZE, off::SLOT_COUNT, off::KIND];
            for (i, at) in offsets.iter().enumerate() {
                if fields[i] & 1 == 1 {
                    page[*at..at + 4].copy_from_slice(&(fields[i] as u32).to_le_bytes());
                }
            }
            let offsets = [off::SLOT_SIZE, off::DESC_OFFSET, off::DATA_OFFSET, off::FILE_SIZE];
            for (i, at) in offsets.iter().enumerate() {
                if fields[4 + i] & 1 == 1 {
                    page[*at..at + 8].copy_from_slice(&fields[4 + i].to_le_bytes());
                }
            }
            if let Ok(g) = parse_header(&page, len) {
                let end = g.payload_at(u64::from(g.slot_count));
                prop_assert!(end <= g.file_size && g.file_size <= len);
                prop_assert!(g.desc_at(u64::from(g.slot_count)) <= g.data_offset);
            }
        }

        /// Any layout a writer can create is read back identically.
        #[test]
        fn valid_geometry_round_trips(count in MIN_SLOT_COUNT..=4096u32, size in 1u64..=(1 << 24)) {
            let mut s = spec(count, size);
            s.kind = StreamKind::Serial;
            let g = Geometry::for_spec(&s, 1, 2).unwrap();
            prop_assert!(g.slot_size >= size && g.slot_size.is_multiple_of(SLOT_ALIGN));
            prop_assert_eq!(parse_header(&page_for(&g), g.file_size), Ok(g.clone()));
            prop_assert!(g.matches(&s));
        }
    }

    /// Cases of the header fuzz below: `EDGEPLEX_FUZZ_CASES`, 20 000 by default (a few seconds
    /// in a debug build). A long run: `EDGEPLEX_FUZZ_CASES=2000000 cargo test -p edgeplex-ring
    /// header_fuzz`.
    fn fuzz_cases() -> u32 {
        std::env::var("EDGEPLEX_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

        /// Header fuzz: a valid header page with up to 16 random bytes-runs written anywhere in
        /// its first 512 bytes (where every field lives), or a page of random bytes, against
        /// any file size. Validation never panics, and what it accepts is self-consistent and
        /// fits in the file: head at or past base_seq, every slot within the file size.
        #[test]
        fn header_fuzz(
            edits in proptest::collection::vec((0usize..512, proptest::collection::vec(any::<u8>(), 1..9)), 0..16),
            random in proptest::option::weighted(0.1, proptest::collection::vec(any::<u8>(), 512)),
            len in prop_oneof![any::<u64>(), 0u64..(1 << 24), Just(HEADER_SIZE)],
            count in MIN_SLOT_COUNT..64u32,
        ) {
            let mut page = match random {
                Some(bytes) => {
                    let mut p = vec![0u8; HEADER_SIZE as usize];
                    p[..512].copy_from_slice(&bytes);
                    p
                }
                None => page_for(&Geometry::for_spec(&spec(count, 4096), 0, 0).unwrap()),
            };
            for (at, bytes) in &edits {
                let end = (at + bytes.len()).min(page.len());
                page[*at..end].copy_from_slice(&bytes[..end - at]);
            }
            if let Ok(g) = parse_header(&page, len) {
                prop_assert!(g.file_size <= len && g.file_size <= MAX_FILE_SIZE);
                prop_assert!(g.payload_at(u64::from(g.slot_count)) <= g.file_size);
                prop_assert!(g.desc_at(u64::from(g.slot_count)) <= g.data_offset);
                prop_assert!(get_u64(&page, off::HEAD).wrapping_sub(g.base_seq) <= i64::MAX as u64);
                prop_assert!(g.name.len() <= NAME_LEN && !g.name.contains('\0'));
            }
        }
    }
}
