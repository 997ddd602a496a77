//! A read-only view of a ring: validates the file, then hands out messages in place.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::RingError;
use super::layout::{self, desc, off, Geometry};
use super::seqlock::{self, StdFence};
use super::sys::{self, Mem};
use super::HeaderInfo;

// Reader extensions for the language bindings, in their own files.
mod handle;
mod latest;
pub use handle::MessageHandle;

/// Where a new reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// The oldest message the ring still holds safely (up to `slot_count - 1` back).
    Oldest,
    /// The most recent message already published, then everything after it.
    #[default]
    Newest,
    /// Only messages published after the reader opens.
    Next,
}

/// What [`Reader::next`] returns.
#[derive(Debug)]
pub enum Recv<'r> {
    /// The next message, in place.
    Message(Message<'r>),
    /// The ring's file was replaced (a geometry change). The reader has drained the old file and
    /// now follows the new one; read [`Reader::geometry`] again before the next message.
    Reopened,
    /// Nothing arrived within the timeout.
    TimedOut,
}

/// A reader of one ring. It never writes to the ring: the mapping is `PROT_READ`, so it works on
/// a 0444 file or a read-only bind mount, and it cannot slow the writer down.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    file: File,
    // Shared, so that a `MessageHandle` (a numpy view, a C message) keeps its file mapped after
    // the reader follows a replaced file or is dropped.
    mem: Arc<Mem>,
    geometry: Geometry,
    cursor: u64,
    lost: u64,
    torn: Cell<u64>,
    delivered: u64,
    reopened: u64,
    ident: (u64, u64),
}

enum Step {
    Ready {
        n: u64,
        seen: u64,
        slot: u64,
        len: u64,
        meta: MessageMeta,
        lost_before: u64,
    },
    Empty {
        futex: u32,
    },
    Reopened,
}

#[derive(Debug, Clone, Copy)]
struct MessageMeta {
    capture_ns: u64,
    device_seq: u64,
    publish_ns: u64,
    epoch: u64,
    flags: u32,
}

impl Reader {
    /// Open and validate the ring at `path`. Nothing in the file is trusted until its header
    /// has been checked against the real file size, and a file whose blocks are not all
    /// allocated is refused ([`RingError::NotAllocated`]), so mapping it allocates nothing.
    ///
    /// # SIGBUS
    /// The ring is mapped. If the file is truncated while mapped, the next access to a page
    /// past the new end raises SIGBUS, which kills the process. An edgeplex writer never
    /// truncates a ring (it renames a new file over it), and only the writer's uid can write
    /// the ring directory it creates, so rings an agent publishes are safe to read. A program
    /// that reads rings from a directory writable by someone it does not trust must either
    /// accept that risk or install a handler: [`crate::exit_on_sigbus`] turns the signal into
    /// a one-line message and an exit code (what the `edgeplex` tools do).
    pub fn open(path: &Path, start: Start) -> Result<Reader, RingError> {
        let (file, geometry) = open_validated(path)?;
        let mem =
            Arc::new(Mem::map_ro(&file, geometry.file_size, true).map_err(|e| map_err(path, e))?);
        let meta = file
            .metadata()
            .map_err(|e| RingError::io("stat", path, e))?;
        let mut r = Reader {
            path: path.to_path_buf(),
            file,
            mem,
            geometry,
            cursor: 0,
            lost: 0,
            torn: Cell::new(0),
            delivered: 0,
            reopened: 0,
            ident: (meta.dev(), meta.ino()),
        };
        let head = r.head();
        let (base, count) = (r.geometry.base_seq, r.geometry.slot_count);
        r.cursor = match start {
            Start::Oldest => seqlock::oldest(head, base, count),
            Start::Newest if head != base => head.wrapping_sub(1),
            Start::Newest | Start::Next => head,
        };
        Ok(r)
    }

    /// The next message, waiting up to `timeout` for one. Messages the writer overwrote before
    /// this reader got to them are skipped and counted ([`Message::lost_before`], [`Reader::lost`]).
    pub fn next(&mut self, timeout: Duration) -> Result<Recv<'_>, RingError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.step()? {
                Step::Ready {
                    n,
                    seen,
                    slot,
                    len,
                    meta,
                    lost_before,
                } => {
                    return Ok(Recv::Message(Message {
                        reader: self,
                        n,
                        seen,
                        slot,
                        len,
                        meta,
                        lost_before,
                    }))
                }
                Step::Reopened => return Ok(Recv::Reopened),
                Step::Empty { futex } => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(Recv::TimedOut);
                    }
                    let word = self.mem.u32_at(off::FUTEX as u64);
                    sys::futex_wait(word, futex, deadline - now);
                }
            }
        }
    }

    /// The next message if one is ready, without waiting.
    pub fn try_next(&mut self) -> Result<Recv<'_>, RingError> {
        self.next(Duration::ZERO)
    }

    fn step(&mut self) -> Result<Step, RingError> {
        let mut lost_before = 0;
        loop {
            // SYNC POINT: acquire on the futex word before head, so a publish after this load
            // changes the value FUTEX_WAIT compares against.
            let futex = self.mem.u32_at(off::FUTEX as u64).load(Ordering::Acquire);
            // SYNC POINT: acquire, pairs with the release in `retire`; the head loaded after it
            // is the old file's final head.
            let state = self.mem.u32_at(off::STATE as u64).load(Ordering::Acquire);
            let head = self.head();
            let g = &self.geometry;
            let p = seqlock::plan(self.cursor, head, g.base_seq, g.slot_count);
            self.cursor = p.next;
            self.lost += p.lost;
            lost_before += p.lost;
            if self.cursor == head {
                if state & layout::STATE_RETIRED != 0 && self.reopen()? {
                    return Ok(Step::Reopened);
                }
                return Ok(Step::Empty { futex });
            }
            let n = self.cursor;
            let slot = n % u64::from(g.slot_count);
            let d = g.desc_at(slot);
            let m = &self.mem;
            let seq = m.u64_at(d + desc::SEQ as u64);
            self.cursor = n.wrapping_add(1);
            let Some(seen) = seqlock::read_begin(seq, n) else {
                // Overwritten between our head load and now.
                self.lost += 1;
                lost_before += 1;
                continue;
            };
            // Relaxed: validated by the seqlock below.
            let len = m.u64_at(d + desc::LEN as u64).load(Ordering::Relaxed);
            let meta = MessageMeta {
                capture_ns: m
                    .u64_at(d + desc::CAPTURE_NS as u64)
                    .load(Ordering::Relaxed),
                device_seq: m
                    .u64_at(d + desc::DEVICE_SEQ as u64)
                    .load(Ordering::Relaxed),
                publish_ns: m
                    .u64_at(d + desc::PUBLISH_NS as u64)
                    .load(Ordering::Relaxed),
                epoch: m.u64_at(d + desc::EPOCH as u64).load(Ordering::Relaxed),
                flags: m.u32_at(d + desc::FLAGS as u64).load(Ordering::Relaxed),
            };
            if !seqlock::read_validate::<_, StdFence>(seq, seen) || len > g.slot_size {
                // Torn while reading the descriptor, or a length no sound writer stores.
                self.lost += 1;
                lost_before += 1;
                continue;
            }
            self.delivered += 1;
            return Ok(Step::Ready {
                n,
                seen,
                slot,
                len,
                meta,
                lost_before,
            });
        }
    }

    /// Follow the path to the file that replaced ours. `false` if the path still holds this
    /// very file (nothing to switch to yet).
    fn reopen(&mut self) -> Result<bool, RingError> {
        let mut next = Reader::open(&self.path, Start::Next)?;
        if next.ident == self.ident {
            return Ok(false);
        }
        // Message numbers continue across files: keep our cursor; `plan` starts it at the new
        // file's base and counts anything we missed.
        next.cursor = self.cursor;
        next.lost = self.lost;
        next.torn = Cell::new(self.torn.get());
        next.delivered = self.delivered;
        next.reopened = self.reopened + 1;
        *self = next;
        Ok(true)
    }

    fn head(&self) -> u64 {
        seqlock::read_head(self.mem.u64_at(off::HEAD as u64))
    }

    /// The ring's layout (changes after [`Recv::Reopened`]).
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The number of the next message this reader will look at.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Where the payload of the message at [`Reader::cursor`] will be, in place: the slot the
    /// writer publishes the next message into. Nothing is read through it; a binding that
    /// prepares an object per slot (a numpy view) before it waits compares it with
    /// [`MessageHandle::as_ptr`](crate::MessageHandle::as_ptr) after the wait.
    pub fn upcoming_payload(&self) -> *const u8 {
        let g = &self.geometry;
        let slot = self.cursor % u64::from(g.slot_count);
        self.mem.ptr_at(g.payload_at(slot), g.slot_size)
    }

    /// Messages lost so far: skipped because the writer lapped this reader, plus messages found
    /// torn after use ([`Message::finish`]).
    pub fn lost(&self) -> u64 {
        self.lost + self.torn.get()
    }

    /// Messages delivered intact so far: handed out, minus those found torn after use
    /// ([`Message::finish`]). `delivered() + lost()` counts every message the cursor passed.
    pub fn delivered(&self) -> u64 {
        self.delivered - self.torn.get()
    }

    /// How many times the reader followed a replaced file.
    pub fn reopened(&self) -> u64 {
        self.reopened
    }

    /// Path of the ring.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a writer holds the ring's lock now. Works across PID namespaces.
    pub fn writer_alive(&self) -> bool {
        sys::writer_lock_held(&self.file).unwrap_or(false)
    }

    /// A snapshot of the header's live fields.
    pub fn info(&self) -> HeaderInfo {
        super::header_info(&self.file, &self.mem, self.geometry.clone())
    }
}

/// One message in the ring, not yet copied.
///
/// # The rule for using the payload
/// The payload lives in memory the writer (another process) owns and may overwrite at any
/// time: as soon as it laps this reader, possibly while the bytes are being read. So this type
/// never hands out a `&[u8]` over it (Rust may assume such memory does not change, and it does).
/// Two ways to get at the bytes:
///
/// - [`Message::copy_to`] (or [`Message::copy_into`]) copies them with a byte-wise atomic
///   memcpy and then checks the seqlock: `true` means the copy is exactly what was published.
/// - In place, with no copy: [`Message::as_ptr`] and [`Message::len`]. The pointer is valid for
///   reads of `len()` bytes for as long as this `Message` (and so its [`Reader`]) lives; its
///   contents are guaranteed only until the writer laps the reader. Read through the pointer
///   with volatile or atomic loads, or hand it to code outside Rust (a C or numpy consumer),
///   then call [`Message::finish`] (or [`Message::is_intact`]): if it returns `false`, the
///   writer changed the bytes meanwhile, and everything derived from them must be discarded.
///   Never write through the pointer: the mapping is read-only and a write kills the process.
///
/// Library users reading rings from a directory they do not trust should also read
/// [`Reader::open`]'s note on SIGBUS.
#[derive(Debug)]
pub struct Message<'r> {
    reader: &'r Reader,
    n: u64,
    seen: u64,
    slot: u64,
    len: u64,
    meta: MessageMeta,
    lost_before: u64,
}

impl Message<'_> {
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

    /// The device's sequence number.
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

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Messages lost between the previous message this reader returned and this one.
    pub fn lost_before(&self) -> u64 {
        self.lost_before
    }

    /// The first byte of the payload in the read-only mapping, valid for reads of
    /// [`Message::len`] bytes while this message lives. See the type's documentation for the
    /// rule: the bytes may change under you; check [`Message::finish`] after use.
    pub fn as_ptr(&self) -> *const u8 {
        let g = &self.reader.geometry;
        self.reader.mem.ptr_at(g.payload_at(self.slot), self.len)
    }

    /// Copy the payload into `dst` (which must be exactly [`Message::len`] bytes) with a
    /// byte-wise atomic memcpy. The copy is meaningful only if [`Message::finish`] returns
    /// `true` afterwards.
    ///
    /// # Panics
    /// If `dst.len() != self.len()`.
    pub fn copy_into(&self, dst: &mut [u8]) {
        assert_eq!(
            dst.len(),
            self.len(),
            "copy_into needs a buffer of len() bytes"
        );
        let g = &self.reader.geometry;
        self.reader.mem.copy_out(g.payload_at(self.slot), dst);
    }

    /// Copy the first `dst.len()` bytes of the payload (at most [`Message::len`]) into `dst`
    /// with a byte-wise atomic memcpy, e.g. to look at a tag before deciding to copy the rest.
    /// Meaningful only if [`Message::finish`] returns `true` afterwards.
    ///
    /// # Panics
    /// If `dst` is longer than the payload.
    pub fn copy_into_prefix(&self, dst: &mut [u8]) {
        assert!(dst.len() <= self.len(), "prefix longer than the payload");
        let g = &self.reader.geometry;
        self.reader.mem.copy_out(g.payload_at(self.slot), dst);
    }

    /// Whether the writer has not touched this message's slot since it was handed out.
    pub fn is_intact(&self) -> bool {
        let d = self.reader.geometry.desc_at(self.slot);
        seqlock::read_validate::<_, StdFence>(
            self.reader.mem.u64_at(d + desc::SEQ as u64),
            self.seen,
        )
    }

    /// End use of the message: `true` if it stayed intact. A torn message counts as lost.
    pub fn finish(self) -> bool {
        let ok = self.is_intact();
        if !ok {
            self.reader.torn.set(self.reader.torn.get() + 1);
        }
        ok
    }

    /// Copy the payload into `out` (replacing its contents) and return whether the copy is
    /// intact. A torn copy counts as lost.
    pub fn copy_to(self, out: &mut Vec<u8>) -> bool {
        out.clear();
        out.resize(self.len as usize, 0);
        self.copy_into(out);
        self.finish()
    }
}

/// Open `path` read-only and validate its header against its real size, without mapping it.
pub(super) fn open_validated(path: &Path) -> Result<(File, Geometry), RingError> {
    // O_NONBLOCK: a FIFO at the path must be refused below, not block this open forever. It has
    // no effect on regular files.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => RingError::PermissionDenied {
                op: "open",
                path: path.to_path_buf(),
                hint: "readers need read permission: run the pod with the ring's group \
                   (securityContext.supplementalGroups) or ask the agent for mode 0644",
            },
            _ => RingError::io("open", path, e),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| RingError::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(RingError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let len = meta.len();
    let mut page = vec![0u8; layout::HEADER_SIZE.min(len) as usize];
    file.read_exact_at(&mut page, 0)
        .map_err(|e| RingError::io("read", path, e))?;
    let geometry = layout::parse_header(&page, len).map_err(|reason| RingError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })?;
    // A sparse ring on tmpfs (holes the writer never allocated) would make this reader's
    // mapping allocate pages, charged to the reader, up to the size the header claims.
    let allocated = meta.blocks().saturating_mul(512);
    if allocated < geometry.file_size && super::sys::fd_is_memory_fs(&file) {
        return Err(RingError::NotAllocated {
            path: path.to_path_buf(),
            allocated,
            size: geometry.file_size,
        });
    }
    Ok((file, geometry))
}

fn map_err(path: &Path, e: std::io::Error) -> RingError {
    RingError::io("map", path, e)
}
