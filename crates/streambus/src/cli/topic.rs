//! `streambus topic create|list|describe|alter|delete`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::ExitCode;

use streambus_client::v1;

use super::output::table;
use super::{GatewayArgs, parse_key_value};

/// Arguments of `streambus topic`.
#[derive(Debug, clap::Args)]
pub struct TopicArgs {
    #[command(subcommand)]
    command: TopicCommand,
    #[command(flatten)]
    pub(super) gateway: GatewayArgs,
}

#[derive(Debug, clap::Subcommand)]
enum TopicCommand {
    /// Create a topic
    Create {
        /// Topic name: 1-249 characters of [a-zA-Z0-9._-]
        name: String,
        /// Number of partitions
        #[arg(short, long, default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition (0 = the cluster default)
        #[arg(short, long, default_value_t = 0)]
        replication_factor: u32,
        /// A topic configuration entry, e.g. retention.ms=86400000 (repeatable)
        #[arg(short, long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics
    #[command(visible_alias = "ls")]
    List,
    /// Show a topic's configuration, partitions, replicas and offsets
    Describe {
        /// Topic name
        name: String,
    },
    /// Add partitions to a topic or change its configuration
    #[command(group(
        clap::ArgGroup::new("change")
            .required(true)
            .multiple(true)
            .args(["partitions", "configs", "reset"]),
    ))]
    Alter {
        /// Topic name
        name: String,
        /// The new number of partitions: more than now (partitions are
        /// never removed)
        #[arg(short, long)]
        partitions: Option<u32>,
        /// Set a configuration entry, e.g. retention.bytes=1073741824 (repeatable)
        #[arg(short, long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Reset a configuration entry to its default (repeatable)
        #[arg(long = "delete-config", value_name = "KEY")]
        reset: Vec<String>,
    },
    /// Delete a topic and its data
    Delete {
        /// Topic name
        name: String,
    },
}

pub(super) async fn run(args: TopicArgs) -> anyhow::Result<ExitCode> {
    let client = args.gateway.connect().await?;
    let mut out = std::io::stdout();
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let configs: HashMap<String, String> = configs.into_iter().collect();
            let topic = client
                .create_topic(&name, partitions, replication_factor, configs)
                .await?;
            writeln!(
                out,
                "created topic {} with {} partition{} (replication factor {})",
                name,
                partitions,
                if partitions == 1 { "" } else { "s" },
                topic.replication_factor
            )?;
        }
        TopicCommand::List => {
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            let rows: Vec<Vec<String>> = topics
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.partitions.len().to_string(),
                        t.replication_factor.to_string(),
                    ]
                })
                .collect();
            table(
                &mut out,
                &["NAME", "PARTITIONS", "REPLICATION-FACTOR"],
                &rows,
            )?;
        }
        TopicCommand::Describe { name } => {
            let topic = client.describe_topic(&name).await?;
            let offsets = match client.partition_offsets(&name).await {
                Ok(offsets) => offsets,
                Err(e) => {
                    eprintln!("warning: cannot read partition offsets: {e}");
                    Vec::new()
                }
            };
            describe(&mut out, &topic, &offsets)?;
        }
        TopicCommand::Alter {
            name,
            partitions,
            configs,
            reset,
        } => {
            let before = client.describe_topic(&name).await?;
            if !configs.is_empty() || !reset.is_empty() {
                let set: HashMap<String, String> = configs.into_iter().collect();
                let topic = client.alter_topic_configs(&name, set, reset).await?;
                config_changes(&mut out, &name, &before.configs, &topic.configs)?;
            }
            if let Some(partitions) = partitions {
                let before = before.partitions.len();
                let topic = client.create_partitions(&name, partitions).await?;
                let after = topic.partitions.len();
                if after == before {
                    writeln!(out, "topic {name} already has {after} partitions")?;
                } else {
                    writeln!(
                        out,
                        "topic {name} now has {after} partitions (was {before})"
                    )?;
                }
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            writeln!(out, "deleted topic {name}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// One line per changed key, or a line saying nothing changed.
fn config_changes(
    out: &mut impl Write,
    name: &str,
    before: &HashMap<String, String>,
    after: &HashMap<String, String>,
) -> std::io::Result<()> {
    let after: BTreeMap<&String, &String> = after.iter().collect();
    let mut changed = 0;
    for (key, value) in after {
        let old = before.get(key).map_or("(unset)", String::as_str);
        if old != value.as_str() {
            writeln!(out, "topic {name}: {key} {old} -> {value}")?;
            changed += 1;
        }
    }
    if changed == 0 {
        writeln!(out, "topic {name}: configuration unchanged")?;
    }
    Ok(())
}

fn describe(
    out: &mut impl Write,
    topic: &v1::TopicDescription,
    offsets: &[v1::PartitionOffsets],
) -> std::io::Result<()> {
    let summary = vec![
        vec!["NAME".to_string(), topic.name.clone()],
        vec!["ID".to_string(), topic.topic_id.clone()],
        vec!["PARTITIONS".to_string(), topic.partitions.len().to_string()],
        vec![
            "REPLICATION-FACTOR".to_string(),
            topic.replication_factor.to_string(),
        ],
    ];
    for row in &summary {
        writeln!(out, "{:<20}{}", row[0], row[1])?;
    }
    writeln!(out)?;
    let configs: BTreeMap<&String, &String> = topic.configs.iter().collect();
    let rows: Vec<Vec<String>> = configs
        .into_iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect();
    table(out, &["CONFIG", "VALUE"], &rows)?;
    writeln!(out)?;
    let offsets: HashMap<u32, &v1::PartitionOffsets> =
        offsets.iter().map(|o| (o.partition, o)).collect();
    let mut partitions: Vec<&v1::PartitionDescription> = topic.partitions.iter().collect();
    partitions.sort_by_key(|p| p.partition);
    let rows: Vec<Vec<String>> = partitions
        .into_iter()
        .map(|p| {
            let o = offsets.get(&p.partition);
            let offset = |f: fn(&v1::PartitionOffsets) -> i64| {
                o.map_or_else(|| "-".to_string(), |o| f(o).to_string())
            };
            vec![
                p.partition.to_string(),
                if p.leader == 0 {
                    "-".to_string()
                } else {
                    p.leader.to_string()
                },
                p.leader_epoch.to_string(),
                join(&p.replicas),
                join(&p.isr),
                join(&p.offline_replicas),
                offset(|o| o.log_start_offset),
                offset(|o| o.high_watermark),
                offset(|o| o.log_end_offset),
            ]
        })
        .collect();
    table(
        out,
        &[
            "PARTITION",
            "LEADER",
            "EPOCH",
            "REPLICAS",
            "ISR",
            "OFFLINE",
            "LOG-START",
            "HIGH-WATERMARK",
            "LOG-END",
        ],
        &rows,
    )
}

pub(super) fn join(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    if ids.is_empty() {
        "-".to_string()
    } else {
        ids.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_prints_configs_and_partitions() {
        let topic = v1::TopicDescription {
            name: "orders".into(),
            topic_id: "t-1".into(),
            replication_factor: 3,
            configs: HashMap::from([("retention.ms".to_string(), "1000".to_string())]),
            partitions: vec![
                v1::PartitionDescription {
                    partition: 1,
                    leader: 0,
                    leader_epoch: 2,
                    replicas: vec![1, 2, 3],
                    isr: vec![],
                    offline_replicas: vec![1],
                    ..Default::default()
                },
                v1::PartitionDescription {
                    partition: 0,
                    leader: 2,
                    leader_epoch: 5,
                    replicas: vec![2, 3, 1],
                    isr: vec![2, 3],
                    offline_replicas: vec![],
                    ..Default::default()
                },
            ],
        };
        let offsets = vec![v1::PartitionOffsets {
            partition: 0,
            log_start_offset: 0,
            high_watermark: 10,
            log_end_offset: 12,
        }];
        let mut out = Vec::new();
        describe(&mut out, &topic, &offsets).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = "\
NAME                orders
ID                  t-1
PARTITIONS          2
REPLICATION-FACTOR  3

CONFIG        VALUE
retention.ms  1000

PARTITION  LEADER  EPOCH  REPLICAS  ISR  OFFLINE  LOG-START  HIGH-WATERMARK  LOG-END
0          2       5      2,3,1     2,3  -        0          10              12
1          -       2      1,2,3     -    1        -          -               -
";
        assert_eq!(text, expected);
    }
}
