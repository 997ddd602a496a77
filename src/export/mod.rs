//! `edgeplex export`: copy the messages of a window out of a ring into files, optionally upload
//! them with HTTP PUT, and remember where the export stopped.
//!
//! Built for scheduled runs (a Kubernetes CronJob, a systemd timer): each run reads what the ring
//! holds *now* (up to the `head` it sees at start, never waiting for more) and stops. It is only a
//! [`Reader`], so it can never slow or block the writer.
//!
//! # Window
//! - `--since-last` (the default when `--state` is given): every message after the last one the
//!   previous run exported. Message numbers continue across writer restarts and geometry
//!   changes, so "after" is exact: nothing duplicated, nothing skipped, as long as the ring still
//!   holds the messages. Messages no longer in the ring (the writer lapped the exporter between
//!   runs, or overwrote or tore a message while it was being copied) are **gaps**: counted, logged,
//!   listed in the summary and written as `{"type":"gap",...}` lines into the output.
//! - `--since DURATION` (`10s`, `30m`, `1h`, `2d`, `500ms`): every message the ring still holds
//!   whose `publish_ns` (CLOCK_REALTIME) is at most that long ago. A gap is counted there only
//!   when it lies inside the window (it is followed by a message inside the window, or at the
//!   tail).
//! - neither: everything the ring holds.
//!
//! # Output (`--out DIR`)
//! Files are named after the ring file's stem (`<stream>`) and the window `[from, to)`:
//! - `--format jsonl` (default for `bytes` and `serial` rings): `<stream>-<from>-<to>.jsonl`, one
//!   JSON object per line: `{"type":"sample","seq","epoch","device_seq","capture_ns",
//!   "publish_ns","flags","len","encoding","payload"}` where `encoding` is `"utf8"` (payload is the
//!   text itself) or `"base64"` (RFC 4648 standard alphabet, with padding) when the payload is
//!   not valid UTF-8; and `{"type":"gap","from_seq","to_seq","count","reason"}` for lost ranges.
//! - `--format frames` (default for `video` rings): one file per frame, `<stream>-<seq>.<ext>`
//!   (`ext` from the fourcc: `jpg` for MJPG/JPEG, else the lower-case fourcc, `bin` if none),
//!   plus the index `<stream>-<from>-<to>.index.jsonl` with one line per frame
//!   (`{"type":"frame","file","seq","epoch","device_seq","capture_ns","publish_ns","flags","len",
//!   "width","height","fourcc","stride"}`) and the same gap lines.
//!
//! Every file is written to a temporary name, synced and renamed, so a reader of `DIR` never sees
//! half a file. A window that holds no message and no gap writes no file.
//!
//! # Upload (`--upload http://host[:port]/path`)
//! Each file is sent with `PUT <path>/<file name>` over plain HTTP/1.1 (no TLS: put a
//! TLS-terminating proxy or sidecar in front for remote servers), with `Content-Length` and
//! `X-Edgeplex-Fnv1a64: <16 lower-case hex digits>`, the 64-bit FNV-1a hash of the body
//! (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`). Frames go first and the index
//! last, so an index on the server means its frames are there. Connection errors, 5xx, 408 and
//! 429 are retried `--retries` times with exponential backoff (100 ms, doubling, at most 5 s);
//! other statuses fail at once. A failed upload exits 1 and leaves the state file unchanged, so
//! the next run exports and uploads the same window again (the same file names, if the ring has
//! not moved on).
//!
//! # State (`--state FILE`)
//! A small JSON object, written (temporary file, fsync, rename) only after every output file was
//! written and uploaded:
//! `{"version":1,"ring":PATH,"stream":NAME,"created_ns":N,"base_seq":N,"next_seq":N,
//! "last_seq":N|null,"last_epoch":N|null,"updated_ns":N}`. `next_seq` is the first message the
//! next run exports; `last_seq` and `last_epoch` are the number and writer epoch of the last
//! message exported so far. `created_ns` and `base_seq` identify the ring file: when the ring was
//! re-created from scratch (its numbering restarted below `next_seq`), the next run starts over
//! at the new file's first message and reports `"reset":true`.
//!
//! A run holds an exclusive lock on `FILE.lock` (created next to it), so two runs with one
//! state file cannot export the same window twice: the second exits 1 at once.
//!
//! # Summary
//! One JSON object on stdout: `ring`, `stream`, `format`, `mode`, `from_seq`, `to_seq` (the window
//! is `[from_seq, to_seq)`), `exported`, `gaps` (messages lost), `gap_ranges`, `files`,
//! `uploaded`, `reset`, `state`, `duration` (seconds).
//!
//! # Exit codes
//! 0 success; 64 usage error (bad `--since`, missing `--out`, unusable state file); 66 ring
//! missing or corrupt; 1 anything else, notably a failed upload.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

mod sink;
mod state;
mod upload;

use sink::{sanitize, Record, Sink};
use state::{load_state, lock_state, save_state};
pub use upload::HttpUrl;
use upload::Uploader;

use crate::ring::{self, Reader, Recv, Start, StreamKind};
use crate::settings::ConfigError;

/// `edgeplex export`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Ring file to export, e.g. /dev/shm/snap.edgeplex.rings/cam0/cam0.ring.
    pub ring: PathBuf,
    /// Directory to write the files to (created if missing). Required.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Export the messages published within this duration before now: 500ms, 10s, 30m, 1h, 2d.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Export every message after the last exported one (needs --state; the default with it).
    #[arg(long)]
    pub since_last: bool,
    /// State file: where the last export stopped. Updated only after a fully successful run.
    #[arg(long, env = "EDGEPLEX_EXPORT_STATE", value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Upload every file with HTTP PUT to URL/<file name> (http:// only).
    #[arg(long, value_name = "URL")]
    pub upload: Option<String>,
    /// Retries per file after a failed upload attempt.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Total time one upload attempt may take (connect, send, response), in seconds: a server
    /// that trickles its answer cannot hold an attempt longer. Then it counts as failed.
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
    pub attempt_timeout: f64,
    /// Output format: jsonl for samples, frames for video (auto picks by the ring's kind).
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
}

/// Output format of `edgeplex export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `frames` for video rings, `jsonl` for the others.
    Auto,
    /// One JSON line per message, payload inline.
    Jsonl,
    /// One file per message plus a JSON-lines index.
    Frames,
}

/// What a state file holds. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportState {
    /// Format version of the state file, 1.
    pub version: u32,
    /// The ring the state belongs to.
    pub ring: PathBuf,
    /// Stream name from the ring header.
    pub stream: String,
    /// `created_ns` of the ring file last exported from.
    pub created_ns: u64,
    /// `base_seq` of the ring file last exported from.
    pub base_seq: u64,
    /// First message number the next run exports.
    pub next_seq: u64,
    /// Number of the last message exported so far.
    pub last_seq: Option<u64>,
    /// Writer epoch of the last message exported so far.
    pub last_epoch: Option<u64>,
    /// When the state was written, CLOCK_REALTIME nanoseconds.
    pub updated_ns: u64,
}

/// A run of lost messages `[from_seq, to_seq)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// First lost message.
    pub from_seq: u64,
    /// One past the last lost message.
    pub to_seq: u64,
    /// `to_seq - from_seq`.
    pub count: u64,
    /// `overwritten` (no longer in the ring) or `torn` (overwritten while being copied).
    pub reason: &'static str,
}

/// The JSON summary `edgeplex export` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Ring path.
    pub ring: PathBuf,
    /// Stream name.
    pub stream: String,
    /// `jsonl` or `frames`.
    pub format: &'static str,
    /// `since-last`, `since` or `all`.
    pub mode: &'static str,
    /// First message of the window.
    pub from_seq: u64,
    /// One past the last message of the window (the ring's head at start).
    pub to_seq: u64,
    /// Messages written.
    pub exported: u64,
    /// Messages of the window that were lost.
    pub gaps: u64,
    /// The lost ranges.
    pub gap_ranges: Vec<Gap>,
    /// Files written, in upload order.
    pub files: Vec<String>,
    /// Files uploaded.
    pub uploaded: u64,
    /// The state file's ring was re-created from scratch; the export started over.
    pub reset: bool,
    /// The state file, if any.
    pub state: Option<PathBuf>,
    /// Seconds the run took.
    pub duration: f64,
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(ConfigError(msg))
}

/// Parse a duration such as `500ms`, `10s`, `30m`, `1h` or `2d` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

/// `edgeplex export RING --out DIR ...`
pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let out_dir = args.out.clone().ok_or_else(|| {
        usage("export: --out DIR is required: give the directory to write the files to".into())
    })?;
    let cutoff = match &args.since {
        Some(s) => {
            let d = parse_duration(s).ok_or_else(|| {
                usage(format!(
                    "export: --since {s:?} is not a duration; use a number with ms, s, m, h or d, e.g. --since 1h"
                ))
            })?;
            Some(ring::realtime_ns().saturating_sub(d.as_nanos().min(u128::from(u64::MAX)) as u64))
        }
        None => None,
    };
    if cutoff.is_some() && args.since_last {
        return Err(usage(
            "export: --since and --since-last exclude each other; pass one".into(),
        ));
    }
    if args.since_last && args.state.is_none() {
        return Err(usage(
            "export: --since-last needs --state FILE to know where the last export stopped".into(),
        ));
    }
    let attempt_timeout = Some(args.attempt_timeout)
        .filter(|t| t.is_finite() && *t > 0.0 && *t <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            usage(format!(
                "export: --attempt-timeout {} is not a number of seconds in (0, 86400]",
                args.attempt_timeout
            ))
        })?;
    crate::ring::exit_on_sigbus(
        &format!(
            "edgeplex: ring file {} was truncated while being exported (not by an edgeplex \
             writer, which never truncates); the ring is not usable",
            crate::ringtool::printable(&args.ring.to_string_lossy())
        ),
        crate::EXIT_NOINPUT,
    )
    .context("install the SIGBUS handler")?;
    let url = match &args.upload {
        Some(u) => Some(HttpUrl::parse(u).ok_or_else(|| {
            usage(format!(
                "export: --upload {u:?} is not an http://host[:port]/path URL (TLS is not supported: use a local TLS proxy)"
            ))
        })?),
        None => None,
    };
    // One exporter per state file at a time: a second one would export the same window twice.
    let _lock = match &args.state {
        Some(p) => Some(lock_state(p)?),
        None => None,
    };
    let prev = match &args.state {
        Some(p) => load_state(p)?,
        None => None,
    };
    if let Some(st) = &prev {
        if st.ring != args.ring {
            return Err(usage(format!(
                "export: state file {} belongs to ring {}, not {}; use one state file per ring",
                args.state.as_deref().unwrap_or(Path::new("")).display(),
                st.ring.display(),
                args.ring.display()
            )));
        }
    }

    let mut reader = Reader::open(&args.ring, Start::Oldest)?;
    let info = reader.info();
    let g = reader.geometry().clone();
    let end = info.head;
    let oldest = reader.cursor();
    let format = match (args.format, g.kind) {
        (Format::Auto, StreamKind::Video) | (Format::Frames, _) => Format::Frames,
        _ => Format::Jsonl,
    };
    let stream = sanitize(
        &args
            .ring
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| g.name.clone()),
    );

    // Where the window starts.
    let mut reset = false;
    let (mode, from) = match (&prev, cutoff) {
        (_, Some(_)) => ("since", oldest),
        (Some(st), None) => {
            let recreated = (st.created_ns != g.created_ns && g.base_seq < st.next_seq)
                || before(end, st.next_seq);
            if recreated {
                tracing::warn!(ring = %args.ring.display(), state_next_seq = st.next_seq, head = end,
                    "the ring was re-created since the last export; starting over at its first message");
                reset = true;
                ("since-last", g.base_seq)
            } else {
                ("since-last", st.next_seq)
            }
        }
        (None, None) if args.state.is_some() => ("since-last", oldest),
        (None, None) => ("all", oldest),
    };

    fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create output directory {}", out_dir.display()))?;
    let prefix = format!("{stream}-{from}-{end}");
    let mut sink = Sink::new(&out_dir, &stream, &prefix, format)?;

    let Copied {
        exported,
        gaps,
        last,
    } = copy_window(&mut reader, &mut sink, from, end, cutoff, prev.as_ref())?;
    let total_gaps: u64 = gaps.iter().map(|g| g.count).sum();
    for gp in &gaps {
        tracing::warn!(ring = %args.ring.display(), from_seq = gp.from_seq, to_seq = gp.to_seq,
            count = gp.count, reason = gp.reason, "messages lost before they could be exported");
    }
    let files = sink.finish(exported + gaps.len() as u64 > 0)?;

    let mut uploaded = 0u64;
    if let Some(url) = url {
        let uploader = Uploader::new(url, args.retries, attempt_timeout)?;
        for name in &files {
            uploader.upload(&out_dir.join(name), name).with_context(|| {
                format!(
                    "upload of {name} to {} failed; the state is unchanged, so the next run retries this window",
                    args.upload.as_deref().unwrap_or_default()
                )
            })?;
            uploaded += 1;
        }
    }

    if let Some(path) = &args.state {
        let st = ExportState {
            version: 1,
            ring: args.ring.clone(),
            stream: g.name.clone(),
            created_ns: reader.geometry().created_ns,
            base_seq: reader.geometry().base_seq,
            next_seq: end,
            last_seq: last.map(|l| l.0),
            last_epoch: last.map(|l| l.1),
            updated_ns: ring::realtime_ns(),
        };
        save_state(path, &st)?;
    }

    let summary = Summary {
        ring: args.ring.clone(),
        stream: g.name,
        format: match format {
            Format::Frames => "frames",
            _ => "jsonl",
        },
        mode,
        from_seq: from,
        to_seq: end,
        exported,
        gaps: total_gaps,
        gap_ranges: gaps,
        files,
        uploaded,
        reset,
        state: args.state.clone(),
        duration: started.elapsed().as_secs_f64(),
    };
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, &summary)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// What [`copy_window`] copied.
struct Copied {
    exported: u64,
    gaps: Vec<Gap>,
    /// Number and epoch of the last message exported so far (by any run).
    last: Option<(u64, u64)>,
}

/// Copy the messages `[from, end)` the reader still holds into `sink` (those published at or
/// after `cutoff`, if given), and account for every one that is gone as a gap.
fn copy_window(
    reader: &mut Reader,
    sink: &mut Sink,
    from: u64,
    end: u64,
    cutoff: Option<u64>,
    prev: Option<&ExportState>,
) -> anyhow::Result<Copied> {
    let mut next = from; // first message of the window not yet accounted for
    let mut pending_gap: Option<(u64, u64)> = None; // since mode: a gap waiting for a verdict
    let mut gaps: Vec<Gap> = Vec::new();
    let mut exported = 0u64;
    let mut last: Option<(u64, u64)> = prev.and_then(|s| s.last_seq.zip(s.last_epoch));
    let mut buf = Vec::new();
    loop {
        let msg = match reader.try_next()? {
            Recv::Message(m) => m,
            Recv::Reopened => continue,
            Recv::TimedOut => break,
        };
        let n = msg.seq();
        if before(n, from) {
            continue; // exported by an earlier run
        }
        if !before(n, end) {
            break; // published after this run started: the next run's
        }
        let lost = n.wrapping_sub(next);
        if lost > 0 {
            pending_gap = Some((next, n));
        }
        next = n.wrapping_add(1);
        let in_window = cutoff.is_none_or(|c| msg.publish_ns() >= c);
        if let Some((a, b)) = pending_gap.take() {
            if in_window {
                gaps.push(sink.gap(a, b, "overwritten")?);
            }
        }
        if !in_window {
            continue;
        }
        let meta = Record {
            seq: n,
            epoch: msg.epoch(),
            device_seq: msg.device_seq(),
            capture_ns: msg.capture_ns(),
            publish_ns: msg.publish_ns(),
            flags: msg.flags(),
        };
        if !msg.copy_to(&mut buf) {
            gaps.push(sink.gap(n, n.wrapping_add(1), "torn")?);
            continue;
        }
        sink.message(&meta, &buf, reader.geometry())?;
        exported += 1;
        last = Some((n, meta.epoch));
    }
    if next != end {
        gaps.push(sink.gap(next, end, "overwritten")?);
    }
    Ok(Copied {
        exported,
        gaps,
        last,
    })
}

/// `a` comes before `b` in message order (wrapping arithmetic, as RING.md requires).
fn before(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) < 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        for bad in ["", "h", "1x", "-1s", "1.5h", "99999999999999999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn order_wraps() {
        assert!(before(1, 2));
        assert!(!before(2, 2));
        assert!(before(u64::MAX, 0));
    }
}
