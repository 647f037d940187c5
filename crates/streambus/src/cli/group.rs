//! `streambus group list|describe|reset-offsets|delete`.

use std::io::Write;
use std::process::ExitCode;

use streambus_client::v1;

use super::GatewayArgs;
use super::consume::parse_since;
use super::output::table;

/// Arguments of `streambus group`.
#[derive(Debug, clap::Args)]
pub struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
    #[command(flatten)]
    pub(super) gateway: GatewayArgs,
}

#[derive(Debug, clap::Subcommand)]
enum GroupCommand {
    /// List consumer groups
    #[command(visible_alias = "ls")]
    List,
    /// Show a group's state, members and assignments, and per partition its
    /// committed offset, end offset and lag
    Describe {
        /// Group id
        group: String,
    },
    /// Set a group's committed offsets for a topic: prints the plan, and
    /// applies it with --execute. The group must have no live members.
    #[command(group(
        clap::ArgGroup::new("to")
            .required(true)
            .args(["to_earliest", "to_latest", "to_datetime", "to_offset", "shift_by"]),
    ))]
    ResetOffsets {
        /// Group id
        group: String,
        /// The topic whose offsets are reset
        #[arg(long)]
        topic: String,
        /// Only these partitions (comma-separated; default: all)
        #[arg(long, value_delimiter = ',')]
        partitions: Vec<u32>,
        /// To the log start
        #[arg(long)]
        to_earliest: bool,
        /// To the end (skip everything stored)
        #[arg(long)]
        to_latest: bool,
        /// To the first record at or after TIME: RFC 3339 or a duration ago (10m, 2h)
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        to_datetime: Option<i64>,
        /// To this offset (clamped to the partition's log start and end)
        #[arg(long, value_name = "N")]
        to_offset: Option<i64>,
        /// Move each committed offset by N records (negative: back)
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Apply the plan (without it, only print it)
        #[arg(long)]
        execute: bool,
    },
    /// Delete a group without live members, and its committed offsets
    Delete {
        /// Group id
        group: String,
    },
}

fn partitions_text(list: &[v1::TopicPartitions]) -> String {
    let parts: Vec<String> = list
        .iter()
        .map(|t| {
            let ps: Vec<String> = t.partitions.iter().map(u32::to_string).collect();
            format!("{}:{}", t.topic, ps.join(","))
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn offset_text(o: i64) -> String {
    if o < 0 { "-".into() } else { o.to_string() }
}

fn lag_time_text(ms: i64) -> String {
    match ms {
        ..0 => "-".into(),
        0 => "0s".into(),
        ms => {
            humantime::format_duration(std::time::Duration::from_secs((ms as u64).div_ceil(1000)))
                .to_string()
        }
    }
}

pub(super) async fn run(args: GroupArgs) -> anyhow::Result<ExitCode> {
    let client = args.gateway.connect().await?;
    let mut out = std::io::stdout();
    match args.command {
        GroupCommand::List => {
            let groups = client.list_groups().await?;
            let rows: Vec<Vec<String>> = groups
                .iter()
                .map(|g| vec![g.group.clone(), g.state.clone(), g.members.to_string()])
                .collect();
            table(&mut out, &["GROUP", "STATE", "MEMBERS"], &rows)?;
        }
        GroupCommand::Describe { group } => {
            let d = client.describe_group(&group).await?;
            let g = d.group.unwrap_or_default();
            if g.state == "dead" {
                anyhow::bail!("UNKNOWN_GROUP: group {group:?} does not exist");
            }
            writeln!(out, "group:     {}", g.group)?;
            writeln!(out, "state:     {}", g.state)?;
            writeln!(out, "epoch:     {}", g.group_epoch)?;
            writeln!(out, "assignor:  {}", g.assignor)?;
            writeln!(out, "members:   {}", g.members.len())?;
            writeln!(out, "total lag: {}", d.total_lag)?;
            if !g.members.is_empty() {
                writeln!(out)?;
                let rows: Vec<Vec<String>> = g
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            m.member_id.clone(),
                            m.member_epoch.to_string(),
                            m.state.clone(),
                            if m.client_id.is_empty() {
                                "-".into()
                            } else {
                                m.client_id.clone()
                            },
                            partitions_text(&m.assigned),
                            partitions_text(&m.revoking),
                        ]
                    })
                    .collect();
                table(
                    &mut out,
                    &["MEMBER", "EPOCH", "STATE", "CLIENT", "ASSIGNED", "REVOKING"],
                    &rows,
                )?;
            }
            if !d.partitions.is_empty() {
                writeln!(out)?;
                let rows: Vec<Vec<String>> = d
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.topic.clone(),
                            p.partition.to_string(),
                            if p.member_id.is_empty() {
                                "-".into()
                            } else {
                                p.member_id.clone()
                            },
                            offset_text(p.committed_offset),
                            offset_text(p.end_offset),
                            offset_text(p.lag),
                            lag_time_text(p.lag_ms),
                        ]
                    })
                    .collect();
                table(
                    &mut out,
                    &[
                        "TOPIC",
                        "PARTITION",
                        "MEMBER",
                        "COMMITTED",
                        "END",
                        "LAG",
                        "LAG-TIME",
                    ],
                    &rows,
                )?;
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            partitions,
            to_earliest,
            to_latest,
            to_datetime,
            to_offset,
            shift_by,
            execute,
        } => {
            use v1::reset_offsets_request::To;
            let to = if to_earliest {
                To::Earliest(true)
            } else if to_latest {
                To::Latest(true)
            } else if let Some(ts) = to_datetime {
                To::TimestampMs(ts)
            } else if let Some(o) = to_offset {
                To::Offset(o)
            } else if let Some(n) = shift_by {
                To::ShiftBy(n)
            } else {
                anyhow::bail!(
                    "say where to: --to-earliest, --to-latest, --to-datetime, --to-offset or --shift-by"
                );
            };
            let r = client
                .reset_offsets(v1::ResetOffsetsRequest {
                    group: group.clone(),
                    topic,
                    partitions,
                    to: Some(to),
                    execute,
                })
                .await?;
            let rows: Vec<Vec<String>> = r
                .plan
                .iter()
                .map(|p| {
                    vec![
                        p.topic.clone(),
                        p.partition.to_string(),
                        offset_text(p.current_offset),
                        p.new_offset.to_string(),
                    ]
                })
                .collect();
            table(&mut out, &["TOPIC", "PARTITION", "CURRENT", "NEW"], &rows)?;
            if r.executed {
                writeln!(out, "committed the new offsets of group {group}")?;
            } else {
                writeln!(
                    out,
                    "dry run: nothing changed (add --execute to commit these offsets)"
                )?;
            }
        }
        GroupCommand::Delete { group } => {
            client.delete_group(&group).await?;
            writeln!(out, "deleted group {group}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_lag_times_print_plainly() {
        assert_eq!(offset_text(-1), "-");
        assert_eq!(offset_text(42), "42");
        assert_eq!(lag_time_text(-1), "-");
        assert_eq!(lag_time_text(0), "0s");
        assert_eq!(lag_time_text(1_500), "2s");
        assert_eq!(lag_time_text(61_000), "1m 1s");
        let list = vec![
            v1::TopicPartitions {
                topic: "a".into(),
                partitions: vec![0, 2],
            },
            v1::TopicPartitions {
                topic: "b".into(),
                partitions: vec![1],
            },
        ];
        assert_eq!(partitions_text(&list), "a:0,2 b:1");
        assert_eq!(partitions_text(&[]), "-");
    }
}
