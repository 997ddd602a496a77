//! Where exported messages go: one JSON-lines file (samples, or the index of frames) plus one
//! file per frame, each written through a temporary file and renamed into place.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::prelude::{Engine, BASE64_STANDARD};
use serde::Serialize;

use super::state::{sync_parent, temp_file, write_atomic};
use super::{Format, Gap};
use crate::ring::layout;

#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Record {
    pub(super) seq: u64,
    pub(super) epoch: u64,
    pub(super) device_seq: u64,
    pub(super) capture_ns: u64,
    pub(super) publish_ns: u64,
    pub(super) flags: u32,
}

/// Where messages go: the JSON-lines file (samples, or the frame index) plus frame files.
pub(super) struct Sink {
    dir: PathBuf,
    stream: String,
    format: Format,
    lines_name: String,
    lines: BufWriter<tempfile::NamedTempFile>,
    frames: Vec<String>,
}

impl Sink {
    pub(super) fn new(
        dir: &Path,
        stream: &str,
        prefix: &str,
        format: Format,
    ) -> anyhow::Result<Sink> {
        let lines_name = match format {
            Format::Frames => format!("{prefix}.index.jsonl"),
            _ => format!("{prefix}.jsonl"),
        };
        let file = temp_file(&dir.join(&lines_name))
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        Ok(Sink {
            dir: dir.to_path_buf(),
            stream: stream.to_owned(),
            format,
            lines_name,
            lines: BufWriter::new(file),
            frames: Vec::new(),
        })
    }

    fn line(&mut self, v: &serde_json::Value) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.lines, v)?;
        self.lines.write_all(b"\n")?;
        Ok(())
    }

    pub(super) fn gap(&mut self, from: u64, to: u64, reason: &'static str) -> anyhow::Result<Gap> {
        let gap = Gap {
            from_seq: from,
            to_seq: to,
            count: to.wrapping_sub(from),
            reason,
        };
        let mut v = serde_json::to_value(&gap)?;
        v["type"] = "gap".into();
        self.line(&v)?;
        Ok(gap)
    }

    pub(super) fn message(
        &mut self,
        meta: &Record,
        payload: &[u8],
        g: &layout::Geometry,
    ) -> anyhow::Result<()> {
        let mut v = serde_json::to_value(meta)?;
        v["len"] = payload.len().into();
        match self.format {
            Format::Frames => {
                let file = format!("{}-{}.{}", self.stream, meta.seq, frame_ext(g));
                let path = self.dir.join(&file);
                write_atomic(&path, |f| f.write_all(payload))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                v["type"] = "frame".into();
                v["file"] = file.clone().into();
                v["width"] = g.video.width.into();
                v["height"] = g.video.height.into();
                v["fourcc"] = layout::fourcc_str(g.video.fourcc).into();
                v["stride"] = g.video.stride.into();
                self.frames.push(file);
            }
            _ => {
                v["type"] = "sample".into();
                match std::str::from_utf8(payload) {
                    Ok(s) => {
                        v["encoding"] = "utf8".into();
                        v["payload"] = s.into();
                    }
                    Err(_) => {
                        v["encoding"] = "base64".into();
                        v["payload"] = BASE64_STANDARD.encode(payload).into();
                    }
                }
            }
        }
        self.line(&v)
    }

    /// Close the lines file: keep it (renamed into place) if `keep`, else remove it. Returns the
    /// file names in upload order: frames, then the lines file.
    pub(super) fn finish(self, keep: bool) -> anyhow::Result<Vec<String>> {
        let Sink {
            dir,
            lines_name,
            lines,
            mut frames,
            ..
        } = self;
        let file = lines
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", dir.join(&lines_name).display()))?;
        if !keep {
            drop(file); // removes the temporary file
            return Ok(frames);
        }
        let path = dir.join(&lines_name);
        (|| {
            file.as_file().sync_all()?;
            file.persist(&path).map_err(|e| e.error)?;
            sync_parent(&path)
        })()
        .with_context(|| format!("cannot write {}", path.display()))?;
        frames.push(lines_name);
        Ok(frames)
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("dir", &self.dir)
            .field("lines", &self.lines_name)
            .field("frames", &self.frames.len())
            .finish()
    }
}

fn frame_ext(g: &layout::Geometry) -> String {
    match &layout::fourcc_str(g.video.fourcc)[..] {
        "MJPG" | "JPEG" => "jpg".into(),
        _ if g.video.fourcc == 0 => "bin".into(),
        s => sanitize(&s.to_ascii_lowercase()),
    }
}

/// `s` as a safe file-name part: letters, digits, `-`, `_`, `.`; never empty or hidden.
pub(super) fn sanitize(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("ring{s}")
    } else {
        s
    }
}
