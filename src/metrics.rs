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

use crate::source::{StreamHealth, StreamSet};

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

/// Per-stream metrics, refreshed from the streams' health at scrape time. It follows a
/// [`StreamSet`]: a stream that joins the set gets its series at the next scrape, and one that
/// leaves it (a discovered device gone for good) loses them.
#[derive(Debug)]
pub struct StreamExporter {
    streams: StreamSet,
    registry: Registry,
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
    state: Mutex<Exported>,
}

/// What the exporter has put into the registry so far.
#[derive(Debug, Default)]
struct Exported {
    /// Counter values already added, by metric and label values.
    last: HashMap<(&'static str, Vec<String>), u64>,
    /// The streams whose series exist, with their interval histogram (registered).
    streams: Vec<(StreamHealth, Option<prometheus::Histogram>)>,
}

impl StreamExporter {
    /// Register the per-stream metrics for the streams of `streams` into `registry`.
    pub fn register(registry: &Registry, streams: StreamSet) -> prometheus::Result<StreamExporter> {
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
        let exporter = StreamExporter {
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
            registry: registry.clone(),
            state: Mutex::new(Exported::default()),
        };
        // The configured streams' histograms are registered now, so a name clash is an error
        // at start rather than a warning at the first scrape.
        exporter.follow(&mut exporter.state.lock().unwrap_or_else(|e| e.into_inner()))?;
        Ok(exporter)
    }

    /// Bring the exported streams in line with the set: register the histograms of streams
    /// that joined, drop every series of streams that left.
    fn follow(&self, state: &mut Exported) -> prometheus::Result<()> {
        let current = self.streams.list();
        let mut result = Ok(());
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut state.streams)
            .into_iter()
            .partition(|(h, _)| current.iter().any(|c| c.is_same(h)));
        for (h, hist) in gone {
            if let Some(hist) = hist {
                let _ = self.registry.unregister(Box::new(hist));
            }
            let name = h.name().to_owned();
            for g in [&self.up, &self.slots, &self.slot_size] {
                let _ = g.remove_label_values(&[&name]);
            }
            let _ = self.age.remove_label_values(&[&name]);
            state.last.retain(|(metric, labels), _| {
                if labels.first() != Some(&name) {
                    return true;
                }
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                let _ = self.counter(metric).remove_label_values(&labels);
                false
            });
        }
        state.streams = keep;
        for h in current {
            if state.streams.iter().any(|(s, _)| s.is_same(&h)) {
                continue;
            }
            let hist = h.interval_histogram();
            if let Some(hist) = &hist {
                if let Err(e) = self.registry.register(Box::new(hist.clone())) {
                    result = Err(e);
                    state.streams.push((h, None));
                    continue;
                }
            }
            state.streams.push((h, hist));
        }
        result
    }

    fn counter(&self, metric: &str) -> &IntCounterVec {
        match metric {
            "messages" => &self.messages,
            "bytes" => &self.bytes,
            "reconnects" => &self.reconnects,
            "dropped" => &self.dropped,
            "truncated" => &self.truncated,
            _ => &self.errors,
        }
    }

    /// Copy the streams' current health into the registry.
    pub fn refresh(&self) {
        let now = crate::ring::realtime_ns();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.follow(&mut state) {
            tracing::warn!(error = %e, "a stream's interval histogram could not be registered");
        }
        let Exported { last, streams } = &mut *state;
        let mut bump = |metric: &'static str, labels: &[&str], value: u64| {
            let c = self.counter(metric);
            let key = (metric, labels.iter().map(|l| l.to_string()).collect());
            let prev = last.entry(key).or_insert(0);
            if value > *prev {
                c.with_label_values(labels).inc_by(value - *prev);
                *prev = value;
            } else {
                // Make the series exist from the first scrape on.
                c.with_label_values(labels);
            }
        };
        for (h, _) in streams.iter() {
            let s = h.snapshot();
            let l = [s.name.as_str()];
            bump("messages", &l, s.messages);
            bump("bytes", &l, s.bytes);
            bump("reconnects", &l, s.reconnects);
            bump("dropped", &l, s.dropped_bytes);
            bump("truncated", &l, s.truncated);
            for (kind, n) in &s.errors {
                bump("errors", &[s.name.as_str(), kind], *n);
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
    pub fn streams(&self) -> Vec<StreamHealth> {
        self.streams.list()
    }
}

/// A gauge registered under `name`, for single-valued metrics owned elsewhere.
pub fn register_gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Gauge> {
    let g = Gauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// Battery and power-class metrics, refreshed from the power watcher at scrape time.
#[derive(Debug)]
pub struct PowerExporter {
    state: crate::power::watch::PowerState,
    present: prometheus::IntGauge,
    capacity: Gauge,
    voltage: Gauge,
    power: Gauge,
    time_to_empty: Gauge,
    status: IntGaugeVec,
    class: IntGaugeVec,
}

impl PowerExporter {
    /// Register the battery metrics into `registry`.
    pub fn register(
        registry: &Registry,
        state: crate::power::watch::PowerState,
    ) -> prometheus::Result<PowerExporter> {
        let present = prometheus::IntGauge::new(
            "edgeplex_battery_present",
            "1 if the node has a system battery.",
        )?;
        registry.register(Box::new(present.clone()))?;
        let status = IntGaugeVec::new(
            Opts::new(
                "edgeplex_battery_status_info",
                "Battery status from the power-supply class (1 for the current one).",
            ),
            &["status"],
        )?;
        registry.register(Box::new(status.clone()))?;
        let class = IntGaugeVec::new(
            Opts::new(
                "edgeplex_power_class",
                "Power class with hysteresis: normal, low or critical (1 for the current one).",
            ),
            &["class"],
        )?;
        registry.register(Box::new(class.clone()))?;
        Ok(PowerExporter {
            state,
            present,
            capacity: register_gauge(registry, "edgeplex_battery_capacity_ratio", "Remaining battery capacity, 0 to 1.")?,
            voltage: register_gauge(registry, "edgeplex_battery_voltage_volts", "Battery voltage.")?,
            power: register_gauge(registry, "edgeplex_battery_power_watts", "Power drawn from (or into) the battery.")?,
            time_to_empty: register_gauge(
                registry,
                "edgeplex_battery_time_to_empty_seconds",
                "Estimated seconds until the battery is empty (NaN when not discharging or unknown).",
            )?,
            status,
            class,
        })
    }

    /// Copy the latest power snapshot into the registry.
    pub fn refresh(&self) {
        use crate::power::{PowerClass, Status};
        let Some(s) = self.state.get() else { return };
        self.present.set(i64::from(s.battery));
        let or_nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
        self.capacity.set(or_nan(s.capacity_ratio));
        self.voltage.set(or_nan(s.voltage_v));
        self.power.set(or_nan(s.power_w));
        self.time_to_empty.set(or_nan(s.time_to_empty_s));
        for st in [
            Status::Unknown,
            Status::Charging,
            Status::Discharging,
            Status::NotCharging,
            Status::Full,
        ] {
            self.status
                .with_label_values(&[st.as_str()])
                .set(i64::from(s.status == Some(st)));
        }
        for c in [PowerClass::Normal, PowerClass::Low, PowerClass::Critical] {
            self.class
                .with_label_values(&[c.as_str()])
                .set(i64::from(s.class == c));
        }
    }
}

/// Discovery metrics: what the last plan made of the machine's devices, and the device events
/// the discovery loop saw. The loop calls [`DiscoveryMetrics::observe`] after each plan and
/// [`DiscoveryMetrics::event`] for each device event.
///
/// - `edgeplex_discovery_devices{kind,state}`: candidate nodes by kind (`camera`, `serial`) and
///   state: `stream` when a rule made a stream of it, else the reason code
///   ([`crate::discovery::Reason::code`]: `not_capture`, `no_rule`, `collision`, ...);
/// - `edgeplex_discovery_rule_streams{rule}`: streams each configured rule makes now (0 for a
///   rule that matches nothing);
/// - `edgeplex_discovery_events_total{action}`: device events (`add`, `remove`, `change`).
#[derive(Debug)]
pub struct DiscoveryMetrics {
    devices: IntGaugeVec,
    rule_streams: IntGaugeVec,
    events: IntCounterVec,
    shown: Mutex<Vec<[String; 2]>>,
}

impl DiscoveryMetrics {
    /// Register the discovery metrics into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<DiscoveryMetrics> {
        let devices = IntGaugeVec::new(
            Opts::new(
                "edgeplex_discovery_devices",
                "Camera and serial device nodes by kind and state: stream, or why not taken.",
            ),
            &["kind", "state"],
        )?;
        let rule_streams = IntGaugeVec::new(
            Opts::new(
                "edgeplex_discovery_rule_streams",
                "Streams each discovery rule makes now.",
            ),
            &["rule"],
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "edgeplex_discovery_events_total",
                "Device events discovery acted on, by action.",
            ),
            &["action"],
        )?;
        registry.register(Box::new(devices.clone()))?;
        registry.register(Box::new(rule_streams.clone()))?;
        registry.register(Box::new(events.clone()))?;
        Ok(DiscoveryMetrics {
            devices,
            rule_streams,
            events,
            shown: Mutex::new(Vec::new()),
        })
    }

    /// Show what `outcomes` (a plan under `settings`) say: every rule of `settings` appears, and
    /// a `{kind,state}` pair no node is in any more goes away.
    pub fn observe(
        &self,
        settings: &crate::discovery::DiscoverySettings,
        outcomes: &[crate::discovery::Outcome],
    ) {
        use crate::discovery::Outcome;
        let mut devices: HashMap<[String; 2], i64> = HashMap::new();
        let mut rules: HashMap<&str, i64> =
            settings.rules.keys().map(|r| (r.as_str(), 0)).collect();
        for o in outcomes {
            let state = match o {
                Outcome::Stream(p) => {
                    *rules.entry(p.rule.as_str()).or_default() += 1;
                    "stream"
                }
                Outcome::NotTaken { reason, .. } => reason.code(),
            };
            *devices
                .entry([o.class().to_owned(), state.to_owned()])
                .or_default() += 1;
        }
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        for old in shown.iter().filter(|k| !devices.contains_key(*k)) {
            let _ = self.devices.remove_label_values(&[&old[0], &old[1]]);
        }
        for (k, n) in &devices {
            self.devices.with_label_values(&[&k[0], &k[1]]).set(*n);
        }
        *shown = devices.into_keys().collect();
        self.rule_streams.reset();
        for (rule, n) in rules {
            self.rule_streams.with_label_values(&[rule]).set(n);
        }
    }

    /// Count one device event (`add`, `remove`, `change`).
    pub fn event(&self, action: &str) {
        self.events.with_label_values(&[action]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kinds::DeviceClass;

    #[test]
    fn streams_that_leave_the_set_lose_their_series_and_may_come_back() {
        let registry = new_registry().unwrap();
        let cam0 = StreamHealth::new("cam0", "camera", DeviceClass::Camera);
        let set = StreamSet::new(vec![cam0.clone()]);
        let exporter = StreamExporter::register(&registry, set.clone()).unwrap();
        cam0.published(10);
        let usb = StreamHealth::new("cam-usb", "camera", DeviceClass::Camera);
        usb.published(7);
        usb.published(7);
        set.insert(usb.clone());
        exporter.refresh();
        let text = encode(&registry);
        assert!(
            text.contains("edgeplex_ring_messages_published_total{stream=\"cam-usb\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("edgeplex_capture_interval_seconds_count{stream=\"cam-usb\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edgeplex_source_up{stream=\"cam-usb\"} 0"),
            "{text}"
        );

        set.remove("cam-usb");
        exporter.refresh();
        let text = encode(&registry);
        assert!(!text.contains("cam-usb"), "{text}");
        assert!(
            text.contains("edgeplex_ring_messages_published_total{stream=\"cam0\"} 1"),
            "{text}"
        );

        // Back with a new handle (after the grace period): a fresh series, no clash.
        let again = StreamHealth::new("cam-usb", "camera", DeviceClass::Camera);
        again.published(7);
        set.insert(again);
        exporter.refresh();
        let text = encode(&registry);
        assert!(
            text.contains("edgeplex_ring_messages_published_total{stream=\"cam-usb\"} 1"),
            "{text}"
        );
    }
}
