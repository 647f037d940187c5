//! Rate control with coordinated-omission accounting.
//!
//! At a fixed rate each message has a due time, `start + i / rate`, fixed
//! in advance and never moved. When a producer falls behind (the client
//! blocked, the outstanding limit was reached, the machine stalled) later
//! messages are sent late, back to back, until it catches up; each one's
//! *publish delay* (actual send time minus due time) is recorded. A stall
//! therefore shows in every message it held up, not only in the one that
//! was in flight, which is what a closed-loop tester that waits for each
//! send would hide (coordinated omission).

use std::time::Duration;

use tokio::time::Instant;

/// How early a producer wakes for a due message. Tokio's timer fires on
/// millisecond ticks, at or after the deadline; waking up to one tick early
/// keeps timer granularity out of the publish delay (an early send counts
/// as no delay). The rate over any second is exact.
pub const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Due times of a fixed-rate producer.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    interval_ns: f64,
    next: u64,
}

impl Pacer {
    /// `rate` messages per second from `start`.
    pub fn new(rate: f64, start: Instant) -> Pacer {
        assert!(rate > 0.0, "a pacer needs a positive rate");
        Pacer {
            start,
            interval_ns: 1e9 / rate,
            next: 0,
        }
    }

    /// The due time of the next message; each call moves to the next one.
    pub fn next_due(&mut self) -> Instant {
        let due = self.start + Duration::from_nanos((self.next as f64 * self.interval_ns) as u64);
        self.next += 1;
        due
    }

    /// Messages scheduled so far.
    pub fn scheduled(&self) -> u64 {
        self.next
    }

    /// When to wake up to send a message due at `due` (see [`TIMER_SLACK`]).
    pub fn wake_at(due: Instant) -> Instant {
        due.checked_sub(TIMER_SLACK).unwrap_or(due)
    }
}

/// The publish delay of a message due at `due` and sent at `sent`: zero
/// when sent early.
pub fn publish_delay(due: Instant, sent: Instant) -> Duration {
    sent.saturating_duration_since(due)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Latency;

    #[test]
    fn due_times_are_evenly_spaced_from_the_start() {
        let start = Instant::now();
        let mut p = Pacer::new(1000.0, start);
        assert_eq!(p.next_due(), start);
        assert_eq!(p.next_due(), start + Duration::from_millis(1));
        for _ in 0..998 {
            p.next_due();
        }
        assert_eq!(p.next_due(), start + Duration::from_millis(1000));
        assert_eq!(p.scheduled(), 1001);
    }

    #[test]
    fn fractional_intervals_keep_the_exact_rate() {
        let start = Instant::now();
        let mut p = Pacer::new(3.0, start);
        let due: Vec<Duration> = (0..4).map(|_| p.next_due() - start).collect();
        assert_eq!(due[3], Duration::from_secs(1));
        assert_eq!(due[1], Duration::from_nanos(333_333_333));
    }

    /// A producer at 1000 msg/s whose 11th send blocks for 100 ms. Sending
    /// resumes back to back until it catches up: the stall must show in
    /// the ~100 messages it held up, not in one sample.
    #[test]
    fn a_stall_shows_in_every_message_it_delayed() {
        let start = Instant::now();
        let mut pacer = Pacer::new(1000.0, start);
        let mut delays = Latency::new();
        let mut delayed = 0;
        let mut clock = start;
        let send_cost = Duration::from_micros(10);
        for i in 0..1000 {
            let due = pacer.next_due();
            if clock < due {
                clock = due; // wait for the due time
            }
            let delay = publish_delay(due, clock);
            delays.record(delay);
            if delay >= Duration::from_millis(50) {
                delayed += 1;
            }
            clock += if i == 10 {
                Duration::from_millis(100)
            } else {
                send_cost
            };
        }
        // Messages 11.. were due at 11 ms, 12 ms, ... but went out from
        // 110 ms on, 10 µs apart: delays 99 ms, 98 ms, ... down to zero.
        assert!(
            (49..=52).contains(&delayed),
            "about 50 messages were delayed by 50 ms or more, got {delayed}"
        );
        assert_eq!(delays.count(), 1000);
        let s = delays.summary();
        assert!(s.max_ms >= 99.0 && s.max_ms < 100.1, "{s:?}");
        // ~100 of 1000 messages were held up, by 1..99 ms (mean ~50 ms):
        // the mean delay is ~5 ms, where a tester that only timed the one
        // blocked send would report one 100 ms outlier and a ~0.1 ms mean.
        assert!((s.mean_ms - 5.0).abs() < 0.3, "{s:?}");
        assert!(
            s.p95_ms >= 40.0 && s.p99_ms >= 85.0,
            "the tail reflects the stall: {s:?}"
        );
        assert!(s.p50_ms < 1.0, "most messages were on time: {s:?}");
    }

    #[test]
    fn early_sends_count_as_no_delay_and_wake_is_one_tick_early() {
        let due = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            publish_delay(due, due - Duration::from_micros(300)),
            Duration::ZERO
        );
        assert_eq!(
            publish_delay(due, due + Duration::from_micros(300)),
            Duration::from_micros(300)
        );
        assert_eq!(Pacer::wake_at(due), due - TIMER_SLACK);
    }
}
