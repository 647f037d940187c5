//! `streambus cluster status|add-controller|remove-controller|decommission|recommission`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};
use streambus_client::v1;

use super::GatewayArgs;
use super::output::table;

/// Arguments of `streambus cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
    #[command(flatten)]
    pub(super) gateway: GatewayArgs,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// Controllers, storage nodes, and partitions that are under-replicated,
    /// offline or below min.insync.replicas
    Status {
        /// Output format
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Add a controller to the Raft group: as a learner, then as a voter
    /// once it has caught up. Start it first, with an empty data directory
    /// and controller.join = true
    AddController {
        /// The new controller's controller.node_id
        id: u64,
        /// HOST:PORT at which the other controllers and clients reach it
        address: String,
    },
    /// Remove a controller (voter or learner) from the Raft group
    RemoveController {
        /// Its controller.node_id
        id: u64,
    },
    /// Move every replica off a storage node so it can be stopped for good
    Decommission {
        /// Storage node id
        node_id: u64,
        /// Wait until no replica is left on the node, printing progress
        #[arg(long)]
        wait: bool,
    },
    /// End a storage node's decommissioning: it takes new replicas again
    /// (replicas already moved off stay where they are)
    Recommission {
        /// Storage node id
        node_id: u64,
    },
}

/// How often `decommission --wait` looks at the progress.
const DECOMMISSION_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

pub(super) async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let client = args.gateway.connect().await?;
    let mut out = std::io::stdout();
    match args.command {
        ClusterCommand::Status { format } => {
            let status = client.describe_cluster().await?;
            match format {
                Format::Text => text(&mut out, &status)?,
                Format::Json => {
                    serde_json::to_writer_pretty(&mut out, &to_json(&status))?;
                    writeln!(out)?;
                }
            }
        }
        ClusterCommand::AddController { id, address } => {
            let members = client.add_controller(id, &address).await?;
            writeln!(out, "controller {id} added as a voter")?;
            writeln!(out)?;
            members_table(&mut out, &members)?;
        }
        ClusterCommand::RemoveController { id } => {
            let members = client.remove_controller(id).await?;
            writeln!(
                out,
                "controller {id} removed; stop it (it serves no metadata any more)"
            )?;
            writeln!(out)?;
            members_table(&mut out, &members)?;
        }
        ClusterCommand::Decommission { node_id, wait } => {
            let mut node = client.decommission_storage_node(node_id).await?;
            writeln!(out, "{}", progress(&node))?;
            let mut last = node.replicas;
            while wait && node.replicas > 0 {
                out.flush()?;
                tokio::time::sleep(DECOMMISSION_POLL).await;
                let status = client.describe_cluster().await?;
                node = status
                    .storage_nodes
                    .into_iter()
                    .find(|n| n.node_id == node_id)
                    .ok_or_else(|| anyhow::anyhow!("storage node {node_id} is gone"))?;
                if node.replicas != last {
                    last = node.replicas;
                    writeln!(out, "{}", progress(&node))?;
                }
            }
        }
        ClusterCommand::Recommission { node_id } => {
            let node = client.recommission_storage_node(node_id).await?;
            writeln!(
                out,
                "storage node {node_id} is active: it hosts {} replicas and takes new ones",
                node.replicas
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn role(voter: bool) -> String {
    if voter { "voter" } else { "learner" }.to_string()
}

fn members_table(out: &mut impl Write, members: &[v1::ControllerMember]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| vec![m.node_id.to_string(), m.address.clone(), role(m.voter)])
        .collect();
    table(out, &["CONTROLLER", "ADDRESS", "ROLE"], &rows)
}

/// One line on a decommissioning node's progress.
fn progress(n: &v1::StorageNodeStatus) -> String {
    match n.replicas {
        0 => format!(
            "storage node {} is decommissioned: it hosts no replicas and can be stopped",
            n.node_id
        ),
        1 => format!(
            "storage node {} is decommissioning: 1 replica left to move",
            n.node_id
        ),
        r => format!(
            "storage node {} is decommissioning: {r} replicas left to move",
            n.node_id
        ),
    }
}

/// A storage node's place in the cluster: `active`, `decommissioning`
/// (replicas still on it) or `decommissioned` (none left).
fn node_state(n: &v1::StorageNodeStatus) -> &'static str {
    match (n.decommissioning, n.replicas) {
        (false, _) => "active",
        (true, 0) => "decommissioned",
        (true, _) => "decommissioning",
    }
}

fn text(out: &mut impl Write, s: &v1::DescribeClusterResponse) -> std::io::Result<()> {
    writeln!(out, "{:<20}{}", "CLUSTER-ID", s.cluster_id)?;
    writeln!(out, "{:<20}{}", "METADATA-VERSION", s.metadata_version)?;
    writeln!(out)?;
    let rows: Vec<Vec<String>> = s
        .controllers
        .iter()
        .map(|c| {
            if c.reachable {
                vec![
                    c.node_id.to_string(),
                    c.address.clone(),
                    role(c.voter),
                    c.state.clone(),
                    c.term.to_string(),
                    id_or_dash(c.leader_id),
                    c.last_log_index.to_string(),
                    c.last_applied.to_string(),
                ]
            } else {
                let mut row = vec![
                    c.node_id.to_string(),
                    c.address.clone(),
                    role(c.voter),
                    format!("unreachable ({})", c.error),
                ];
                row.extend(std::iter::repeat_n("-".to_string(), 4));
                row
            }
        })
        .collect();
    table(
        out,
        &[
            "CONTROLLER",
            "ADDRESS",
            "ROLE",
            "STATE",
            "TERM",
            "LEADER",
            "LAST-LOG",
            "LAST-APPLIED",
        ],
        &rows,
    )?;
    writeln!(out)?;
    let rows: Vec<Vec<String>> = s
        .storage_nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.to_string(),
                n.address.clone(),
                if n.alive { "yes" } else { "no" }.to_string(),
                node_state(n).to_string(),
                if n.rack.is_empty() {
                    "-".to_string()
                } else {
                    n.rack.clone()
                },
                n.leader_partitions.to_string(),
                match n.max_partitions {
                    0 => n.replicas.to_string(),
                    max => format!("{}/{max}", n.replicas),
                },
                disk(n),
            ]
        })
        .collect();
    table(
        out,
        &[
            "STORAGE-NODE",
            "ADDRESS",
            "ALIVE",
            "STATE",
            "RACK",
            "LEADS",
            "REPLICAS",
            "DISK",
        ],
        &rows,
    )?;
    for n in s.storage_nodes.iter().filter(|n| n.decommissioning) {
        writeln!(out, "{}", progress(n))?;
    }
    for (title, list) in [
        ("UNDER-REPLICATED PARTITIONS", &s.under_replicated),
        ("OFFLINE PARTITIONS", &s.offline),
        ("BELOW-MIN-ISR PARTITIONS", &s.below_min_isr),
    ] {
        writeln!(out)?;
        if list.is_empty() {
            writeln!(out, "{title}: none")?;
            continue;
        }
        writeln!(out, "{title}: {}", list.len())?;
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|p| {
                let d = p.partition.clone().unwrap_or_default();
                vec![
                    p.topic.clone(),
                    d.partition.to_string(),
                    id_or_dash(d.leader),
                    join(&d.replicas),
                    join(&d.isr),
                    p.min_insync_replicas.to_string(),
                ]
            })
            .collect();
        table(
            out,
            &["TOPIC", "PARTITION", "LEADER", "REPLICAS", "ISR", "MIN-ISR"],
            &rows,
        )?;
    }
    Ok(())
}

/// A node's disk: free of total, `FULL` past its watermark, `-` when the
/// node did not report it.
fn disk(n: &v1::StorageNodeStatus) -> String {
    if n.disk_total_bytes == 0 {
        return "-".to_string();
    }
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let free = if n.disk_available_bytes >= 1 << 30 {
        format!("{:.1}GiB", gib(n.disk_available_bytes))
    } else {
        format!(
            "{:.1}MiB",
            n.disk_available_bytes as f64 / f64::from(1u32 << 20)
        )
    };
    let used = 100.0 - n.disk_available_bytes as f64 * 100.0 / n.disk_total_bytes as f64;
    format!(
        "{}{free}-free,{used:.0}%-used",
        if n.disk_full { "FULL:" } else { "" }
    )
}

fn to_json(s: &v1::DescribeClusterResponse) -> Value {
    let partitions = |list: &[v1::PartitionStatus]| -> Vec<Value> {
        list.iter()
            .map(|p| {
                let d = p.partition.clone().unwrap_or_default();
                json!({
                    "topic": p.topic,
                    "partition": d.partition,
                    "leader": d.leader,
                    "leader_epoch": d.leader_epoch,
                    "replicas": d.replicas,
                    "isr": d.isr,
                    "offline_replicas": d.offline_replicas,
                    "min_insync_replicas": p.min_insync_replicas,
                })
            })
            .collect()
    };
    json!({
        "cluster_id": s.cluster_id,
        "metadata_version": s.metadata_version,
        "controllers": s.controllers.iter().map(|c| json!({
            "node_id": c.node_id,
            "address": c.address,
            "reachable": c.reachable,
            "state": c.state,
            "term": c.term,
            "leader_id": c.leader_id,
            "last_log_index": c.last_log_index,
            "last_applied": c.last_applied,
            "voter": c.voter,
            "error": c.error,
        })).collect::<Vec<_>>(),
        "storage_nodes": s.storage_nodes.iter().map(|n| json!({
            "node_id": n.node_id,
            "address": n.address,
            "alive": n.alive,
            "rack": n.rack,
            "leader_partitions": n.leader_partitions,
            "replicas": n.replicas,
            "max_partitions": n.max_partitions,
            "state": node_state(n),
            "decommissioning": n.decommissioning,
            "disk_total_bytes": n.disk_total_bytes,
            "disk_available_bytes": n.disk_available_bytes,
            "disk_full": n.disk_full,
        })).collect::<Vec<_>>(),
        "under_replicated": partitions(&s.under_replicated),
        "offline": partitions(&s.offline),
        "below_min_isr": partitions(&s.below_min_isr),
    })
}

fn id_or_dash(id: u64) -> String {
    if id == 0 {
        "-".to_string()
    } else {
        id.to_string()
    }
}

fn join(ids: &[u64]) -> String {
    super::topic::join(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> v1::DescribeClusterResponse {
        let p = v1::PartitionDescription {
            partition: 2,
            leader: 1,
            leader_epoch: 4,
            replicas: vec![1, 2, 3],
            isr: vec![1],
            ..Default::default()
        };
        let ps = v1::PartitionStatus {
            topic: "orders".into(),
            partition: Some(p),
            min_insync_replicas: 2,
        };
        v1::DescribeClusterResponse {
            cluster_id: "c-1".into(),
            metadata_version: 42,
            controllers: vec![
                v1::ControllerStatus {
                    node_id: 1,
                    address: "127.0.0.1:7401".into(),
                    reachable: true,
                    state: "leader".into(),
                    term: 3,
                    leader_id: 1,
                    last_log_index: 40,
                    last_applied: 40,
                    voter: true,
                    ..Default::default()
                },
                v1::ControllerStatus {
                    node_id: 2,
                    address: "127.0.0.1:7411".into(),
                    reachable: false,
                    voter: true,
                    error: "TIMEOUT: no answer".into(),
                    ..Default::default()
                },
                v1::ControllerStatus {
                    node_id: 3,
                    address: "127.0.0.1:7431".into(),
                    reachable: true,
                    state: "learner".into(),
                    ..Default::default()
                },
            ],
            storage_nodes: vec![
                v1::StorageNodeStatus {
                    node_id: 1,
                    address: "127.0.0.1:7402".into(),
                    alive: true,
                    rack: String::new(),
                    leader_partitions: 1,
                    replicas: 1,
                    decommissioning: false,
                    disk_total_bytes: 100 << 30,
                    disk_available_bytes: 40 << 30,
                    disk_full: false,
                    max_partitions: 100,
                },
                v1::StorageNodeStatus {
                    node_id: 2,
                    address: "127.0.0.1:7412".into(),
                    alive: true,
                    rack: "r1".into(),
                    leader_partitions: 0,
                    replicas: 2,
                    decommissioning: true,
                    disk_total_bytes: 8 << 20,
                    disk_available_bytes: 1 << 19,
                    disk_full: true,
                    max_partitions: 0,
                },
            ],
            under_replicated: vec![ps.clone()],
            offline: vec![],
            below_min_isr: vec![ps],
        }
    }

    #[test]
    fn text_lists_controllers_nodes_and_partitions_needing_attention() {
        let mut out = Vec::new();
        text(&mut out, &status()).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("CLUSTER-ID          c-1"), "{out}");
        assert!(
            out.contains("1           127.0.0.1:7401  voter    leader"),
            "{out}"
        );
        assert!(
            out.contains("3           127.0.0.1:7431  learner  learner"),
            "{out}"
        );
        assert!(out.contains("unreachable (TIMEOUT: no answer)"), "{out}");
        assert!(out.contains("UNDER-REPLICATED PARTITIONS: 1"), "{out}");
        assert!(out.contains("OFFLINE PARTITIONS: none"), "{out}");
        assert!(
            out.contains("orders  2          1       1,2,3     1    2"),
            "{out}"
        );
        assert!(
            out.contains(
                "1             127.0.0.1:7402  yes    active           -     1      1/100     40.0GiB-free,60%-used"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "2             127.0.0.1:7412  yes    decommissioning  r1    0      2         FULL:0.5MiB-free,94%-used"
            ),
            "{out}"
        );
        assert!(
            out.contains("storage node 2 is decommissioning: 2 replicas left to move"),
            "{out}"
        );
    }

    #[test]
    fn decommission_progress_says_when_the_node_can_be_stopped() {
        let mut n = status().storage_nodes[1].clone();
        assert_eq!(node_state(&n), "decommissioning");
        n.replicas = 1;
        assert_eq!(
            progress(&n),
            "storage node 2 is decommissioning: 1 replica left to move"
        );
        n.replicas = 0;
        assert_eq!(node_state(&n), "decommissioned");
        assert_eq!(
            progress(&n),
            "storage node 2 is decommissioned: it hosts no replicas and can be stopped"
        );
    }

    #[test]
    fn members_are_listed_with_their_role() {
        let mut out = Vec::new();
        let member = |id: u64, voter| v1::ControllerMember {
            node_id: id,
            address: format!("127.0.0.1:74{id}1"),
            voter,
        };
        members_table(&mut out, &[member(1, true), member(4, false)]).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "CONTROLLER  ADDRESS         ROLE\n\
             1           127.0.0.1:7411  voter\n\
             4           127.0.0.1:7441  learner\n"
        );
    }

    #[test]
    fn json_has_every_section() {
        let v = to_json(&status());
        assert_eq!(v["controllers"][0]["state"], "leader");
        assert_eq!(v["controllers"][1]["reachable"], false);
        assert_eq!(v["storage_nodes"][0]["leader_partitions"], 1);
        assert_eq!(v["storage_nodes"][0]["state"], "active");
        assert_eq!(v["storage_nodes"][1]["state"], "decommissioning");
        assert_eq!(v["storage_nodes"][1]["disk_full"], true);
        assert_eq!(v["storage_nodes"][0]["disk_available_bytes"], 40u64 << 30);
        assert_eq!(v["below_min_isr"][0]["isr"], json!([1]));
        assert_eq!(v["offline"], json!([]));
    }
}
