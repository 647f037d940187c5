//! How many fsyncs the logs made and how long they took: a count and a
//! latency histogram of atomics, shared by every log of a node and read
//! by its metrics at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: 50 µs doubling up to
/// 1.6 s (an fsync slower than that lands in the implicit `+Inf` bucket).
pub const FSYNC_BUCKETS_SECONDS: [f64; 16] = {
    let mut bounds = [0.0; 16];
    let mut i = 0;
    let mut bound = 0.000_05;
    while i < 16 {
        bounds[i] = bound;
        bound *= 2.0;
        i += 1;
    }
    bounds
};

/// Data and directory fsyncs of the logs sharing it: how many, their total
/// time, and how many fell in each bucket of [`FSYNC_BUCKETS_SECONDS`].
/// Failed fsyncs count too (a disk failing slowly shows here first).
#[derive(Debug, Default)]
pub struct FsyncStats {
    count: AtomicU64,
    sum_nanos: AtomicU64,
    /// Per bound of [`FSYNC_BUCKETS_SECONDS`], not cumulative; the `+Inf`
    /// bucket is `count` minus their sum.
    buckets: [AtomicU64; 16],
}

/// A reading of [`FsyncStats`].
#[derive(Debug, Clone, PartialEq)]
pub struct FsyncSnapshot {
    /// Fsyncs finished (successfully or not).
    pub count: u64,
    /// Their total duration, in seconds.
    pub sum_seconds: f64,
    /// `(upper bound in seconds, fsyncs in that bucket)`, not cumulative,
    /// ending with `(f64::INFINITY, slower ones)`.
    pub buckets: Vec<(f64, u64)>,
}

impl FsyncStats {
    /// Records one fsync that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = FSYNC_BUCKETS_SECONDS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        // Counted last: a reader never sees more in the buckets than the
        // count (the `+Inf` bucket would go negative).
        self.count.fetch_add(1, Ordering::Release);
    }

    /// Fsyncs finished so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The counts and buckets now. Read while fsyncs finish, the buckets
    /// may lag the count by the fsyncs in between (they land in `+Inf`
    /// for this reading only), never the other way.
    pub fn snapshot(&self) -> FsyncSnapshot {
        let count = self.count.load(Ordering::Acquire);
        let mut buckets = Vec::with_capacity(FSYNC_BUCKETS_SECONDS.len() + 1);
        let mut total = 0u64;
        for (bound, n) in FSYNC_BUCKETS_SECONDS.iter().zip(&self.buckets) {
            let n = n.load(Ordering::Relaxed).min(count - total);
            total += n;
            buckets.push((*bound, n));
        }
        buckets.push((f64::INFINITY, count - total));
        FsyncSnapshot {
            count,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsyncs_land_in_the_first_bucket_that_holds_them() {
        let stats = FsyncStats::default();
        stats.record(Duration::from_micros(10));
        stats.record(Duration::from_micros(50));
        stats.record(Duration::from_micros(51));
        stats.record(Duration::from_millis(3));
        stats.record(Duration::from_secs(5));
        let s = stats.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets.len(), 17);
        assert_eq!(s.buckets[0], (0.000_05, 2));
        assert_eq!(s.buckets[1], (0.000_1, 1));
        // 3 ms: 50 µs × 2^6 = 3.2 ms is the first bound at or above it.
        assert_eq!(s.buckets[6].1, 1);
        assert!((s.buckets[6].0 - 0.0032).abs() < 1e-12);
        assert_eq!(s.buckets[16], (f64::INFINITY, 1));
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), 5);
        assert!(
            (s.sum_seconds - 5.003_111).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
        assert!((FSYNC_BUCKETS_SECONDS[15] - 1.6384).abs() < 1e-9);
    }
}
