//! Time-to-empty arithmetic: a sliding window of discharge samples, a least-squares line over
//! it, and the rate fallback. Pure functions of the samples; no I/O and no clock.

use std::collections::VecDeque;

/// Fewest samples for a slope.
pub const MIN_SLOPE_SAMPLES: usize = 5;
/// Shortest time span of the samples for a slope, seconds.
pub const MIN_SLOPE_SPAN_SECS: f64 = 60.0;
/// The fitted slope must be this many standard errors below zero to be used. This is what
/// keeps noise from producing an estimate: a flat or noisy series gives none.
pub const MIN_T_STAT: f64 = 3.0;
/// One-sided 99.9% quantiles of Student's t for 1 to 30 degrees of freedom: the estimate's
/// range is the slope ± this many standard errors, so a few lucky samples that happen to line
/// up (a small, underestimated standard error) cannot produce a confident range.
const T_999: [f64; 30] = [
    318.31, 22.327, 10.215, 7.173, 5.893, 5.208, 4.785, 4.501, 4.297, 4.144, 4.025, 3.930, 3.852,
    3.787, 3.733, 3.686, 3.646, 3.610, 3.579, 3.552, 3.527, 3.505, 3.485, 3.467, 3.450, 3.435,
    3.421, 3.408, 3.396, 3.385,
];

/// The one-sided 99.9% quantile of Student's t with `dof` degrees of freedom (conservative
/// steps beyond the table; 3.09 is the normal limit).
fn t_999(dof: usize) -> f64 {
    match dof {
        0 => f64::INFINITY,
        1..=30 => T_999[dof - 1],
        31..=40 => 3.385,
        41..=60 => 3.307,
        61..=120 => 3.232,
        _ => 3.160,
    }
}
/// Fewest samples for the rate fallback (its median rejects single spikes).
pub const MIN_RATE_SAMPLES: usize = 3;
/// Hard cap on the window length, whatever the call rate.
const MAX_POINTS: usize = 4096;

/// One discharge sample: the remaining quantities and the draw, each optional, in kernel
/// units (µWh, µAh, percent, µW, µA). Draws are magnitudes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Point {
    /// Seconds on the caller's monotonic clock.
    pub t: f64,
    /// Remaining energy, µWh.
    pub energy_uwh: Option<f64>,
    /// Remaining charge, µAh.
    pub charge_uah: Option<f64>,
    /// Capacity, percent.
    pub capacity_pct: Option<f64>,
    /// Power drawn, µW (magnitude).
    pub power_uw: Option<f64>,
    /// Current drawn, µA (magnitude).
    pub current_ua: Option<f64>,
}

/// Which quantity a slope was fitted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// `energy_now`.
    Energy,
    /// `charge_now`.
    Charge,
    /// `capacity`.
    Capacity,
}

/// A time to empty from a slope, and what it rests on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slope {
    /// The estimate.
    pub estimate: Estimate,
    /// The quantity fitted.
    pub quantity: Quantity,
    /// Time span of the samples, seconds.
    pub span: f64,
}

/// A least-squares line `y = value_at_last + slope * (t - t_last)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineFit {
    /// Units per second.
    pub slope: f64,
    /// Standard error of the slope.
    pub slope_se: f64,
    /// The fitted value at the last sample's time (smoother than the last raw value).
    pub value_at_last: f64,
    /// Number of samples.
    pub n: usize,
    /// Time span of the samples, seconds.
    pub span: f64,
}

impl LineFit {
    /// Seconds until the fitted line reaches zero, if it is falling significantly (by
    /// [`MIN_T_STAT`] standard errors), with a range from the slope's 99.9% confidence
    /// interval (Student's t with n − 2 degrees of freedom).
    pub fn time_to_zero(&self) -> Option<Estimate> {
        let drain = -self.slope;
        if !(drain > 0.0 && self.slope_se <= drain / MIN_T_STAT) {
            return None;
        }
        let k = t_999(self.n.saturating_sub(2));
        let remaining = self.value_at_last.max(0.0);
        let tte = remaining / drain;
        let lo = remaining / (drain + k * self.slope_se);
        let slow = drain - k * self.slope_se;
        let hi = if slow > 0.0 {
            remaining / slow
        } else {
            f64::INFINITY
        };
        (tte.is_finite() && lo.is_finite() && !hi.is_nan()).then_some(Estimate { tte, lo, hi })
    }
}

/// A time-to-empty estimate in seconds, with a plausible range: `lo <= tte <= hi`, where
/// `hi` may be infinite. Classification enters a class on `hi` and leaves it on `lo`, so an
/// uncertain estimate moves nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The point estimate.
    pub tte: f64,
    /// The pessimistic end (faster drain).
    pub lo: f64,
    /// The optimistic end (slower drain); may be infinite.
    pub hi: f64,
}

impl Estimate {
    /// A figure taken as exact (the driver's, or the rate's).
    pub fn exact(tte: f64) -> Estimate {
        Estimate {
            tte,
            lo: tte,
            hi: tte,
        }
    }

    /// The same point estimate with an uninformative range (`0..=∞`): reported, but unable to
    /// move the class.
    pub fn unconfirmed(self) -> Estimate {
        Estimate {
            tte: self.tte,
            lo: 0.0,
            hi: f64::INFINITY,
        }
    }

    /// The same estimate `secs` later, counted down, never below zero.
    pub fn aged(self, secs: f64) -> Estimate {
        Estimate {
            tte: (self.tte - secs).max(0.0),
            lo: (self.lo - secs).max(0.0),
            hi: (self.hi - secs).max(0.0),
        }
    }
}

/// Fit a line to `(t, y)` pairs. `None` with fewer than three points, no spread in time, or
/// non-finite arithmetic.
pub fn least_squares(points: &[(f64, f64)]) -> Option<LineFit> {
    let n = points.len();
    if n < 3 {
        return None;
    }
    let nf = n as f64;
    let t_mean = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let y_mean = points.iter().map(|p| p.1).sum::<f64>() / nf;
    // Centred sums: no cancellation even with epoch-sized times.
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for &(t, y) in points {
        sxx += (t - t_mean) * (t - t_mean);
        sxy += (t - t_mean) * (y - y_mean);
    }
    if sxx.is_nan() || sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let sse: f64 = points
        .iter()
        .map(|&(t, y)| {
            let r = y - y_mean - slope * (t - t_mean);
            r * r
        })
        .sum();
    let slope_se = (sse / (nf - 2.0) / sxx).sqrt();
    let (t_first, t_last) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let value_at_last = y_mean + slope * (t_last - t_mean);
    let fit = LineFit {
        slope,
        slope_se,
        value_at_last,
        n,
        span: t_last - t_first,
    };
    (slope.is_finite() && slope_se.is_finite() && value_at_last.is_finite()).then_some(fit)
}

/// The median of `values` (which it reorders); `None` if empty.
fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    // The middle value, or the mean of the two middle values.
    Some((values[(n - 1) / 2] + values[n / 2]) / 2.0)
}

/// Samples taken while discharging, over the last `span_secs`.
#[derive(Debug, Clone)]
pub struct Window {
    points: VecDeque<Point>,
    span_secs: f64,
}

impl Window {
    /// An empty window that keeps `span_secs` of history.
    pub fn new(span_secs: f64) -> Window {
        Window {
            points: VecDeque::new(),
            span_secs,
        }
    }

    /// Forget every sample.
    pub fn clear(&mut self) {
        self.points.clear();
    }

    /// Number of samples held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.points.len()
    }

    /// Add a sample and drop the ones older than the span. A sample at the same time as the
    /// last replaces it; a sample from before the last (a clock that went back) restarts the
    /// window. A non-finite time is ignored.
    pub fn push(&mut self, p: Point) {
        if !p.t.is_finite() {
            return;
        }
        match self.points.back() {
            Some(last) if p.t < last.t => self.points.clear(),
            Some(last) if p.t == last.t => {
                self.points.pop_back();
            }
            _ => {}
        }
        self.points.push_back(p);
        let oldest = p.t - self.span_secs;
        while self.points.front().is_some_and(|q| q.t < oldest) {
            self.points.pop_front();
        }
        while self.points.len() > MAX_POINTS {
            self.points.pop_front();
        }
    }

    /// The least-squares line of one quantity over the window, if there are enough samples
    /// with it over a long enough span.
    pub fn fit(&self, quantity: Quantity) -> Option<LineFit> {
        let pts: Vec<(f64, f64)> = self
            .points
            .iter()
            .filter_map(|p| {
                let y = match quantity {
                    Quantity::Energy => p.energy_uwh,
                    Quantity::Charge => p.charge_uah,
                    Quantity::Capacity => p.capacity_pct,
                }?;
                y.is_finite().then_some((p.t, y))
            })
            .collect();
        if pts.len() < MIN_SLOPE_SAMPLES {
            return None;
        }
        least_squares(&pts).filter(|f| f.span >= MIN_SLOPE_SPAN_SECS)
    }

    /// Time to empty from the least-squares slope of energy, else charge, else capacity: the
    /// first quantity with a significant falling slope.
    pub fn slope_time_to_empty(&self) -> Option<Slope> {
        [Quantity::Energy, Quantity::Charge, Quantity::Capacity]
            .into_iter()
            .find_map(|quantity| {
                let fit = self.fit(quantity)?;
                Some(Slope {
                    estimate: fit.time_to_zero()?,
                    quantity,
                    span: fit.span,
                })
            })
    }

    /// Time to empty from the latest remaining energy (or charge) over the median draw in the
    /// window: `energy_now / power_now` or `charge_now / |current_now|`, as upower does.
    pub fn rate_time_to_empty(&self) -> Option<f64> {
        let last = self.points.back()?;
        type Draw = fn(&Point) -> Option<f64>;
        let pairs: [(Option<f64>, Draw); 2] = [
            (last.energy_uwh, |p| p.power_uw),
            (last.charge_uah, |p| p.current_ua),
        ];
        pairs.into_iter().find_map(|(remaining, draw)| {
            let remaining = remaining?;
            let mut draws: Vec<f64> = self
                .points
                .iter()
                .filter_map(draw)
                .filter(|d| d.is_finite())
                .collect();
            if draws.len() < MIN_RATE_SAMPLES {
                return None;
            }
            let draw = median(&mut draws)?;
            // µWh / µW and µAh / µA are hours.
            let secs = remaining / draw * 3600.0;
            (draw > 0.0 && secs.is_finite()).then_some(secs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn energy_point(t: f64, e: f64) -> Point {
        Point {
            t,
            energy_uwh: Some(e),
            ..Point::default()
        }
    }

    #[test]
    fn exact_line_gives_exact_slope_and_time() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 10.0, 1000.0 - 2.0 * i as f64 * 10.0))
            .collect();
        let fit = least_squares(&pts).expect("fit");
        assert!((fit.slope + 2.0).abs() < 1e-12);
        assert!((fit.value_at_last - 820.0).abs() < 1e-9);
        let e = fit.time_to_zero().expect("tte");
        assert!((e.tte - 410.0).abs() < 1e-6);
        assert!(
            (e.lo - 410.0).abs() < 1e-6 && (e.hi - 410.0).abs() < 1e-6,
            "no noise, no spread: {e:?}"
        );
    }

    #[test]
    fn flat_rising_or_degenerate_series_give_no_time() {
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 5.0)).collect();
        assert_eq!(least_squares(&flat).and_then(|f| f.time_to_zero()), None);
        let rising: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, i as f64)).collect();
        assert_eq!(least_squares(&rising).and_then(|f| f.time_to_zero()), None);
        let same_time: Vec<(f64, f64)> = (0..10).map(|i| (3.0, i as f64)).collect();
        assert_eq!(least_squares(&same_time), None);
        assert_eq!(least_squares(&[(0.0, 1.0), (1.0, 0.0)]), None);
    }

    #[test]
    fn epoch_sized_times_do_not_lose_precision() {
        let base = 1.7e9;
        let pts: Vec<(f64, f64)> = (0..30)
            .map(|i| (base + i as f64 * 10.0, 5e7 - 1000.0 * i as f64))
            .collect();
        let fit = least_squares(&pts).expect("fit");
        assert!((fit.slope + 100.0).abs() < 1e-6, "{fit:?}");
    }

    #[test]
    fn window_needs_span_and_samples() {
        let mut w = Window::new(600.0);
        for i in 0..4 {
            w.push(energy_point(i as f64 * 30.0, 1e6 - 1e3 * i as f64));
        }
        assert_eq!(w.slope_time_to_empty(), None, "four samples are too few");
        let mut w = Window::new(600.0);
        for i in 0..10 {
            w.push(energy_point(i as f64 * 5.0, 1e6 - 1e3 * i as f64));
        }
        assert_eq!(w.slope_time_to_empty(), None, "45 s is too short a span");
        w.push(energy_point(60.0, 1e6 - 12e3));
        let s = w.slope_time_to_empty().expect("60 s span");
        assert_eq!((s.quantity, s.span), (Quantity::Energy, 60.0));
        assert!(
            (s.estimate.tte - (1e6 - 12e3) / 200.0).abs() < 1e-6,
            "{s:?}"
        );
    }

    #[test]
    fn window_slides_and_restarts_when_time_goes_back() {
        let mut w = Window::new(100.0);
        for i in 0..50 {
            w.push(energy_point(i as f64 * 10.0, 1.0));
        }
        assert_eq!(w.len(), 11, "only the last 100 s stay");
        w.push(energy_point(490.0, 2.0));
        assert_eq!(w.len(), 11, "same time replaces");
        w.push(energy_point(5.0, 1.0));
        assert_eq!(w.len(), 1, "time went back: restart");
        w.push(energy_point(f64::NAN, 1.0));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn prefers_energy_then_charge_then_capacity() {
        let mut w = Window::new(600.0);
        for i in 0..10 {
            let t = i as f64 * 10.0;
            w.push(Point {
                t,
                energy_uwh: (i < 3).then_some(1e6),
                charge_uah: Some(1e5 - 10.0 * t),
                capacity_pct: Some(50.0 - 0.1 * t),
                ..Point::default()
            });
        }
        let s = w.slope_time_to_empty().expect("estimate");
        assert_eq!(
            s.quantity,
            Quantity::Charge,
            "energy has too few samples, charge has enough"
        );
    }

    #[test]
    fn rate_uses_median_draw_and_the_matching_remaining_quantity() {
        let mut w = Window::new(600.0);
        for (i, p) in [10e6, 10e6, 1000e6, 10e6].into_iter().enumerate() {
            w.push(Point {
                t: i as f64,
                energy_uwh: Some(20e6),
                power_uw: Some(p),
                ..Point::default()
            });
        }
        // 20 Wh at a median 10 W is 2 h; the 1000 W spike is ignored.
        let tte = w.rate_time_to_empty().expect("rate");
        assert!((tte - 7200.0).abs() < 1e-6, "{tte}");

        let mut w = Window::new(600.0);
        for i in 0..3 {
            w.push(Point {
                t: i as f64,
                charge_uah: Some(1_000_000.0),
                current_ua: Some(500_000.0),
                power_uw: Some(0.0),
                ..Point::default()
            });
        }
        // No energy figure, so power is unused; 1 Ah at 0.5 A is 2 h.
        assert_eq!(w.rate_time_to_empty(), Some(7200.0));
    }

    #[test]
    fn zero_draw_gives_no_rate() {
        let mut w = Window::new(600.0);
        for i in 0..5 {
            w.push(Point {
                t: i as f64,
                energy_uwh: Some(1e6),
                power_uw: Some(0.0),
                ..Point::default()
            });
        }
        assert_eq!(w.rate_time_to_empty(), None);
    }

    proptest! {
        /// A falling line plus ±1% noise: once the window is full, the slope estimate is
        /// within 25% of the true time to empty whenever it is given, and its range is ordered.
        #[test]
        fn slope_is_close_to_truth_under_noise(
            full_wh in 10.0f64..100.0,
            hours in 0.5f64..2.0,
            noise in proptest::collection::vec(-1.0f64..1.0, 120),
        ) {
            let full = full_wh * 1e6;
            let rate = full / (hours * 3600.0); // µWh per second
            let mut w = Window::new(600.0);
            let mut given = 0;
            for (i, n) in noise.iter().enumerate() {
                let t = i as f64 * 10.0;
                let truth = full * 0.9 - rate * t;
                if truth <= 0.0 { break; }
                // ±1% of full-scale noise.
                w.push(energy_point(t, truth + n * 0.01 * full));
                if t >= 600.0 {
                    if let Some(Slope { estimate: e, .. }) = w.slope_time_to_empty() {
                        given += 1;
                        let true_tte = truth / rate;
                        prop_assert!(e.lo <= e.tte && e.tte <= e.hi, "{e:?}");
                        prop_assert!((e.tte - true_tte).abs() <= 0.25 * true_tte + 60.0,
                            "t={t} tte={e:?} true={true_tte}");
                    }
                }
            }
            prop_assert!(given > 0, "a full window of a steady discharge gives an estimate");
        }

        #[test]
        fn least_squares_never_panics(pts in proptest::collection::vec((any::<f64>(), any::<f64>()), 0..20)) {
            if let Some(fit) = least_squares(&pts) {
                prop_assert!(fit.slope.is_finite());
                if let Some(e) = fit.time_to_zero() {
                    prop_assert!(e.tte >= 0.0 && e.tte.is_finite());
                    prop_assert!(e.lo <= e.tte && e.tte <= e.hi);
                }
            }
        }
    }
}
