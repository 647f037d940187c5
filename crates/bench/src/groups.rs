//! `streambus-bench groups`: consumer groups against a running StreamBus.
//!
//! 1. **Commits**: offset commits per second across many groups, each
//!    commit one `CommitOffsets` call (one replicated append on the
//!    group's coordinator), from `concurrency` callers at once.
//! 2. **Rebalance**: three members of a group over a 12-partition topic;
//!    one leaves; the time until the two others own six partitions each.
//! 3. **Throughput**: one group member reading a topic from its start,
//!    against one `Subscribe` of the same topic, alternating, same run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Serialize;
use streambus_client::v1::group_service_client::GroupServiceClient;
use streambus_client::{
    Client, GroupConsumer, GroupEvent, GroupOptions, OffsetReset, ProducerConfig, Record,
    StartFrom, SubscribeOptions, v1,
};
use tonic::transport::Channel;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub gateway: String,
    /// Groups committing in the commit phase.
    pub groups: usize,
    /// Commits in flight at once.
    pub concurrency: usize,
    pub commit_duration: Duration,
    /// Records of the throughput phase.
    pub records: usize,
    pub record_bytes: usize,
    pub partitions: u32,
    /// Rounds of the rebalance and throughput phases (medians reported).
    pub rounds: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub groups: usize,
    pub concurrency: usize,
    pub commits: u64,
    pub commits_per_second: f64,
    pub commit_p50_ms: f64,
    pub commit_p99_ms: f64,
    /// Per round: from the leave until both others own six partitions.
    pub rebalance_ms: Vec<f64>,
    pub rebalance_median_ms: f64,
    pub records: usize,
    pub record_bytes: usize,
    pub direct_records_per_second: Vec<f64>,
    pub group_records_per_second: Vec<f64>,
    pub direct_median: f64,
    pub group_median: f64,
    /// group / direct, medians.
    pub group_vs_direct: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

impl Report {
    pub fn markdown(&self) -> String {
        let rounds = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "| measure | result |\n|---|---|\n\
             | offset commits/s ({} groups, {} in flight) | {:.0} (p50 {:.2} ms, p99 {:.2} ms; {} commits) |\n\
             | rebalance when 1 of 3 members leaves (12 partitions) | median {:.0} ms (rounds: {}) |\n\
             | direct `Subscribe`, records/s ({} x {} B) | median {:.0} (rounds: {}) |\n\
             | group member, records/s | median {:.0} (rounds: {}) |\n\
             | group / direct | {:.2} |\n",
            self.groups,
            self.concurrency,
            self.commits_per_second,
            self.commit_p50_ms,
            self.commit_p99_ms,
            self.commits,
            self.rebalance_median_ms,
            rounds(&self.rebalance_ms),
            self.records,
            self.record_bytes,
            self.direct_median,
            rounds(&self.direct_records_per_second),
            self.group_median,
            rounds(&self.group_records_per_second),
            self.group_vs_direct,
        )
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

pub async fn run(o: Options) -> anyhow::Result<Report> {
    let client = Client::connect(o.gateway.clone()).await?;
    let channel = Channel::from_shared(format!(
        "http://{}",
        o.gateway.trim_start_matches("http://")
    ))?
    .connect()
    .await
    .context("connecting to the gateway")?;
    let groups = GroupServiceClient::new(channel);

    // 1. Commits.
    let topic = unique("bench-commits");
    client
        .create_topic(&topic, o.partitions, 0, HashMap::new())
        .await?;
    produce(&client, &topic, 1_000, 16).await?;
    eprintln!(
        "commits: {} groups, {} in flight, {:?}",
        o.groups, o.concurrency, o.commit_duration
    );
    // The first commit of a group may create the __groups topic and load
    // shards: warm every group first.
    let names: Vec<String> = (0..o.groups).map(|i| format!("{topic}-g{i}")).collect();
    for name in &names {
        commit(&mut groups.clone(), name, &topic, 0, 1).await?;
    }
    let deadline = Instant::now() + o.commit_duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..o.concurrency {
        let mut g = groups.clone();
        let names = names.clone();
        let topic = topic.clone();
        let partitions = o.partitions;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = w;
            while Instant::now() < deadline {
                let group = &names[i % names.len()];
                let t = Instant::now();
                commit(&mut g, group, &topic, (i as u32) % partitions, i as i64).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                i += o.concurrency;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let commits = latencies.len() as u64;
    let (commit_p50_ms, commit_p99_ms) = (pct(0.5), pct(0.99));
    for name in &names {
        let _ = client.delete_group(name).await;
    }
    client.delete_topic(&topic).await?;

    // 2. Rebalance.
    let topic = unique("bench-rebalance");
    client.create_topic(&topic, 12, 0, HashMap::new()).await?;
    let mut rebalance_ms = Vec::new();
    for round in 0..o.rounds {
        let group = format!("{topic}-r{round}");
        let mut members = Vec::new();
        for _ in 0..3 {
            members.push((
                client.group_consumer(options(&group, &topic)).await?,
                0usize,
            ));
        }
        settle(&mut members, &[4, 4, 4]).await?;
        let (leaving, _) = members.pop().expect("three members");
        let t = Instant::now();
        leaving.close().await?;
        settle(&mut members, &[6, 6]).await?;
        rebalance_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        for (m, _) in members {
            m.close().await?;
        }
        client.delete_group(&group).await?;
        eprintln!("rebalance round {round}: {:.0} ms", rebalance_ms[round]);
    }
    client.delete_topic(&topic).await?;

    // 3. Throughput.
    let topic = unique("bench-throughput");
    client
        .create_topic(&topic, o.partitions, 0, HashMap::new())
        .await?;
    produce(&client, &topic, o.records, o.record_bytes).await?;
    let (mut direct, mut group) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        direct.push(read_direct(&client, &topic, o.records).await?);
        group.push(read_group(&client, &format!("{topic}-g{round}"), &topic, o.records).await?);
        eprintln!(
            "throughput round {round}: direct {:.0}/s, group {:.0}/s",
            direct[round], group[round]
        );
    }
    client.delete_topic(&topic).await?;

    let (direct_median, group_median) = (median(&direct), median(&group));
    Ok(Report {
        groups: o.groups,
        concurrency: o.concurrency,
        commits,
        commits_per_second: commits as f64 / elapsed,
        commit_p50_ms,
        commit_p99_ms,
        rebalance_median_ms: median(&rebalance_ms),
        rebalance_ms,
        records: o.records,
        record_bytes: o.record_bytes,
        direct_records_per_second: direct,
        group_records_per_second: group,
        direct_median,
        group_median,
        group_vs_direct: group_median / direct_median,
    })
}

fn options(group: &str, topic: &str) -> GroupOptions {
    GroupOptions {
        reset: OffsetReset::Earliest,
        client_id: "streambus-bench".into(),
        ..GroupOptions::new(group, &[topic])
    }
}

/// One commit from a tool (no member): one replicated append.
async fn commit(
    g: &mut GroupServiceClient<Channel>,
    group: &str,
    topic: &str,
    partition: u32,
    offset: i64,
) -> anyhow::Result<()> {
    g.commit_offsets(v1::CommitOffsetsRequest {
        group: group.to_string(),
        member_id: String::new(),
        member_epoch: -1,
        offsets: vec![v1::OffsetCommit {
            topic: topic.to_string(),
            partition,
            offset,
            metadata: String::new(),
        }],
    })
    .await
    .with_context(|| format!("committing for {group}"))?;
    Ok(())
}

async fn produce(client: &Client, topic: &str, records: usize, bytes: usize) -> anyhow::Result<()> {
    let producer = client.producer(ProducerConfig::default());
    let value = Bytes::from(vec![b'x'; bytes]);
    let mut deliveries = Vec::with_capacity(records);
    for i in 0..records {
        let record = Record {
            key: Some(Bytes::from(i.to_string())),
            value: Some(value.clone()),
            ..Record::default()
        };
        deliveries.push(producer.send(topic, record, None).await?);
    }
    producer.flush().await;
    for d in deliveries {
        d.await?;
    }
    producer.close().await;
    Ok(())
}

/// Reads events of every member until their partition counts are `want`
/// (in any order).
async fn settle(members: &mut [(GroupConsumer, usize)], want: &[usize]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for (c, owned) in members.iter_mut() {
            while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(5), c.next()).await {
                match e? {
                    GroupEvent::Assigned(tps) => *owned += tps.len(),
                    GroupEvent::Revoked(tps) | GroupEvent::Lost(tps) => *owned -= tps.len(),
                    GroupEvent::Record(..) => {}
                }
            }
        }
        let mut counts: Vec<usize> = members.iter().map(|(_, n)| *n).collect();
        counts.sort();
        let mut want = want.to_vec();
        want.sort();
        if counts == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("members never owned {want:?} partitions: {counts:?}");
        }
    }
}

async fn read_direct(client: &Client, topic: &str, records: usize) -> anyhow::Result<f64> {
    use futures::StreamExt;
    let started = Instant::now();
    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new(topic)
        })
        .await?;
    let mut n = 0;
    while n < records {
        match sub.next().await {
            Some(r) => {
                r?;
                n += 1;
            }
            None => bail!("the subscription ended"),
        }
    }
    Ok(records as f64 / started.elapsed().as_secs_f64())
}

async fn read_group(
    client: &Client,
    group: &str,
    topic: &str,
    records: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut c = client.group_consumer(options(group, topic)).await?;
    let mut n = 0;
    while n < records {
        match c.next().await {
            Some(Ok(GroupEvent::Record(..))) => n += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the group consumer ended"),
        }
    }
    let rate = records as f64 / started.elapsed().as_secs_f64();
    c.close().await?;
    client.delete_group(group).await?;
    Ok(rate)
}
