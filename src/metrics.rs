//! Prometheus metrics: one registry built by the caller and passed down, never a global.
//!
//! Capture threads never touch the registry. They count into their `StreamHealth` (atomics and
//! one histogram), and [`StreamExporter::refresh`] copies those into the registry when a scraper
//! asks, on the metrics server's own thread.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::source::StreamHealth;

/// A registry with the process collector and `edgeplex_build_info`.
pub fn new_registry() -> prometheus::Result<Registry> {
    let registry = Registry::new();
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let build = IntGaugeVec::new(
        Opts::new(
            "edgeplex_build_info",
            "Build information; the value is always 1.",
        ),
        &["version"],
    )?;
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(build))?;
    Ok(registry)
}

/// Render the registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for the text format except on invalid metric families,
    // which the registry refuses at registration.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Per-stream metrics, refreshed from the streams' health at scrape time.
#[derive(Debug)]
pub struct StreamExporter {
    streams: Vec<StreamHealth>,
    messages: IntCounterVec,
    bytes: IntCounterVec,
    errors: IntCounterVec,
    reconnects: IntCounterVec,
    dropped: IntCounterVec,
    truncated: IntCounterVec,
    up: IntGaugeVec,
    slots: IntGaugeVec,
    slot_size: IntGaugeVec,
    age: GaugeVec,
    last: Mutex<HashMap<(String, &'static str), u64>>,
}

impl StreamExporter {
    /// Register the per-stream metrics for `streams` into `registry`.
    pub fn register(
        registry: &Registry,
        streams: Vec<StreamHealth>,
    ) -> prometheus::Result<StreamExporter> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["stream"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let age = GaugeVec::new(
            Opts::new(
                "edgeplex_ring_newest_message_age_seconds",
                "Seconds since the stream's newest message.",
            ),
            &["stream"],
        )?;
        registry.register(Box::new(age.clone()))?;
        for h in streams.iter().filter_map(StreamHealth::interval_histogram) {
            registry.register(Box::new(h))?;
        }
        Ok(StreamExporter {
            messages: counter(
                "edgeplex_ring_messages_published_total",
                "Messages published into the ring.",
                &["stream"],
            )?,
            bytes: counter(
                "edgeplex_ring_bytes_published_total",
                "Payload bytes published into the ring.",
                &["stream"],
            )?,
            errors: counter(
                "edgeplex_source_errors_total",
                "Device failures by kind.",
                &["stream", "kind"],
            )?,
            reconnects: counter(
                "edgeplex_source_reconnects_total",
                "Device reopened after a failure.",
                &["stream"],
            )?,
            dropped: counter(
                "edgeplex_source_dropped_bytes_total",
                "Bytes the device sent that could not be published (never silent).",
                &["stream"],
            )?,
            truncated: counter(
                "edgeplex_source_truncated_messages_total",
                "Messages published cut short (flagged TRUNCATED).",
                &["stream"],
            )?,
            up: gauge(
                "edgeplex_source_up",
                "1 if the stream's device is open and delivering.",
            )?,
            slots: gauge("edgeplex_ring_slots", "Slots of the stream's ring.")?,
            slot_size: gauge(
                "edgeplex_ring_slot_size_bytes",
                "Payload capacity of one slot.",
            )?,
            age,
            streams,
            last: Mutex::new(HashMap::new()),
        })
    }

    /// Copy the streams' current health into the registry.
    pub fn refresh(&self) {
        let now = crate::ring::realtime_ns();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut bump = |c: &IntCounterVec, labels: &[&str], key: &'static str, value: u64| {
            let prev = last.entry((labels.join("\u{1}"), key)).or_insert(0);
            if value > *prev {
                c.with_label_values(labels).inc_by(value - *prev);
                *prev = value;
            } else {
                // Make the series exist from the first scrape on.
                c.with_label_values(labels);
            }
        };
        for h in &self.streams {
            let s = h.snapshot();
            let l = [s.name.as_str()];
            bump(&self.messages, &l, "messages", s.messages);
            bump(&self.bytes, &l, "bytes", s.bytes);
            bump(&self.reconnects, &l, "reconnects", s.reconnects);
            bump(&self.dropped, &l, "dropped", s.dropped_bytes);
            bump(&self.truncated, &l, "truncated", s.truncated);
            for (kind, n) in &s.errors {
                bump(&self.errors, &[s.name.as_str(), kind], kind, *n);
            }
            self.up.with_label_values(&l).set(i64::from(s.up));
            if let Some((_, count, size)) = &s.ring {
                self.slots.with_label_values(&l).set(i64::from(*count));
                self.slot_size.with_label_values(&l).set(*size as i64);
            }
            let age = if s.last_publish_ns == 0 {
                f64::NAN
            } else {
                now.saturating_sub(s.last_publish_ns) as f64 / 1e9
            };
            self.age.with_label_values(&l).set(age);
        }
    }

    /// The streams this exporter reports on.
    pub fn streams(&self) -> &[StreamHealth] {
        &self.streams
    }
}

/// A gauge registered under `name`, for single-valued metrics owned elsewhere.
pub fn register_gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Gauge> {
    let g = Gauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}
