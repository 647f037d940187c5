//! Reading a StreamBus process's memory budgets from its HTTP `/metrics`
//! (Prometheus text format).

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The gateway's budget (`gateway.memory_budget_bytes`).
pub const GATEWAY_BUDGET: &str = "gateway.memory_budget_bytes";
/// The storage node's budget (`storage_node.memory_budget_bytes`).
pub const STORAGE_BUDGET: &str = "storage_node.memory_budget_bytes";

/// One memory budget at one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Budget {
    /// `<prefix>_memory_budget_bytes`: the capacity.
    pub capacity_bytes: u64,
    /// `<prefix>_memory_used_bytes`: reserved now.
    pub used_bytes: u64,
    /// `<prefix>_memory_waiters`: reservations waiting for room.
    pub waiters: u64,
}

/// The gateway's and the storage node's budgets at one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Budgets {
    /// `streambus_gateway_*{budget="gateway.memory_budget_bytes"}`.
    pub gateway: Budget,
    /// `streambus_storage_*{budget="storage_node.memory_budget_bytes"}`;
    /// zero when the process runs no storage node.
    pub storage: Budget,
}

impl Budgets {
    /// Reads both budgets from a scrape. `None` when the gateway's
    /// budget is not in it (not a gateway's `/metrics`).
    pub fn parse(text: &str) -> Option<Budgets> {
        let budget = |prefix: &str, name: &str| -> Option<Budget> {
            let value = |metric: &str| sample(text, &format!("{prefix}_{metric}"), name);
            Some(Budget {
                capacity_bytes: value("memory_budget_bytes")? as u64,
                used_bytes: value("memory_used_bytes").unwrap_or(0.0) as u64,
                waiters: value("memory_waiters").unwrap_or(0.0) as u64,
            })
        };
        Some(Budgets {
            gateway: budget("streambus_gateway", GATEWAY_BUDGET)?,
            storage: budget("streambus_storage", STORAGE_BUDGET).unwrap_or_default(),
        })
    }
}

/// The value of the sample of `metric` labelled `budget="<budget>"`.
fn sample(text: &str, metric: &str, budget: &str) -> Option<f64> {
    let label = format!("budget=\"{budget}\"");
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once('}')?;
        if !labels.split(',').any(|l| l.trim() == label) {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Fetches `http://<addr>/metrics` (HTTP/1.0: the answer is the whole
/// body, never chunked).
pub async fn scrape(addr: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("http://{addr}/metrics did not answer within 10 s"))?
        .with_context(|| format!("no metrics at http://{addr}/metrics"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("http://{addr}/metrics: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "http://{addr}/metrics answered {status:?}"
    );
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "\
# HELP streambus_gateway_memory_budget_bytes Capacity of the memory budget.
# TYPE streambus_gateway_memory_budget_bytes gauge
streambus_gateway_memory_budget_bytes{budget=\"gateway.memory_budget_bytes\"} 402653184
streambus_gateway_memory_budget_bytes{budget=\"gateway.decompression_budget_bytes\"} 67108864
streambus_gateway_memory_used_bytes{budget=\"gateway.memory_budget_bytes\"} 1048576
streambus_gateway_memory_used_bytes{budget=\"gateway.decompression_budget_bytes\"} 5
streambus_gateway_memory_waiters{budget=\"gateway.memory_budget_bytes\"} 3
streambus_storage_memory_budget_bytes{budget=\"storage_node.memory_budget_bytes\"} 402653184
streambus_storage_memory_used_bytes{budget=\"storage_node.memory_budget_bytes (consumer fetches: three quarters)\"} 7
streambus_storage_memory_used_bytes{budget=\"storage_node.memory_budget_bytes\"} 65536
";

    #[test]
    fn budgets_are_read_by_their_label() {
        let b = Budgets::parse(SCRAPE).unwrap();
        assert_eq!(
            b.gateway,
            Budget {
                capacity_bytes: 402_653_184,
                used_bytes: 1_048_576,
                waiters: 3,
            }
        );
        assert_eq!(
            b.storage,
            Budget {
                capacity_bytes: 402_653_184,
                used_bytes: 65_536,
                waiters: 0,
            }
        );
    }

    #[test]
    fn a_scrape_without_the_gateway_budget_is_not_one() {
        assert_eq!(Budgets::parse("up 1\n"), None);
        let storage_only: String = SCRAPE
            .lines()
            .filter(|l| !l.starts_with("streambus_gateway"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(Budgets::parse(&storage_only), None);
    }
}
