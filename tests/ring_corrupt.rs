//! Corrupt, hostile and wrong files: every one gives a typed error, never a panic, a crash or
//! a hang, through the library (`Reader::open`, `ring::inspect`) and through the CLI
//! (`edgeplex ring inspect` / `ring cat`: a non-zero exit code, 66 for a corrupt or missing
//! ring, and exactly one line on stderr that names the file).
//!
//! Each corrupt file starts as a valid ring written by the real `Writer`, which is then dropped
//! and patched with `std::fs` at the offsets of `edgeplex::ring::layout::off`.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use edgeplex::ring::layout::{self, desc, off, HeaderError};
use edgeplex::ring::{
    self, CreateOptions, Reader, Recv, RingError, RingSpec, Start, StreamKind, Writer,
};

const SLOTS: u32 = 4;
const SLOT_SIZE: u64 = 4096;
const MAX_LEN: usize = 4096;

/// A valid ring of 4 slots holding 3 messages, with no writer. Returns its path and epoch.
fn valid_ring(dir: &tempfile::TempDir) -> (PathBuf, u64) {
    let path = ring_path(dir, "bad");
    let spec = RingSpec {
        name: "bad".into(),
        kind: StreamKind::Serial,
        slot_count: SLOTS,
        slot_size: SLOT_SIZE,
        video: None,
    };
    let mut w = Writer::open(&path, &spec, &CreateOptions::default()).expect("writer");
    let epoch = w.epoch();
    for n in 0..3 {
        w.publish(&payload(n, epoch, MAX_LEN), meta_for(n, epoch))
            .expect("publish");
    }
    drop(w);
    (path, epoch)
}

fn patch(path: &Path, at: usize, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(bytes, at as u64).expect("patch");
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// Run `edgeplex ARGS...` to completion under a watchdog.
fn run_cli(name: &str, args: &[&str], path: &Path) -> (Option<i32>, String, Vec<String>) {
    let mut cmd = edgeplex();
    cmd.args(args).arg(path);
    let mut p = Proc::spawn(name, cmd);
    let status = p.wait();
    assert_eq!(
        status.signal(),
        None,
        "{name} on {}: killed by a signal (crash)",
        path.display()
    );
    (status.code(), p.stderr(), p.seen.clone())
}

/// Both CLI readers refuse `path` with exit code `code` and one stderr line naming the file.
fn cli_refuses(path: &Path, code: i32) {
    for args in [
        &["ring", "inspect"][..],
        &["ring", "inspect", "--json"][..],
        &["ring", "cat", "--meta", "--hash", "--from", "oldest"][..],
    ] {
        let what = args.join(" ");
        let (got, stderr, stdout) = run_cli(&what, args, path);
        assert_eq!(
            got,
            Some(code),
            "edgeplex {what} {}: exit code (101 would be a panic)\nstderr: {stderr}",
            path.display()
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "edgeplex {what} {}: want exactly one stderr line, got:\n{stderr}",
            path.display()
        );
        assert!(
            lines[0].contains(&path.display().to_string()),
            "edgeplex {what}: the error does not name the file: {stderr}"
        );
        assert!(
            stdout.is_empty(),
            "edgeplex {what}: printed {stdout:?} on stdout"
        );
    }
}

/// The library refuses `path` with `Corrupt { path, reason }` where `reason` is `want`
/// (compared by `matches`), from both entry points; and the CLI exits 66.
fn refuses_as_corrupt(path: &Path, what: &str, want: impl Fn(&HeaderError) -> bool) {
    let results = [
        ("Reader::open", Reader::open(path, Start::Oldest).map(drop)),
        ("inspect", ring::inspect(path).map(drop)),
    ];
    for (api, r) in results {
        match r {
            Err(RingError::Corrupt { path: p, reason }) => {
                assert_eq!(p, path, "{what}: {api} names another path");
                assert!(
                    want(&reason),
                    "{what}: {api} gave the wrong HeaderError: {reason:?}"
                );
            }
            other => panic!("{what}: {api}: expected RingError::Corrupt, got {other:?}"),
        }
    }
    cli_refuses(path, i32::from(edgeplex::EXIT_NOINPUT));
}

/// Patch a valid ring with `f`, then expect `want`.
fn corrupt_case(what: &str, f: impl FnOnce(&Path), want: impl Fn(&HeaderError) -> bool) {
    let dir = shm_dir();
    let (path, _) = valid_ring(&dir);
    f(&path);
    refuses_as_corrupt(&path, what, want);
}

#[test]
fn the_valid_ring_itself_is_accepted() {
    let dir = shm_dir();
    let (path, epoch) = valid_ring(&dir);
    let info = ring::inspect(&path).unwrap();
    assert_eq!((info.head, info.geometry.slot_count), (3, SLOTS));
    let mut r = Reader::open(&path, Start::Oldest).unwrap();
    let Recv::Message(m) = r.try_next().unwrap() else {
        panic!("no message")
    };
    let mut got = Vec::new();
    assert!(m.copy_to(&mut got));
    assert_eq!(got, payload(0, epoch, MAX_LEN));
    let (code, stderr, stdout) = run_cli("inspect", &["ring", "inspect"], &path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stdout.is_empty());
}

#[test]
fn zero_length_file() {
    let dir = shm_dir();
    let path = ring_path(&dir, "empty");
    fs::File::create(&path).unwrap();
    refuses_as_corrupt(&path, "zero-length", |e| {
        *e == HeaderError::TooSmall { len: 0 }
    });
}

#[test]
fn file_shorter_than_the_header() {
    let dir = shm_dir();
    let (path, _) = valid_ring(&dir);
    let head = fs::read(&path).unwrap();
    let short = ring_path(&dir, "short");
    fs::write(&short, &head[..4095]).unwrap();
    refuses_as_corrupt(&short, "4095 bytes", |e| {
        *e == HeaderError::TooSmall { len: 4095 }
    });
    fs::write(&short, &head[..100]).unwrap();
    refuses_as_corrupt(&short, "100 bytes", |e| {
        *e == HeaderError::TooSmall { len: 100 }
    });
}

#[test]
fn valid_header_but_truncated_file() {
    let dir = shm_dir();
    let (path, _) = valid_ring(&dir);
    let full = file_size(&path);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full / 2)
        .unwrap();
    refuses_as_corrupt(&path, "truncated to half", |e| {
        *e == HeaderError::Truncated {
            expected: full,
            actual: full / 2,
        }
    });
}

#[test]
fn wrong_magic() {
    corrupt_case(
        "wrong magic",
        |p| patch(p, off::MAGIC, b"EDGEPLXQ"),
        |e| {
            *e == HeaderError::BadMagic {
                found: *b"EDGEPLXQ",
            }
        },
    );
}

#[test]
fn unsupported_version() {
    for v in [0u32, 2, u32::MAX] {
        corrupt_case(
            "version",
            |p| patch(p, off::VERSION, &v.to_le_bytes()),
            |e| *e == HeaderError::UnsupportedVersion { found: v },
        );
    }
}

#[test]
fn wrong_header_size() {
    corrupt_case(
        "header size",
        |p| patch(p, off::HEADER_SIZE, &8192u32.to_le_bytes()),
        |e| *e == HeaderError::BadHeaderSize { found: 8192 },
    );
}

#[test]
fn absurd_slot_counts() {
    for n in [0u32, 1, layout::MAX_SLOT_COUNT + 1, u32::MAX] {
        corrupt_case(
            &format!("slot count {n}"),
            |p| patch(p, off::SLOT_COUNT, &n.to_le_bytes()),
            |e| *e == HeaderError::BadSlotCount { found: n },
        );
    }
}

#[test]
fn bad_slot_sizes() {
    for size in [
        0u64,
        100,
        SLOT_SIZE + 1,
        layout::MAX_SLOT_SIZE + 64,
        1 << 40,
        u64::MAX,
    ] {
        corrupt_case(
            &format!("slot size {size}"),
            |p| patch(p, off::SLOT_SIZE, &size.to_le_bytes()),
            |e| *e == HeaderError::BadSlotSize { found: size },
        );
    }
}

/// `slot_count * slot_size` cannot overflow u64 once each is in range (2^20 * 2^30 = 2^50), so
/// the overflow check that matters is the 64 GiB file-size cap: largest count and largest size,
/// and an in-range pair whose product lands just past the cap.
#[test]
fn geometry_beyond_the_file_size_cap() {
    for (count, size) in [
        (layout::MAX_SLOT_COUNT, layout::MAX_SLOT_SIZE),
        (1 << 16, 1 << 20),
    ] {
        corrupt_case(
            &format!("{count} slots of {size} bytes"),
            |p| {
                patch(p, off::SLOT_COUNT, &count.to_le_bytes());
                patch(p, off::SLOT_SIZE, &size.to_le_bytes());
            },
            |e| *e == HeaderError::Overflow,
        );
    }
}

#[test]
fn unknown_stream_kind() {
    corrupt_case(
        "kind",
        |p| patch(p, off::KIND, &7u32.to_le_bytes()),
        |e| *e == HeaderError::BadKind { found: 7 },
    );
}

#[test]
fn stored_layout_disagrees_with_geometry() {
    let dir = shm_dir();
    let (path, _) = valid_ring(&dir);
    let g = ring::inspect(&path).unwrap().geometry;
    drop(dir);
    for (field, at, good) in [
        ("file size", off::FILE_SIZE, g.file_size),
        ("data offset", off::DATA_OFFSET, g.data_offset),
        ("descriptor offset", off::DESC_OFFSET, g.desc_offset),
    ] {
        for bad in [good + 4096, good - 4096, 0, u64::MAX] {
            corrupt_case(
                &format!("{field} {bad}"),
                |p| patch(p, at, &bad.to_le_bytes()),
                |e| {
                    *e == HeaderError::LayoutMismatch {
                        field,
                        expected: good,
                        found: bad,
                    }
                },
            );
        }
    }
}

#[test]
fn name_that_is_not_utf8() {
    corrupt_case(
        "name",
        |p| patch(p, off::NAME, &[0xff, 0xfe, b'x']),
        |e| *e == HeaderError::BadName,
    );
}

#[test]
fn missing_file() {
    let dir = shm_dir();
    let path = ring_path(&dir, "missing");
    for (api, r) in [
        ("Reader::open", Reader::open(&path, Start::Oldest).map(drop)),
        ("inspect", ring::inspect(&path).map(drop)),
    ] {
        match r {
            Err(RingError::NotFound { path: p }) => assert_eq!(p, path),
            other => panic!("{api}: expected NotFound, got {other:?}"),
        }
    }
    cli_refuses(&path, i32::from(edgeplex::EXIT_NOINPUT));
}

/// A directory or a device is not a ring: `RingError::NotAFile`, exit 66, one line naming the
/// path.
#[test]
fn directory_or_device_instead_of_a_ring() {
    let dir = shm_dir();
    for path in [dir.path(), Path::new("/dev/null")] {
        for (api, r) in [
            ("Reader::open", Reader::open(path, Start::Oldest).map(drop)),
            ("inspect", ring::inspect(path).map(drop)),
        ] {
            match r {
                Err(RingError::NotAFile { path: p }) => assert_eq!(p, path),
                other => panic!(
                    "{} via {api}: expected a typed refusal, got {other:?}",
                    path.display()
                ),
            }
        }
        let (code, stderr, _) = run_cli("inspect", &["ring", "inspect"], path);
        assert!(
            matches!(code, Some(c) if c != 0 && c != 101),
            "exit {code:?}: {stderr}"
        );
        let expected = code.unwrap();
        cli_refuses(path, expected);
    }
}

/// A FIFO at the ring's path (nothing writes to it) must be refused, not waited on: opening a
/// FIFO for reading blocks until a writer appears, so a reader that does not open with
/// O_NONBLOCK (or check the file type first) hangs forever.
#[test]
fn fifo_is_refused_without_hanging() {
    let dir = shm_dir();
    let fifo = ring_path(&dir, "fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());
    let (tx, rx) = mpsc::channel();
    let p = fifo.clone();
    std::thread::spawn(move || {
        let r = Reader::open(&p, Start::Oldest).map(drop);
        let _ = tx.send(format!("{r:?}"));
    });
    // Generous: a sound reader answers in microseconds.
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(r) => assert!(r.starts_with("Err("), "{r}"),
        Err(_) => {
            // Release the blocked open so the thread can finish, then fail.
            let _ = OpenOptions::new().write(true).open(&fifo);
            panic!(
                "Reader::open({}) on a FIFO is still blocked in open(2) after 10 s",
                fifo.display()
            );
        }
    }
    let (code, stderr, _) = run_cli("inspect", &["ring", "inspect"], &fifo);
    assert!(
        matches!(code, Some(c) if c != 0 && c != 101),
        "{code:?} {stderr}"
    );
}

/// A descriptor whose `len` is larger than the slot (a hostile or broken file) is skipped and
/// counted lost, never handed out, and `ring cat` carries on.
#[test]
fn hostile_descriptor_length_is_skipped_and_counted() {
    let dir = shm_dir();
    let (path, epoch) = valid_ring(&dir);
    let g = ring::inspect(&path).unwrap().geometry;
    for bad in [SLOT_SIZE + 1, u64::MAX] {
        patch(
            &path,
            (g.desc_at(1) + desc::LEN as u64) as usize,
            &bad.to_le_bytes(),
        );
        let mut r = Reader::open(&path, Start::Oldest).unwrap();
        let mut got = Vec::new();
        while let Recv::Message(m) = r.try_next().unwrap() {
            got.push((m.seq(), m.lost_before()));
            let (seq, mut bytes) = (m.seq(), Vec::new());
            assert!(m.copy_to(&mut bytes));
            assert_eq!(bytes, payload(seq, epoch, MAX_LEN));
        }
        assert_eq!(got, vec![(0, 0), (2, 1)]);
        assert_eq!((r.delivered(), r.lost(), r.cursor()), (2, 1, 3));

        let mut p = spawn_cat("cat", &path, &["--from", "oldest", "--idle-timeout", "0.2"]);
        let out = finish_cat(&mut p);
        assert_eq!(out.seqs(), vec![0, 2]);
        let c = check_stream(
            &out,
            0,
            &Expect::new(&[(epoch, MAX_LEN)]),
            Accounting::Exact,
        );
        assert_eq!((c.end.lost, c.end.cursor), (1, 3));
    }
}

#[test]
fn head_below_base_seq() {
    // A crafted base_seq above head made readers deliver a phantom message 2^64-1 that
    // reported itself intact.
    corrupt_case(
        "base_seq above head",
        |p| patch(p, off::BASE_SEQ, &10u64.to_le_bytes()),
        |e| matches!(e, HeaderError::HeadBeforeBase { head: 3, base: 10 }),
    );
}

/// Punch a hole of `len` bytes at `at` (the file keeps its size): a sparse ring.
fn punch_hole(path: &Path, at: u64, len: u64) {
    let st = Command::new("fallocate")
        .args([
            "--punch-hole",
            "--offset",
            &at.to_string(),
            "--length",
            &len.to_string(),
        ])
        .arg(path)
        .status()
        .expect("run fallocate (util-linux)");
    assert!(st.success(), "fallocate --punch-hole failed");
}

#[test]
fn a_sparse_ring_is_refused_by_readers() {
    let dir = shm_dir();
    let (path, _) = valid_ring(&dir);
    // The header stays valid; one payload slot becomes a hole, as in a crafted sparse file
    // whose header claims far more than was ever allocated.
    let size = file_size(&path);
    punch_hole(&path, size - 4096, 4096);
    for e in [
        Reader::open(&path, Start::Oldest).map(|_| ()).unwrap_err(),
        ring::inspect(&path).map(|_| ()).unwrap_err(),
    ] {
        assert!(
            matches!(&e, RingError::NotAllocated { path: p, .. } if p == &path),
            "want NotAllocated, got {e}"
        );
    }
    cli_refuses(&path, 66);
}

#[test]
fn ring_cat_survives_a_ring_truncated_under_it() {
    let dir = shm_dir();
    let (path, _) = valid_ring(&dir);
    let mut cmd = edgeplex();
    cmd.args([
        "ring",
        "cat",
        "--meta",
        "--from",
        "oldest",
        "--delay-ms",
        "4000",
    ])
    .args(["--idle-timeout", "5"])
    .arg(&path);
    let mut p = Proc::spawn("ring cat", cmd);
    // After the first message is out (cat then sleeps 4 s, ample even on a loaded machine), cut
    // the file to its header page: the next message's descriptor and payload pages are gone
    // from under the mapping.
    let first = p.next_line_within(Duration::from_secs(30));
    assert!(
        first.as_deref().is_some_and(|l| l.contains("\"seq\":0")),
        "ring cat printed {first:?} first"
    );
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(layout::HEADER_SIZE)
        .unwrap();
    let status = p.wait();
    assert_eq!(status.signal(), None, "ring cat died of a signal");
    assert_eq!(status.code(), Some(66), "stderr: {}", p.stderr());
    let stderr = p.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("truncated") && lines[0].contains(&path.display().to_string()));
}

#[test]
fn control_characters_in_names_are_escaped_for_people() {
    let dir = shm_dir();
    let evil = "x\u{1b}[2J\u{7}\nfake";
    let spec = RingSpec {
        name: evil.into(),
        kind: StreamKind::Serial,
        slot_count: SLOTS,
        slot_size: SLOT_SIZE,
        video: None,
    };
    let path = ring::ring_path(dir.path(), evil);
    drop(Writer::open(&path, &spec, &CreateOptions::default()).expect("writer"));
    for args in [&["ring", "inspect"][..], &["ring", "ls"][..]] {
        let target = if args[1] == "ls" {
            dir.path()
        } else {
            path.as_path()
        };
        let (code, stderr, stdout) = run_cli(args[1], args, target);
        assert_eq!(code, Some(0), "{stderr}");
        let text = stdout.join("\n");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "edgeplex {}: raw control characters in {text:?}",
            args.join(" ")
        );
        assert!(text.contains("\\u{1b}[2J"), "escaped name shown: {text:?}");
        assert!(
            !stdout.iter().any(|l| l.starts_with("fake")),
            "a name faked a line: {text:?}"
        );
    }
}
