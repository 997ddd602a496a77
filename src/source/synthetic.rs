//! Synthetic sources for machines without hardware: a test-pattern camera and an NMEA-like
//! sensor. They produce the same kinds of messages real devices do.

/// BT.601 limited-range YUV of the eight classic colour bars.
const BARS: [(u8, u8, u8); 8] = [
    (235, 128, 128), // white
    (210, 16, 146),  // yellow
    (170, 166, 16),  // cyan
    (145, 54, 34),   // green
    (106, 202, 222), // magenta
    (81, 90, 240),   // red
    (41, 240, 110),  // blue
    (16, 128, 128),  // black
];

/// 3x5 bitmaps of the digits 0-9, one row per 3 bits.
const DIGITS: [[u8; 5]; 10] = [
    [7, 5, 5, 5, 7],
    [2, 6, 2, 2, 7],
    [7, 1, 7, 4, 7],
    [7, 1, 7, 1, 7],
    [5, 5, 7, 1, 1],
    [7, 4, 7, 1, 7],
    [7, 4, 7, 5, 7],
    [7, 1, 1, 1, 1],
    [7, 5, 7, 5, 7],
    [7, 5, 7, 1, 7],
];

/// A YUYV test pattern: colour bars that move one step per frame, with the frame counter drawn
/// in the top-left corner.
#[derive(Debug, Clone)]
pub struct TestPattern {
    width: u32,
    height: u32,
    row: Vec<u8>,
}

impl TestPattern {
    /// A pattern of `width` x `height` pixels; `width` is rounded down to an even number.
    pub fn new(width: u32, height: u32) -> TestPattern {
        let width = (width & !1).max(2);
        let height = height.max(1);
        TestPattern {
            width,
            height,
            row: vec![0; width as usize * 2],
        }
    }

    /// Bytes per line (YUYV: two per pixel).
    pub fn stride(&self) -> u32 {
        self.width * 2
    }

    /// Bytes per frame.
    pub fn frame_len(&self) -> usize {
        self.stride() as usize * self.height as usize
    }

    /// Draw frame number `frame` into `buf` (at least [`TestPattern::frame_len`] bytes).
    /// Returns the frame's length.
    pub fn render(&mut self, frame: u64, buf: &mut [u8]) -> usize {
        let (w, h, stride) = (
            self.width as usize,
            self.height as usize,
            self.stride() as usize,
        );
        let len = self.frame_len();
        let buf = &mut buf[..len];
        let shift = (frame as usize * 4) % w;
        for (pair, px) in self.row.chunks_exact_mut(4).enumerate() {
            let x = (pair * 2 + shift) % w;
            let (y, u, v) = BARS[x * BARS.len() / w];
            px.copy_from_slice(&[y, u, y, v]);
        }
        for line in buf.chunks_exact_mut(stride) {
            line.copy_from_slice(&self.row);
        }
        // The counter: black digits on a white box, each digit cell 4x6 units of `scale` pixels.
        let text = frame.to_string();
        let scale = (h / 40).max(1);
        let box_w = (text.len() * 4 + 1) * scale;
        let box_h = 7 * scale;
        for y in 0..box_h.min(h) {
            for x in 0..box_w.min(w) {
                let (cx, cy) = (x / scale, y / scale);
                let (cell, col) = (cx / 4, cx % 4);
                let ink = (1..=5).contains(&cy) && col >= 1 && cell < text.len() && {
                    let d = (text.as_bytes()[cell] - b'0') as usize;
                    DIGITS[d][cy - 1] >> (3 - col) & 1 == 1
                };
                let luma = if ink { 16 } else { 235 };
                let at = y * stride + x * 2;
                buf[at] = luma;
                buf[at + 1] = 128;
            }
        }
        len
    }
}

/// An NMEA-like GPS sensor: one `$GPGGA` sentence per sample, position drifting slowly.
#[derive(Debug, Clone, Default)]
pub struct NmeaSim {
    n: u64,
}

impl NmeaSim {
    /// A simulator starting at sample 0.
    pub fn new() -> NmeaSim {
        NmeaSim::default()
    }

    /// The next sentence, with checksum and CRLF.
    pub fn next_line(&mut self) -> Vec<u8> {
        let n = self.n;
        self.n += 1;
        let secs = n / 10;
        let (hh, mm, ss, cs) = (
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            (n % 10) * 10,
        );
        let lat = 4807.038 + (n % 1000) as f64 * 0.001;
        let lon = 1131.000 + (n % 700) as f64 * 0.001;
        let body = format!(
            "GPGGA,{hh:02}{mm:02}{ss:02}.{cs:02},{lat:.3},N,{lon:08.3},E,1,08,0.9,545.4,M,46.9,M,,"
        );
        let sum = body.bytes().fold(0u8, |a, b| a ^ b);
        format!("${body}*{sum:02X}\r\n").into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_moves_and_shows_the_counter() {
        let mut p = TestPattern::new(64, 48);
        let mut a = vec![0; p.frame_len()];
        let mut b = vec![0; p.frame_len()];
        assert_eq!(p.render(1, &mut a), 64 * 48 * 2);
        p.render(2, &mut b);
        assert_ne!(a, b);
        // The bottom rows are bars only, and shifted by 4 pixels (8 bytes) per frame.
        let last = 47 * 128;
        assert_eq!(a[last + 8..last + 128], b[last..last + 120]);
    }

    #[test]
    fn nmea_checksums_are_valid() {
        let mut s = NmeaSim::new();
        for _ in 0..20 {
            let line = String::from_utf8(s.next_line()).unwrap();
            let (body, sum) = line
                .trim_end()
                .trim_start_matches('$')
                .split_once('*')
                .unwrap();
            let want = body.bytes().fold(0u8, |a, b| a ^ b);
            assert_eq!(u8::from_str_radix(sum, 16).unwrap(), want, "{line}");
        }
    }
}

/// A synthetic camera stream (`type = "test-pattern"`).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TestPatternSettings {
    /// Width in pixels (even).
    #[serde(default = "default_width")]
    pub width: u32,
    /// Height in pixels.
    #[serde(default = "default_height")]
    pub height: u32,
    /// Frames per second.
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// Ring slots.
    #[serde(default = "default_slots")]
    pub slot_count: u32,
}

fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_fps() -> u32 {
    30
}
fn default_slots() -> u32 {
    8
}
fn default_rate() -> f64 {
    10.0
}
/// Slot size of the NMEA simulator's ring: an NMEA 0183 sentence is at most 82 bytes.
const NMEA_SLOT_SIZE: u64 = 128;

fn default_sensor_slots() -> u32 {
    1024
}

impl TestPatternSettings {
    /// Check the settings; the error names the key.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        use super::camera::check_range;
        check_range(prefix, "width", self.width, 2, 8192)?;
        check_range(prefix, "height", self.height, 1, 8192)?;
        check_range(prefix, "fps", self.fps, 1, 1000)?;
        check_range(prefix, "slot_count", self.slot_count, 2, 1024)
    }

    /// The ring a stream called `name` with these settings needs.
    pub fn ring_spec(&self, name: &str) -> crate::ring::RingSpec {
        let pattern = TestPattern::new(self.width, self.height);
        crate::ring::RingSpec {
            name: name.to_owned(),
            kind: crate::ring::StreamKind::Video,
            slot_count: self.slot_count,
            slot_size: pattern.frame_len() as u64,
            video: Some(crate::ring::VideoFormat {
                width: pattern.stride() / 2,
                height: (pattern.frame_len() / pattern.stride() as usize) as u32,
                fourcc: u32::from_le_bytes(*b"YUYV"),
                stride: pattern.stride(),
            }),
        }
    }
}

/// A synthetic NMEA sensor stream (`type = "nmea-sim"`).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NmeaSimSettings {
    /// Sentences per second.
    #[serde(default = "default_rate")]
    pub rate_hz: f64,
    /// Ring slots.
    #[serde(default = "default_sensor_slots")]
    pub slot_count: u32,
}

impl NmeaSimSettings {
    /// Check the settings; the error names the key.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        // At least one sentence an hour: the period must be a duration the pacer can hold.
        if !(self.rate_hz >= 1.0 / 3600.0 && self.rate_hz <= 10_000.0) {
            return Err(format!(
                "{prefix}.rate_hz = {} is out of range: allowed 0.0003 (one an hour) to 10000",
                self.rate_hz
            ));
        }
        super::camera::check_range(prefix, "slot_count", self.slot_count, 2, 1 << 20)
    }

    /// The ring a stream called `name` with these settings needs.
    pub fn ring_spec(&self, name: &str) -> crate::ring::RingSpec {
        crate::ring::RingSpec {
            name: name.to_owned(),
            kind: crate::ring::StreamKind::Serial,
            slot_count: self.slot_count,
            slot_size: NMEA_SLOT_SIZE,
            video: None,
        }
    }
}

/// Paces a synthetic source: the next deadline, or how long to wait for it.
#[derive(Debug)]
struct Pacer {
    period: std::time::Duration,
    next: std::time::Instant,
}

impl Pacer {
    fn new(period: std::time::Duration) -> Pacer {
        Pacer {
            period,
            next: std::time::Instant::now(),
        }
    }

    /// Wait up to `max_wait` for the next tick; `true` if it is time to produce.
    fn wait(&mut self, max_wait: std::time::Duration) -> bool {
        let now = std::time::Instant::now();
        if now < self.next {
            let d = (self.next - now).min(max_wait);
            std::thread::sleep(d);
            if std::time::Instant::now() < self.next {
                return false;
            }
        }
        self.next += self.period;
        // After a long stall (a suspended VM, say), do not burst to catch up.
        if self.next + self.period * 4 < std::time::Instant::now() {
            self.next = std::time::Instant::now() + self.period;
        }
        true
    }
}

/// Opener of the test-pattern camera. It never fails.
#[derive(Debug)]
pub struct TestPatternOpener {
    name: String,
    settings: TestPatternSettings,
}

impl TestPatternOpener {
    /// An opener for stream `name`.
    pub fn new(name: &str, settings: TestPatternSettings) -> TestPatternOpener {
        TestPatternOpener {
            name: name.to_owned(),
            settings,
        }
    }
}

/// A running test-pattern camera.
#[derive(Debug)]
pub struct TestPatternCamera {
    name: String,
    settings: TestPatternSettings,
    pattern: TestPattern,
    pacer: Pacer,
    frame: u64,
}

impl super::Opener for TestPatternOpener {
    type Device = TestPatternCamera;

    fn open(&mut self) -> Result<TestPatternCamera, super::SourceError> {
        let s = &self.settings;
        let period = std::time::Duration::from_secs_f64(1.0 / f64::from(s.fps));
        Ok(TestPatternCamera {
            name: self.name.clone(),
            settings: s.clone(),
            pattern: TestPattern::new(s.width, s.height),
            pacer: Pacer::new(period),
            frame: 0,
        })
    }
}

impl super::Device for TestPatternCamera {
    fn spec(&self) -> crate::ring::RingSpec {
        self.settings.ring_spec(&self.name)
    }

    fn pump(
        &mut self,
        writer: &mut crate::ring::Writer,
        health: &super::StreamHealth,
        max_wait: std::time::Duration,
    ) -> Result<(), super::SourceError> {
        if !self.pacer.wait(max_wait) {
            return Ok(());
        }
        let mut loan = writer.lend();
        let len = self.pattern.render(self.frame, loan.buf());
        let meta = crate::ring::Meta {
            capture_ns: crate::ring::monotonic_ns(),
            device_seq: self.frame,
            flags: 0,
        };
        loan.commit(len, meta);
        health.published(len);
        self.frame += 1;
        Ok(())
    }
}

/// Opener of the NMEA simulator. It never fails.
#[derive(Debug)]
pub struct NmeaSimOpener {
    name: String,
    settings: NmeaSimSettings,
}

impl NmeaSimOpener {
    /// An opener for stream `name`.
    pub fn new(name: &str, settings: NmeaSimSettings) -> NmeaSimOpener {
        NmeaSimOpener {
            name: name.to_owned(),
            settings,
        }
    }
}

/// A running NMEA simulator.
#[derive(Debug)]
pub struct NmeaSimSensor {
    name: String,
    settings: NmeaSimSettings,
    sim: NmeaSim,
    pacer: Pacer,
    samples: u64,
}

impl super::Opener for NmeaSimOpener {
    type Device = NmeaSimSensor;

    fn open(&mut self) -> Result<NmeaSimSensor, super::SourceError> {
        let period = std::time::Duration::from_secs_f64(1.0 / self.settings.rate_hz);
        Ok(NmeaSimSensor {
            name: self.name.clone(),
            settings: self.settings.clone(),
            sim: NmeaSim::new(),
            pacer: Pacer::new(period),
            samples: 0,
        })
    }
}

impl super::Device for NmeaSimSensor {
    fn spec(&self) -> crate::ring::RingSpec {
        self.settings.ring_spec(&self.name)
    }

    fn pump(
        &mut self,
        writer: &mut crate::ring::Writer,
        health: &super::StreamHealth,
        max_wait: std::time::Duration,
    ) -> Result<(), super::SourceError> {
        if !self.pacer.wait(max_wait) {
            return Ok(());
        }
        let line = self.sim.next_line();
        let meta = crate::ring::Meta {
            capture_ns: crate::ring::realtime_ns(),
            device_seq: self.samples,
            flags: crate::ring::layout::FLAG_CAPTURE_REALTIME,
        };
        writer.publish(&line, meta)?;
        health.published(line.len());
        self.samples += 1;
        Ok(())
    }
}
