//! Latency histograms (HdrHistogram, microseconds) and their summaries.
//!
//! Every producer and consumer records into its own histograms; reports
//! merge them sample by sample ([`Latency::merge`]) and read percentiles
//! from the merged histogram. Percentiles are never averaged.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded exactly: one hour. Larger values are clamped.
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Latency {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        Latency {
            histogram: Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds are valid"),
        }
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        self.record_us(latency.as_micros().min(u128::from(MAX_US)) as u64);
    }

    /// Records one latency in microseconds (clamped to 1 µs .. 1 h).
    pub fn record_us(&mut self, us: u64) {
        self.histogram.saturating_record(us.clamp(1, MAX_US));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds always merge");
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Empties the histogram.
    pub fn reset(&mut self) {
        self.histogram.reset();
    }

    /// The value at `quantile` (0..=1), in microseconds; 0 when empty.
    pub fn quantile_us(&self, quantile: f64) -> u64 {
        if self.histogram.is_empty() {
            return 0;
        }
        self.histogram.value_at_quantile(quantile)
    }

    /// The figures a report prints.
    pub fn summary(&self) -> Summary {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.histogram.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.count(),
            mean_ms: self.histogram.mean() / 1000.0,
            min_ms: ms(self.histogram.min()),
            p50_ms: ms(self.quantile_us(0.50)),
            p75_ms: ms(self.quantile_us(0.75)),
            p90_ms: ms(self.quantile_us(0.90)),
            p95_ms: ms(self.quantile_us(0.95)),
            p99_ms: ms(self.quantile_us(0.99)),
            p99_9_ms: ms(self.quantile_us(0.999)),
            p99_99_ms: ms(self.quantile_us(0.9999)),
            max_ms: ms(self.histogram.max()),
        }
    }
}

/// Percentiles of one latency, in milliseconds (µs resolution).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Smallest.
    pub min_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 75th percentile.
    pub p75_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p99_9_ms: f64,
    /// 99.99th percentile.
    pub p99_99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// The three latencies a run measures.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Send to acknowledgement.
    pub publish: Latency,
    /// Scheduled send time to actual send time (fixed rate only).
    pub publish_delay: Latency,
    /// Timestamp in the record header to receipt by a consumer.
    pub end_to_end: Latency,
}

impl Latencies {
    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        self.publish.merge(&other.publish);
        self.publish_delay.merge(&other.publish_delay);
        self.end_to_end.merge(&other.end_to_end);
    }

    fn reset(&mut self) {
        self.publish.reset();
        self.publish_delay.reset();
        self.end_to_end.reset();
    }
}

/// The histograms one task (a producer, its acknowledgement collector, or
/// a consumer) records into: the current reporting interval, and the whole
/// measured phase.
#[derive(Debug, Default)]
pub struct TaskRecorder {
    inner: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    interval: Latencies,
    total: Latencies,
}

/// Which latency a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Send to acknowledgement.
    Publish,
    /// Scheduled to actual send time.
    PublishDelay,
    /// Header timestamp to receipt.
    EndToEnd,
}

impl TaskRecorder {
    /// Records a sample into the interval histogram, and into the total
    /// when `measuring` (after the warm-up).
    pub fn record(&self, metric: Metric, us: u64, measuring: bool) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        slot(&mut r.interval, metric).record_us(us);
        if measuring {
            slot(&mut r.total, metric).record_us(us);
        }
    }

    /// Merges this task's interval histograms into `into` and empties them.
    pub fn drain_interval(&self, into: &mut Latencies) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        into.merge(&r.interval);
        r.interval.reset();
    }

    /// Merges this task's whole-phase histograms into `into`.
    pub fn merge_total(&self, into: &mut Latencies) {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        into.merge(&r.total);
    }
}

fn slot(l: &mut Latencies, metric: Metric) -> &mut Latency {
    match metric {
        Metric::Publish => &mut l.publish,
        Metric::PublishDelay => &mut l.publish_delay,
        Metric::EndToEnd => &mut l.end_to_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_percentiles_come_from_all_samples_not_averages() {
        // Producer A: 99 fast samples and 1 slow one; producer B: 100 slow
        // ones. Averaging the two p50s would say 5.5 ms; the merged
        // histogram's median is the slow value, as the 201 samples say.
        let mut a = Latency::new();
        for _ in 0..99 {
            a.record_us(1_000);
        }
        a.record_us(10_000);
        let mut b = Latency::new();
        for _ in 0..101 {
            b.record_us(10_000);
        }
        let mut merged = Latency::new();
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(merged.count(), 201);
        let s = merged.summary();
        assert!((s.p50_ms - 10.0).abs() < 0.01, "{s:?}");
        assert!((s.min_ms - 1.0).abs() < 0.01, "{s:?}");
        let mean = (99.0 * 1.0 + 102.0 * 10.0) / 201.0;
        assert!((s.mean_ms - mean).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn percentiles_of_a_known_uniform_distribution() {
        let mut l = Latency::new();
        for us in 1..=10_000 {
            l.record_us(us);
        }
        let s = l.summary();
        // 3 significant digits: within 0.1 %.
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.p99_9_ms - 9.99).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut l = Latency::new();
        l.record_us(0);
        l.record(Duration::from_secs(10 * 3600));
        assert_eq!(l.count(), 2);
        assert_eq!(l.quantile_us(0.0), 1);
        assert!(l.quantile_us(1.0) >= MAX_US * 999 / 1000);
        assert_eq!(Latency::new().summary(), Summary::default());
    }

    #[test]
    fn recorders_keep_the_total_only_while_measuring_and_drain_intervals() {
        let r = TaskRecorder::default();
        r.record(Metric::Publish, 500, false); // warm-up
        r.record(Metric::Publish, 700, true);
        r.record(Metric::EndToEnd, 900, true);
        let mut interval = Latencies::default();
        r.drain_interval(&mut interval);
        assert_eq!(interval.publish.count(), 2);
        assert_eq!(interval.end_to_end.count(), 1);
        let mut again = Latencies::default();
        r.drain_interval(&mut again);
        assert_eq!(again.publish.count(), 0, "an interval is reported once");
        let mut total = Latencies::default();
        r.merge_total(&mut total);
        assert_eq!(total.publish.count(), 1);
        assert_eq!(total.publish.quantile_us(0.5), 700);
        assert_eq!(total.end_to_end.count(), 1);
    }
}
