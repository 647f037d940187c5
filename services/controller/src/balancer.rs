//! Leader-only background work on partition placement, decided by pure
//! functions of the metadata ([`Metadata::reassignment_steps`],
//! [`Metadata::preferred_leader_moves`]) and carried out as
//! `ChangePartitions` proposals, one Raft entry per batch:
//!
//! - **reassignments**: replicas on decommissioning nodes move elsewhere,
//!   one step per partition whenever the metadata changes (a new replica
//!   caught up) and at least every [`REASSIGN_TICK`];
//! - **preferred leaders**: every `leader_rebalance_interval_ms` (0 = off),
//!   leaderships go back to the first replica once it is alive and in sync,
//!   so leaders spread evenly again after a node returns.
//!
//! Every change is based on a partition epoch and checked again when
//! applied, so a step decided on a view that changed meanwhile is skipped
//! and decided again on the next round.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::grpc::Proposer;
use crate::metadata::{
    Command, CommandResponse, MAX_CHANGES_PER_COMMAND, Metadata, PartitionChange,
};

/// How often reassignments are looked at when nothing changes.
const REASSIGN_TICK: Duration = Duration::from_millis(500);

/// Runs until `cancel`; does nothing while this controller does not lead.
pub(crate) async fn run(
    proposer: Proposer,
    leader_rebalance: Option<Duration>,
    cancel: CancellationToken,
) {
    let mut changes = proposer.subscribe();
    let mut next_rebalance = leader_rebalance.map(|every| Instant::now() + every);
    loop {
        let wake = next_rebalance.map_or(REASSIGN_TICK, |at| {
            at.saturating_duration_since(Instant::now())
                .min(REASSIGN_TICK)
        });
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wake) => {}
            r = changes.changed() => if r.is_err() { return },
        }
        if proposer.ensure_leader().is_err() {
            continue;
        }
        let metadata: Arc<Metadata> = proposer.metadata();
        let steps = metadata.reassignment_steps();
        if !steps.is_empty() {
            propose(&proposer, "reassignment", steps).await;
        }
        if let (Some(every), Some(at)) = (leader_rebalance, next_rebalance)
            && Instant::now() >= at
        {
            next_rebalance = Some(Instant::now() + every);
            let moves = proposer.metadata().preferred_leader_moves();
            if !moves.is_empty() {
                propose(&proposer, "preferred leader", moves).await;
            }
        }
    }
}

/// Proposes `changes` in batches of [`MAX_CHANGES_PER_COMMAND`]. A change
/// the state machine would refuse on the metadata it was decided on is a
/// bug; it is logged and never proposed (it would be decided again and
/// again).
async fn propose(proposer: &Proposer, what: &str, changes: Vec<PartitionChange>) {
    let metadata = proposer.metadata();
    let changes: Vec<PartitionChange> = changes
        .into_iter()
        .filter(|c| match metadata.check_partition_change(c) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(kind = what, change = ?c, error = %e, "decided an invalid partition change");
                false
            }
        })
        .collect();
    for batch in changes.chunks(MAX_CHANGES_PER_COMMAND) {
        for c in batch {
            tracing::info!(kind = what, topic = %c.topic, partition = c.partition,
                leader = c.leader, replicas = ?c.replicas, isr = ?c.isr, "proposing a partition change");
        }
        let command = Command::ChangePartitions {
            changes: batch.to_vec(),
        };
        match proposer.propose(command).await {
            Ok(CommandResponse::Changed { applied }) => {
                tracing::info!(
                    kind = what,
                    applied,
                    proposed = batch.len(),
                    "partition changes applied"
                );
            }
            Ok(other) => {
                tracing::warn!(kind = what, response = ?other, "unexpected answer to partition changes")
            }
            Err(e) => tracing::warn!(kind = what, error = %e, "cannot propose partition changes"),
        }
    }
}
