//! The side-by-side table of several reports of one workload, with ratios
//! against Kafka, as Markdown and JSON (`streambus-bench table`).

use std::fmt::Write as _;

use serde_json::json;

use crate::report::{StoredReport, SummaryOut};

/// Column order and display names.
const SYSTEMS: [(&str, &str); 3] = [
    ("streambus", "StreamBus"),
    ("kafka", "Kafka"),
    ("nats", "NATS JetStream"),
];

/// One row: a label, whether higher is better, and how to read the value.
struct Row {
    label: &'static str,
    higher_is_better: bool,
    value: fn(&StoredReport) -> Option<f64>,
}

fn latency(s: &SummaryOut, f: fn(&SummaryOut) -> f64) -> Option<f64> {
    (s.count > 0).then(|| f(s))
}

const ROWS: &[Row] = &[
    Row {
        label: "publish rate (msg/s)",
        higher_is_better: true,
        value: |r| Some(r.results.publish_msg_per_s),
    },
    Row {
        label: "publish throughput (MiB/s)",
        higher_is_better: true,
        value: |r| Some(r.results.publish_mib_per_s),
    },
    Row {
        label: "consume rate (msg/s)",
        higher_is_better: true,
        value: |r| Some(r.results.consume_msg_per_s),
    },
    Row {
        label: "publish latency p50 (ms)",
        higher_is_better: false,
        value: |r| latency(&r.results.publish_latency, |s| s.p50_ms),
    },
    Row {
        label: "publish latency p99 (ms)",
        higher_is_better: false,
        value: |r| latency(&r.results.publish_latency, |s| s.p99_ms),
    },
    Row {
        label: "publish latency p99.9 (ms)",
        higher_is_better: false,
        value: |r| latency(&r.results.publish_latency, |s| s.p99_9_ms),
    },
    Row {
        label: "end-to-end latency p50 (ms)",
        higher_is_better: false,
        value: |r| latency(&r.results.end_to_end_latency, |s| s.p50_ms),
    },
    Row {
        label: "end-to-end latency p99 (ms)",
        higher_is_better: false,
        value: |r| latency(&r.results.end_to_end_latency, |s| s.p99_ms),
    },
    Row {
        label: "end-to-end latency p99.9 (ms)",
        higher_is_better: false,
        value: |r| latency(&r.results.end_to_end_latency, |s| s.p99_9_ms),
    },
    Row {
        label: "client CPU s per million messages",
        higher_is_better: false,
        value: |r| r.results.cpu.map(|c| c.client_s_per_million),
    },
    Row {
        label: "server CPU s per million messages",
        higher_is_better: false,
        value: |r| r.results.cpu.and_then(|c| c.server_s_per_million),
    },
    Row {
        label: "client + server CPU s per million messages",
        higher_is_better: false,
        value: |r| {
            r.results
                .cpu
                .filter(|c| c.server_s_per_million.is_some())
                .map(|c| c.total_s_per_million())
        },
    },
    Row {
        label: "publish delay p99 (ms)",
        higher_is_better: false,
        value: |r| {
            r.results
                .publish_delay
                .as_ref()
                .and_then(|d| latency(d, |s| s.p99_ms))
        },
    },
];

fn fmt_value(v: f64) -> String {
    if v >= 1000.0 {
        let whole = v.round() as u64;
        let digits = whole.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The Markdown table of `reports` (one per system, same workload) and a
/// JSON document with the same figures and the ratios.
pub fn compare(title: &str, reports: &[StoredReport]) -> (String, serde_json::Value) {
    let find = |name: &str| reports.iter().find(|r| r.driver == name);
    let present: Vec<(&str, &str, &StoredReport)> = SYSTEMS
        .iter()
        .filter_map(|(id, label)| find(id).map(|r| (*id, *label, r)))
        .collect();
    let kafka = find("kafka");

    let mut md = String::new();
    let _ = writeln!(md, "#### {title}\n");
    let mut header = "| metric |".to_string();
    let mut rule = "|---|".to_string();
    for (_, label, _) in &present {
        let _ = write!(header, " {label} |");
        rule.push_str("---:|");
    }
    if kafka.is_some() {
        for (id, label, _) in &present {
            if *id != "kafka" {
                let _ = write!(header, " {label} / Kafka |");
                rule.push_str("---:|");
            }
        }
    }
    let _ = writeln!(md, "{header}\n{rule}");
    let mut ratios = serde_json::Map::new();
    for row in ROWS {
        let values: Vec<Option<f64>> = present.iter().map(|(_, _, r)| (row.value)(r)).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let mut line = format!("| {} |", row.label);
        for v in &values {
            let _ = write!(line, " {} |", v.map_or("n/a".to_string(), fmt_value));
        }
        if let Some(k) = kafka.and_then(|k| (row.value)(k)) {
            for ((id, _, _), v) in present.iter().zip(&values) {
                if *id == "kafka" {
                    continue;
                }
                let cell = match v {
                    Some(v) if k > 0.0 => {
                        let ratio = v / k;
                        ratios
                            .entry(id.to_string())
                            .or_insert_with(|| json!({}))
                            .as_object_mut()
                            .expect("object")
                            .insert(row.label.to_string(), json!(ratio));
                        let better = if row.higher_is_better {
                            ratio >= 1.0
                        } else {
                            ratio <= 1.0
                        };
                        let digits = if ratio >= 0.1 { 2 } else { 4 };
                        format!("{ratio:.digits$}x{}", if better { "" } else { " (worse)" })
                    }
                    _ => "n/a".to_string(),
                };
                let _ = write!(line, " {cell} |");
            }
        } else if kafka.is_some() {
            for (id, _, _) in &present {
                if *id != "kafka" {
                    line.push_str(" n/a |");
                }
            }
        }
        let _ = writeln!(md, "{line}");
    }
    let missing: Vec<&str> = SYSTEMS
        .iter()
        .filter(|(id, _)| find(id).is_none())
        .map(|(_, label)| *label)
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(md, "\nNot run: {}.", missing.join(", "));
    }
    for (_, label, r) in &present {
        if r.results.measured.failed > 0 || r.results.backlog_at_end != 0 || !r.errors.is_empty() {
            let _ = writeln!(
                md,
                "\n{label}: {} failed, {} acknowledged but not consumed; first error: {}",
                r.results.measured.failed,
                r.results.backlog_at_end,
                r.errors.first().map_or("none", String::as_str)
            );
        }
    }
    let json = json!({
        "title": title,
        "workload": present.first().map(|(_, _, r)| r.workload.clone()),
        "machine": present.first().map(|(_, _, r)| r.machine.clone()),
        "results": present
            .iter()
            .map(|(id, _, r)| (id.to_string(), serde_json::to_value(&r.results).expect("serialisable")))
            .collect::<serde_json::Map<_, _>>(),
        "ratios_vs_kafka": ratios,
    });
    (md, json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Counts, Results};

    fn report(driver: &str, rate: f64, p99: f64) -> StoredReport {
        let lat = SummaryOut {
            count: 10,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            p99_9_ms: p99 * 2.0,
            ..SummaryOut::default()
        };
        StoredReport {
            driver: driver.to_string(),
            workload: json!({"name": "w"}),
            machine: json!({"cores": 2}),
            results: Results {
                measured_s: 10.0,
                measured: Counts::default(),
                total: Counts::default(),
                publish_msg_per_s: rate,
                publish_mib_per_s: rate / 1024.0,
                consume_msg_per_s: rate,
                consume_mib_per_s: rate / 1024.0,
                backlog_at_end: 0,
                publish_latency: lat,
                publish_delay: None,
                end_to_end_latency: lat,
                // Client and server CPU per million: rate-derived, so the
                // systems differ; NATS without a server pid.
                cpu: Some(crate::report::CpuUse {
                    client_s: 1.0,
                    server_s: (driver != "nats").then_some(2.0),
                    client_s_per_million: 1e6 / rate,
                    server_s_per_million: (driver != "nats").then_some(2e6 / rate),
                }),
            },
            errors: Vec::new(),
        }
    }

    #[test]
    fn ratios_are_against_kafka_and_flag_the_worse_side() {
        let reports = vec![
            report("kafka", 100_000.0, 4.0),
            report("streambus", 150_000.0, 8.0),
            report("nats", 50_000.0, 2.0),
        ];
        let (md, json) = compare("max rate", &reports);
        assert!(
            md.contains("| client + server CPU s per million messages | 20.0 | 30.0 |"),
            "{md}"
        );
        assert!(md.contains("| metric | StreamBus | Kafka | NATS JetStream | StreamBus / Kafka | NATS JetStream / Kafka |"), "{md}");
        assert!(
            md.contains(
                "| publish rate (msg/s) | 150,000 | 100,000 | 50,000 | 1.50x | 0.50x (worse) |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| end-to-end latency p99 (ms) | 8.00 | 4.00 | 2.00 | 2.00x (worse) | 0.50x |"
            ),
            "{md}"
        );
        assert!(!md.contains("publish delay"), "no schedule, no row: {md}");
        let r = json["ratios_vs_kafka"]["streambus"]["publish rate (msg/s)"]
            .as_f64()
            .unwrap();
        assert!((r - 1.5).abs() < 1e-9);
    }

    #[test]
    fn a_missing_system_is_named() {
        let (md, _) = compare("t", &[report("streambus", 1.0, 1.0)]);
        assert!(md.contains("Not run: Kafka, NATS JetStream."), "{md}");
        assert!(!md.contains("/ Kafka"), "{md}");
    }
}
