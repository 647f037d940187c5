//! The report of `streambus-bench subscribers` as Markdown.

use std::fmt::Write as _;

use super::{Report, Step};

const MIB: f64 = 1024.0 * 1024.0;

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / MIB)
}

/// `12,345`: thousands separated, no decimals.
fn grouped(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn produced(rate: Option<f64>, target: Option<f64>) -> String {
    match (rate, target) {
        (Some(r), Some(t)) => format!("{} of {}", grouped(r), grouped(t)),
        _ => "-".to_string(),
    }
}

fn memory_row(s: &Step) -> String {
    let m = &s.summary;
    let stalled = if m.stalled_opened == 0 {
        "-".to_string()
    } else {
        format!(
            "{} of {} ({:.0} / {:.0} ms)",
            m.stalled_answered,
            m.stalled_opened,
            m.stalled_first_response_p50_ms,
            m.stalled_first_response_max_ms
        )
    };
    format!(
        "| {} ({} + {}) | {} | {} | {} | {} | **{}** | {} / {} | {} | {} |",
        grouped(s.plan.subscribers as f64),
        s.plan.stalled,
        s.plan.active,
        s.plan.producers,
        mib(s.memory_before.rss_bytes),
        mib(m.rss_with_stalled_bytes),
        mib(m.baseline_peak_rss_bytes),
        mib(m.loaded_peak_rss_bytes),
        mib(m.baseline_gateway_max_used_bytes),
        mib(m.loaded_gateway_max_used_bytes),
        m.gateway_max_waiters,
        stalled,
    )
}

fn throughput_row(s: &Step) -> String {
    let m = &s.summary;
    let records = s
        .rounds
        .first()
        .map_or(0, |r| r.baseline.readers.records_per_reader);
    format!(
        "| {} | {} × {} | {} ({:.1}) | {} ({:.1}) | **{:.2}** ({:.2}–{:.2}) | {} / {} | {} / {} | {:.2} / {:.2} |",
        grouped(s.plan.subscribers as f64),
        s.plan.active,
        grouped(records as f64),
        grouped(m.baseline_records_per_s),
        m.baseline_mib_per_s,
        grouped(m.loaded_records_per_s),
        m.loaded_mib_per_s,
        m.ratio_median,
        m.ratio_min,
        m.ratio_max,
        m.baseline_readers_finished,
        m.loaded_readers_finished,
        produced(
            m.baseline_produced_records_per_s,
            m.produce_target_records_per_s
        ),
        produced(
            m.loaded_produced_records_per_s,
            m.produce_target_records_per_s
        ),
        m.baseline_server_cpu_cores,
        m.loaded_server_cpu_cores,
    )
}

impl Report {
    /// The figures as Markdown: idle costs, then one memory table and one
    /// throughput table with a row per count (medians of the rounds' rates
    /// and ratios, the largest memory figures of any round).
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let b = &self.server.budgets;
        let _ = writeln!(
            md,
            "Server pid {} ({}): gateway memory budget {} MiB, storage node memory budget {} MiB; \
             topic of {} records ({} MiB) written in {:.1} s.\n",
            self.server.pid,
            self.server.name,
            mib(b.gateway.capacity_bytes),
            mib(b.storage.capacity_bytes),
            grouped(self.fill.records as f64),
            mib(self.fill.bytes),
            self.fill.seconds,
        );
        if let Some(i) = &self.idle {
            let _ = writeln!(
                md,
                "Idle: {n} connections added {c} MiB of VmRSS ({cu:.1} KiB each; the server \
                 gained {f} open files); one subscription to an empty topic on each added \
                 {s} MiB more ({su:.1} KiB each), kept the server busy at {cpu:.2} cores and \
                 held {g} MiB of the gateway's budget. One reader of the filled topic got its \
                 first response after {pa:.0} ms alone and {ps:.0} ms beside the idle \
                 subscriptions, and read {ra} records/s alone and {rs} beside them.\n",
                n = grouped(i.units as f64),
                c = mib(i
                    .with_connections
                    .rss_bytes
                    .saturating_sub(i.before.rss_bytes)),
                cu = i.per_connection_bytes / 1024.0,
                f = i.server_files_added,
                s = mib(i
                    .with_subscriptions
                    .rss_bytes
                    .saturating_sub(i.with_connections.rss_bytes)),
                su = i.per_subscription_bytes / 1024.0,
                cpu = i.subscriptions_server_cpu_cores,
                g = mib(i.budgets_with_subscriptions.gateway.used_bytes),
                pa = i.probe_alone.first_response_max_ms,
                ps = i.probe_with_subscriptions.first_response_max_ms,
                ra = grouped(i.probe_alone.records_per_s),
                rs = grouped(i.probe_with_subscriptions.records_per_s),
            );
        }
        md.push_str(
            "| subscribers (stalled + active) | producers | VmRSS before (MiB) | VmRSS, stalled \
             open (MiB) | peak VmRSS, baseline (MiB) | peak VmRSS, with stalled (MiB) | gateway \
             budget used at most, baseline / with stalled (MiB) | budget waiters at most | \
             stalled with a first response, all rounds (p50 / max wait) |\n",
        );
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for s in &self.steps {
            md.push_str(&memory_row(s));
            md.push('\n');
        }
        md.push('\n');
        md.push_str(
            "| subscribers | readers × records | baseline records/s (MiB/s) | with stalled \
             records/s (MiB/s) | ratio (range) | readers finished, baseline / with stalled | \
             producers records/s of target, baseline / with stalled | server CPU (cores), \
             baseline / with stalled |\n",
        );
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for s in &self.steps {
            md.push_str(&throughput_row(s));
            md.push('\n');
        }
        if !self.errors.is_empty() {
            md.push_str("\nProblems:\n\n");
            for e in &self.errors {
                let _ = writeln!(md, "- {e}");
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0.0), "0");
        assert_eq!(grouped(999.4), "999");
        assert_eq!(grouped(1000.0), "1,000");
        assert_eq!(grouped(1_234_567.8), "1,234,568");
        assert_eq!(grouped(-3.0), "0");
    }
}
