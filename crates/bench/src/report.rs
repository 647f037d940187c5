//! What a run prints and writes: interval lines, the final summary in the
//! style of `kafka-producer-perf-test`, and the JSON report.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::driver::Driver;
use crate::machine::Machine;
use crate::stats::{Latencies, Summary};
use crate::workload::Workload;

const MIB: f64 = 1024.0 * 1024.0;

/// Message counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Handed to the client.
    pub sent: u64,
    /// Acknowledged by the server.
    pub acked: u64,
    /// Failed (error or timeout).
    pub failed: u64,
    /// Read by consumers.
    pub received: u64,
}

/// One line of figures for a reporting interval.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalLine {
    /// Seconds since the start of the run.
    pub elapsed_s: f64,
    /// Still warming up (not part of the results).
    pub warmup: bool,
    /// Acknowledged messages per second.
    pub publish_msg_per_s: f64,
    /// Acknowledged payload MiB per second.
    pub publish_mib_per_s: f64,
    /// Consumed messages per second.
    pub consume_msg_per_s: f64,
    /// Consumed payload MiB per second.
    pub consume_mib_per_s: f64,
    /// Acknowledged but not yet consumed, at the end of the interval.
    pub backlog: i64,
    /// Publish latency in this interval.
    pub publish_latency: Summary,
    /// Publish delay in this interval (fixed rate only).
    pub publish_delay: Option<Summary>,
    /// End-to-end latency in this interval.
    pub end_to_end_latency: Summary,
    /// CPU spent in this interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuUse>,
}

impl IntervalLine {
    /// The same line with the CPU spent in its interval.
    pub fn with_cpu(mut self, cpu: Option<CpuUse>) -> IntervalLine {
        self.cpu = cpu;
        self
    }

    /// Figures between the counters `before` and `after`, `dt` apart.
    pub fn new(
        elapsed: Duration,
        dt: Duration,
        before: &Counts,
        after: &Counts,
        workload: &Workload,
        latencies: &Latencies,
        warmup: bool,
    ) -> IntervalLine {
        let secs = dt.as_secs_f64().max(1e-9);
        let publish = (after.acked - before.acked) as f64 / secs;
        let consume = (after.received - before.received) as f64 / secs;
        let size = workload.message_size as f64;
        IntervalLine {
            elapsed_s: elapsed.as_secs_f64(),
            warmup,
            publish_msg_per_s: publish,
            publish_mib_per_s: publish * size / MIB,
            consume_msg_per_s: consume,
            consume_mib_per_s: consume * size / MIB,
            backlog: after.acked as i64 - after.received as i64,
            publish_latency: latencies.publish.summary(),
            publish_delay: (workload.producer_rate > 0).then(|| latencies.publish_delay.summary()),
            end_to_end_latency: latencies.end_to_end.summary(),
            cpu: None,
        }
    }
}

impl fmt::Display for IntervalLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:>6.1}s{}] pub {:>9.0} msg/s {:>7.1} MiB/s | cons {:>9.0} msg/s {:>7.1} MiB/s | backlog {:>8} | pub lat ms p50 {:.2} p99 {:.2} p99.9 {:.2} | e2e ms p50 {:.2} p99 {:.2} p99.9 {:.2}",
            self.elapsed_s,
            if self.warmup { " warm-up" } else { "" },
            self.publish_msg_per_s,
            self.publish_mib_per_s,
            self.consume_msg_per_s,
            self.consume_mib_per_s,
            self.backlog,
            self.publish_latency.p50_ms,
            self.publish_latency.p99_ms,
            self.publish_latency.p99_9_ms,
            self.end_to_end_latency.p50_ms,
            self.end_to_end_latency.p99_ms,
            self.end_to_end_latency.p99_9_ms,
        )?;
        if let Some(d) = &self.publish_delay {
            write!(f, " | delay ms p99 {:.2} max {:.2}", d.p99_ms, d.max_ms)?;
        }
        if let Some(c) = &self.cpu {
            write!(f, " | cpu s/1M msgs client {:.2}", c.client_s_per_million)?;
            if let Some(s) = c.server_s_per_million {
                write!(f, " server {s:.2}")?;
            }
        }
        Ok(())
    }
}

/// CPU time spent in a window, by the benchmark process (its clients) and
/// by the server process when its pid was given, and per million messages
/// acknowledged in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// User plus system CPU seconds of the benchmark process.
    pub client_s: f64,
    /// Of the server process (`--server-pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_s: Option<f64>,
    /// `client_s` per million messages acknowledged.
    pub client_s_per_million: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_s_per_million: Option<f64>,
}

/// CPU seconds so far of the benchmark process and of the server.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSample {
    pub client_s: f64,
    pub server_s: Option<f64>,
}

impl CpuUse {
    /// The CPU spent between two samples over `messages` acknowledged;
    /// `None` without messages.
    pub fn between(before: CpuSample, after: CpuSample, messages: u64) -> Option<CpuUse> {
        if messages == 0 {
            return None;
        }
        let millions = messages as f64 / 1e6;
        let client_s = (after.client_s - before.client_s).max(0.0);
        let server_s = before
            .server_s
            .zip(after.server_s)
            .map(|(b, a)| (a - b).max(0.0));
        Some(CpuUse {
            client_s,
            server_s,
            client_s_per_million: client_s / millions,
            server_s_per_million: server_s.map(|s| s / millions),
        })
    }

    /// Client plus server per million messages (client only without a
    /// server pid).
    pub fn total_s_per_million(&self) -> f64 {
        self.client_s_per_million + self.server_s_per_million.unwrap_or(0.0)
    }
}

/// The figures of the measured phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// Length of the measured phase.
    pub measured_s: f64,
    /// Counters over the measured phase.
    pub measured: Counts,
    /// Counters over the whole run, drain included.
    pub total: Counts,
    /// Acknowledged messages per second.
    pub publish_msg_per_s: f64,
    /// Acknowledged payload MiB (2^20 bytes) per second.
    pub publish_mib_per_s: f64,
    /// Consumed messages per second.
    pub consume_msg_per_s: f64,
    /// Consumed payload MiB per second.
    pub consume_mib_per_s: f64,
    /// Acknowledged but never consumed at the end (0 when consumers kept
    /// up).
    pub backlog_at_end: i64,
    /// Send to acknowledgement.
    pub publish_latency: SummaryOut,
    /// Scheduled send time to actual send time; `None` at max rate (no
    /// schedule).
    pub publish_delay: Option<SummaryOut>,
    /// Timestamp header to receipt by a consumer.
    pub end_to_end_latency: SummaryOut,
    /// CPU spent in the measured phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuUse>,
}

/// A [`Summary`] as stored in reports (deserialisable for `table`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SummaryOut {
    /// Samples.
    pub count: u64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p99_9_ms: f64,
    /// 99.99th percentile, ms.
    pub p99_99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

impl From<Summary> for SummaryOut {
    fn from(s: Summary) -> SummaryOut {
        SummaryOut {
            count: s.count,
            mean_ms: s.mean_ms,
            p50_ms: s.p50_ms,
            p95_ms: s.p95_ms,
            p99_ms: s.p99_ms,
            p99_9_ms: s.p99_9_ms,
            p99_99_ms: s.p99_99_ms,
            max_ms: s.max_ms,
        }
    }
}

impl Results {
    /// Rates from the counters at the warm-up's end and the measured
    /// phase's end, percentiles from the merged histograms.
    pub fn new(
        workload: &Workload,
        measured: Duration,
        at_warm_end: &Counts,
        at_end: &Counts,
        finished: &Counts,
        latencies: &Latencies,
    ) -> Results {
        let secs = measured.as_secs_f64().max(1e-9);
        let window = Counts {
            sent: at_end.sent - at_warm_end.sent,
            acked: at_end.acked - at_warm_end.acked,
            failed: at_end.failed - at_warm_end.failed,
            received: at_end.received - at_warm_end.received,
        };
        let size = workload.message_size as f64;
        let publish = window.acked as f64 / secs;
        let consume = window.received as f64 / secs;
        Results {
            measured_s: secs,
            measured: window,
            total: *finished,
            publish_msg_per_s: publish,
            publish_mib_per_s: publish * size / MIB,
            consume_msg_per_s: consume,
            consume_mib_per_s: consume * size / MIB,
            backlog_at_end: finished.acked as i64 - finished.received as i64,
            publish_latency: latencies.publish.summary().into(),
            publish_delay: (workload.producer_rate > 0)
                .then(|| latencies.publish_delay.summary().into()),
            end_to_end_latency: latencies.end_to_end.summary().into(),
            cpu: None,
        }
    }

    /// The same results with the CPU spent in the measured phase.
    pub fn with_cpu(mut self, cpu: Option<CpuUse>) -> Results {
        self.cpu = cpu;
        self
    }

    /// The closing lines, in the style of `kafka-producer-perf-test`.
    pub fn summary_lines(&self) -> Vec<String> {
        let l = &self.publish_latency;
        let e = &self.end_to_end_latency;
        let mut lines = vec![
            format!(
                "{} records sent, {:.1} records/sec ({:.2} MiB/sec), {:.2} ms avg latency, {:.2} ms max latency, {:.2} ms 50th, {:.2} ms 95th, {:.2} ms 99th, {:.2} ms 99.9th.",
                self.measured.acked,
                self.publish_msg_per_s,
                self.publish_mib_per_s,
                l.mean_ms,
                l.max_ms,
                l.p50_ms,
                l.p95_ms,
                l.p99_ms,
                l.p99_9_ms
            ),
            format!(
                "{} records consumed, {:.1} records/sec ({:.2} MiB/sec), end-to-end {:.2} ms avg latency, {:.2} ms max latency, {:.2} ms 50th, {:.2} ms 95th, {:.2} ms 99th, {:.2} ms 99.9th.",
                self.measured.received,
                self.consume_msg_per_s,
                self.consume_mib_per_s,
                e.mean_ms,
                e.max_ms,
                e.p50_ms,
                e.p95_ms,
                e.p99_ms,
                e.p99_9_ms
            ),
        ];
        match &self.publish_delay {
            Some(d) => lines.push(format!(
                "publish delay (scheduled to actual send): {:.2} ms 50th, {:.2} ms 99th, {:.2} ms 99.9th, {:.2} ms max.",
                d.p50_ms, d.p99_ms, d.p99_9_ms, d.max_ms
            )),
            None => lines.push("publish delay: not applicable at max rate (no schedule).".to_string()),
        }
        if let Some(c) = &self.cpu {
            lines.push(match (c.server_s, c.server_s_per_million) {
                (Some(s), Some(per)) => format!(
                    "cpu: client {:.2} s ({:.2} s per million messages), server {:.2} s ({:.2} s per million messages), together {:.2} s per million messages.",
                    c.client_s,
                    c.client_s_per_million,
                    s,
                    per,
                    c.total_s_per_million()
                ),
                _ => format!(
                    "cpu: client {:.2} s ({:.2} s per million messages); server not measured (--server-pid).",
                    c.client_s, c.client_s_per_million
                ),
            });
        }
        if self.measured.failed > 0 || self.backlog_at_end != 0 {
            lines.push(format!(
                "{} records failed; {} acknowledged records were not consumed by the end.",
                self.measured.failed, self.backlog_at_end
            ));
        }
        lines
    }
}

/// Everything one run measured, with what it ran on: the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `streambus-bench <version>`.
    pub tool: String,
    /// `streambus`, `kafka` or `nats`.
    pub driver: String,
    /// Start, ms since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// The workload as run.
    pub workload: Workload,
    /// Client and server settings the driver applied.
    pub settings: serde_json::Value,
    /// Cores, memory, CPU, kernel.
    pub machine: Machine,
    /// The figures.
    pub results: Results,
    /// One entry per reporting interval, warm-up included.
    pub intervals: Vec<IntervalLine>,
    /// Errors seen (at most 20).
    pub errors: Vec<String>,
}

impl Report {
    /// Assembles a report.
    pub fn new(
        driver: &dyn Driver,
        workload: &Workload,
        started_at_us: u64,
        results: Results,
        intervals: Vec<IntervalLine>,
        errors: Vec<String>,
    ) -> Report {
        Report {
            tool: format!("streambus-bench {}", env!("CARGO_PKG_VERSION")),
            driver: driver.name().to_string(),
            started_at_unix_ms: started_at_us / 1000,
            workload: workload.clone(),
            settings: driver.settings(workload),
            machine: Machine::detect(),
            results,
            intervals,
            errors,
        }
    }
}

/// A stored report, read back for the comparison table.
#[derive(Debug, Clone, Deserialize)]
pub struct StoredReport {
    /// Driver name.
    pub driver: String,
    /// The workload (kept as JSON).
    pub workload: serde_json::Value,
    /// The machine (kept as JSON).
    pub machine: serde_json::Value,
    /// The figures.
    pub results: Results,
    /// Errors seen.
    #[serde(default)]
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_million_messages_comes_from_the_two_samples() {
        let before = CpuSample {
            client_s: 1.0,
            server_s: Some(10.0),
        };
        let after = CpuSample {
            client_s: 3.0,
            server_s: Some(14.0),
        };
        let c = CpuUse::between(before, after, 500_000).unwrap();
        assert_eq!(c.client_s, 2.0);
        assert_eq!(c.server_s, Some(4.0));
        assert_eq!(c.client_s_per_million, 4.0);
        assert_eq!(c.server_s_per_million, Some(8.0));
        assert_eq!(c.total_s_per_million(), 12.0);
        assert_eq!(CpuUse::between(before, after, 0), None);
        let alone = CpuUse::between(
            CpuSample {
                client_s: 0.0,
                server_s: None,
            },
            CpuSample {
                client_s: 1.0,
                server_s: Some(5.0),
            },
            1_000_000,
        )
        .unwrap();
        assert_eq!(alone.server_s_per_million, None);
        assert_eq!(alone.total_s_per_million(), 1.0);
    }
    use crate::stats::Latency;

    #[test]
    fn rates_come_from_the_measured_window_only() {
        let w = Workload {
            message_size: 1024,
            ..Workload::default()
        };
        let warm = Counts {
            sent: 1000,
            acked: 900,
            failed: 0,
            received: 800,
        };
        let end = Counts {
            sent: 21_000,
            acked: 20_900,
            failed: 1,
            received: 20_800,
        };
        let mut publish = Latency::new();
        publish.record_us(2_000);
        let l = Latencies {
            publish,
            ..Latencies::default()
        };
        let r = Results::new(&w, Duration::from_secs(10), &warm, &end, &end, &l);
        assert_eq!(r.measured.acked, 20_000);
        assert!((r.publish_msg_per_s - 2000.0).abs() < 1e-9);
        assert!((r.publish_mib_per_s - 2000.0 / 1024.0).abs() < 1e-9);
        assert!((r.consume_msg_per_s - 2000.0).abs() < 1e-9);
        assert_eq!(r.backlog_at_end, 100);
        assert!(r.publish_delay.is_none(), "max rate has no schedule");
        let lines = r.summary_lines();
        assert!(
            lines[0].starts_with(
                "20000 records sent, 2000.0 records/sec (1.95 MiB/sec), 2.00 ms avg latency"
            ),
            "{}",
            lines[0]
        );
        assert!(lines.iter().any(|l| l.contains("1 records failed")));
    }

    #[test]
    fn interval_lines_label_units_and_warmup() {
        let w = Workload {
            producer_rate: 100,
            ..Workload::default()
        };
        let line = IntervalLine::new(
            Duration::from_secs(5),
            Duration::from_secs(5),
            &Counts::default(),
            &Counts {
                sent: 500,
                acked: 500,
                failed: 0,
                received: 450,
            },
            &w,
            &Latencies::default(),
            true,
        );
        let text = line.to_string();
        assert!(text.contains("warm-up"), "{text}");
        assert!(text.contains("100 msg/s"), "{text}");
        assert!(text.contains("MiB/s"), "{text}");
        assert!(text.contains("backlog       50"), "{text}");
        assert!(text.contains("delay ms p99"), "{text}");
    }
}
