//! `edgeplex ring ls | inspect | cat`: reader-side tools for operators and consumers.
//!
//! These only ever read rings; they run in consumer pods with the ring directory mounted
//! read-only.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::ring::{self, layout, HeaderInfo, Reader, Recv, Start};

/// `s` with every control character escaped (`\u{1b}`, `\n`), for text printed to a
/// terminal: a crafted stream or file name must not move the cursor, clear the screen or fake
/// lines of output.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn printable_path(p: &Path) -> String {
    printable(&p.to_string_lossy())
}

/// Rings can be truncated under their readers by anyone who can write them; a tool must then
/// fail with one line, not die of SIGBUS.
fn exit_on_truncation(path: &Path) {
    let message = format!(
        "edgeplex: ring file {} was truncated while being read (not by an edgeplex writer, \
         which never truncates); the ring is not usable",
        printable_path(path)
    );
    if let Err(e) = ring::exit_on_sigbus(&message, crate::EXIT_NOINPUT) {
        tracing::warn!(error = %e, "cannot install the SIGBUS handler");
    }
}

/// `edgeplex ring ls DIR`
pub fn ls(dir: &Path, json: bool) -> anyhow::Result<()> {
    exit_on_truncation(dir);
    let mut paths = find_rings(dir)?;
    paths.sort();
    let now = ring::realtime_ns();
    let mut out = io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:<16} {:<6} {:>6} {:>10} {:<18} {:>6} {:>12} {:<8} {:>8}",
            "STREAM", "KIND", "SLOTS", "SLOT_SIZE", "FORMAT", "EPOCH", "HEAD", "WRITER", "AGE"
        )?;
    }
    for path in &paths {
        let raw_name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = if json { raw_name } else { printable(&raw_name) };
        match ring::inspect(path) {
            Ok(info) if json => {
                let line = serde_json::json!({ "stream": name, "path": path, "header": info });
                writeln!(out, "{line}")?;
            }
            Ok(info) => {
                let g = &info.geometry;
                let format = if g.kind == layout::StreamKind::Video {
                    format!(
                        "{}x{} {}",
                        g.video.width,
                        g.video.height,
                        layout::fourcc_str(g.video.fourcc)
                    )
                } else {
                    "-".into()
                };
                let writer = match (info.retired, info.writer_alive) {
                    (true, _) => "retired",
                    (false, true) => "live",
                    (false, false) => "stopped",
                };
                writeln!(
                    out,
                    "{:<16} {:<6} {:>6} {:>10} {:<18} {:>6} {:>12} {:<8} {:>8}",
                    printable(&if g.name == name {
                        name.clone()
                    } else {
                        format!("{name} ({})", g.name)
                    }),
                    g.kind.to_string(),
                    g.slot_count,
                    g.slot_size,
                    format,
                    info.epoch,
                    info.head,
                    writer,
                    age(now, info.heartbeat_ns)
                )?;
            }
            Err(e) if json => {
                let line =
                    serde_json::json!({ "stream": name, "path": path, "error": e.to_string() });
                writeln!(out, "{line}")?;
            }
            Err(e) => writeln!(out, "{name:<16} error: {}", printable(&e.to_string()))?,
        }
    }
    if paths.is_empty() && !json {
        eprintln!("no <stream>/<stream>.ring files in {}", printable_path(dir));
    }
    Ok(())
}

/// The rings of a ring directory: `<dir>/<stream>/<stream>.ring` for every stream directory,
/// plus any `<dir>/<stream>.ring` an agent from before per-stream directories left.
fn find_rings(dir: &Path) -> Result<Vec<PathBuf>, ring::RingError> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ring::RingError::io("list", dir, e))? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        // file_type does not follow symlinks: a symlinked stream directory is not listed.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            let stream = entry.file_name();
            let mut file = stream.clone();
            file.push(".");
            file.push(ring::RING_SUFFIX);
            let candidate = path.join(file);
            if candidate.exists() {
                paths.push(candidate);
            }
        } else if path.extension().is_some_and(|x| x == ring::RING_SUFFIX) {
            paths.push(path);
        }
    }
    Ok(paths)
}

fn age(now: u64, then: u64) -> String {
    if then == 0 || then > now {
        return "-".into();
    }
    let secs = (now - then) as f64 / 1e9;
    match secs {
        s if s < 1.0 => format!("{:.0}ms", s * 1e3),
        s if s < 120.0 => format!("{s:.1}s"),
        s if s < 7200.0 => format!("{:.0}m", s / 60.0),
        s => format!("{:.0}h", s / 3600.0),
    }
}

/// `edgeplex ring inspect PATH`
pub fn inspect(path: &Path, json: bool) -> anyhow::Result<()> {
    exit_on_truncation(path);
    let info = ring::inspect(path)?;
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
        return Ok(());
    }
    write_info(&mut out, path, &info)?;
    Ok(())
}

fn write_info(out: &mut impl Write, path: &Path, info: &HeaderInfo) -> io::Result<()> {
    let g = &info.geometry;
    writeln!(out, "path:         {}", printable_path(path))?;
    writeln!(out, "format:       edgeplex ring v{}", layout::VERSION)?;
    writeln!(out, "stream:       {}", printable(&g.name))?;
    writeln!(out, "kind:         {}", g.kind)?;
    writeln!(
        out,
        "slots:        {} x {} bytes",
        g.slot_count, g.slot_size
    )?;
    writeln!(
        out,
        "layout:       descriptors at {}, data at {}, file {} bytes",
        g.desc_offset, g.data_offset, g.file_size
    )?;
    if g.kind == layout::StreamKind::Video {
        let v = &g.video;
        writeln!(
            out,
            "video:        {}x{} {} stride {}",
            v.width,
            v.height,
            layout::fourcc_str(v.fourcc),
            v.stride
        )?;
    }
    writeln!(out, "created_ns:   {}", g.created_ns)?;
    writeln!(out, "base_seq:     {}", g.base_seq)?;
    writeln!(out, "head:         {}", info.head)?;
    writeln!(out, "epoch:        {}", info.epoch)?;
    writeln!(
        out,
        "writer:       {} (pid {})",
        if info.writer_alive { "live" } else { "none" },
        info.writer_pid
    )?;
    writeln!(
        out,
        "heartbeat:    {} ago",
        age(ring::realtime_ns(), info.heartbeat_ns)
    )?;
    writeln!(out, "retired:      {}", info.retired)
}

/// `edgeplex ring cat`
#[derive(Debug, clap::Args)]
pub struct CatArgs {
    /// Ring file.
    pub path: PathBuf,
    /// Stop after this many messages.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Where to start.
    #[arg(long, value_enum, default_value_t = From::Newest)]
    pub from: From,
    /// Print one JSON line of metadata per message instead of the payload, and a final
    /// `{"event":"end",...}` line with the delivered and lost totals.
    #[arg(long)]
    pub meta: bool,
    /// With --meta, add an FNV-1a 64-bit hash of each payload (`fnv1a64`).
    #[arg(long, requires = "meta")]
    pub hash: bool,
    /// Stop when no message arrives for this many seconds (default: wait forever).
    #[arg(long)]
    pub idle_timeout: Option<f64>,
    /// Write raw video or byte payloads even when stdout is a terminal.
    #[arg(long)]
    pub force: bool,
    /// Sleep this many milliseconds after each message (to play a slow consumer).
    #[arg(long, hide = true, default_value_t = 0)]
    pub delay_ms: u64,
}

/// Where `ring cat` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum From {
    /// The oldest message the ring still holds.
    Oldest,
    /// The newest message already published.
    Newest,
    /// Only messages published after start.
    Next,
}

#[derive(Serialize)]
struct MetaLine {
    seq: u64,
    epoch: u64,
    len: usize,
    capture_ns: u64,
    device_seq: u64,
    publish_ns: u64,
    flags: u32,
    lost_before: u64,
    intact: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    fnv1a64: Option<String>,
}

/// `edgeplex ring cat PATH`
pub fn cat(args: &CatArgs) -> anyhow::Result<()> {
    let start = match args.from {
        From::Oldest => Start::Oldest,
        From::Newest => Start::Newest,
        From::Next => Start::Next,
    };
    exit_on_truncation(&args.path);
    let mut reader = Reader::open(&args.path, start)?;
    let binary = reader.geometry().kind != ring::StreamKind::Serial;
    if binary && !args.meta && !args.force && io::stdout().is_terminal() {
        return Err(crate::config::ConfigError(format!(
            "{} holds {} payloads, and stdout is a terminal: pipe it into a program or a file, use --meta for one line per message, or --force",
            args.path.display(),
            match reader.geometry().kind {
                ring::StreamKind::Video => "video",
                _ => "binary",
            }
        ))
        .into());
    }
    let mut buf = Vec::new();
    let idle = args.idle_timeout.map(Duration::from_secs_f64);
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut seen = 0u64;
    let result = (|| -> anyhow::Result<()> {
        while args.count.is_none_or(|c| seen < c) {
            match reader.next(idle.unwrap_or(Duration::from_secs(3600)))? {
                Recv::TimedOut if idle.is_some() => break,
                Recv::TimedOut => continue,
                Recv::Reopened => {
                    if args.meta {
                        let line = serde_json::json!({ "event": "reopened", "geometry": reader.geometry() });
                        writeln!(out, "{line}")?;
                    }
                }
                Recv::Message(msg) => {
                    seen += 1;
                    if args.meta {
                        if args.hash {
                            buf.resize(msg.len(), 0);
                            msg.copy_into(&mut buf);
                        }
                        let fnv1a64 = args.hash.then(|| format!("{:016x}", ring::fnv1a64(&buf)));
                        let mut line = MetaLine {
                            seq: msg.seq(),
                            epoch: msg.epoch(),
                            len: msg.len(),
                            capture_ns: msg.capture_ns(),
                            device_seq: msg.device_seq(),
                            publish_ns: msg.publish_ns(),
                            flags: msg.flags(),
                            lost_before: msg.lost_before(),
                            intact: true,
                            fnv1a64,
                        };
                        line.intact = msg.finish();
                        serde_json::to_writer(&mut out, &line)?;
                        writeln!(out)?;
                    } else {
                        buf.resize(msg.len(), 0);
                        msg.copy_into(&mut buf);
                        // Only an intact copy is written: a torn one is counted as lost.
                        if msg.finish() {
                            out.write_all(&buf)?;
                        } else {
                            tracing::warn!(path = %args.path.display(), "a message was overwritten while being copied; skipped");
                        }
                    }
                    // Flush per message: a consumer piping a 1 Hz sensor into `jq` must see
                    // each line when it arrives, not after 8 KiB have piled up.
                    out.flush()?;
                    if args.delay_ms > 0 {
                        std::thread::sleep(Duration::from_millis(args.delay_ms));
                    }
                }
            }
        }
        Ok(())
    })();
    let result = match result {
        Err(e) if is_broken_pipe(&e) => return Ok(()),
        r => r,
    };
    if args.meta {
        let end = serde_json::json!({
            "event": "end", "delivered": reader.delivered(), "lost": reader.lost(),
            "cursor": reader.cursor(), "reopened": reader.reopened(),
        });
        let _ = writeln!(out, "{end}");
    }
    match out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => result.and(r.context("write to stdout")),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
