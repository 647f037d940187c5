//! Changing the controller group at runtime, on the Raft leader:
//!
//! - **add** (`AddController`): the new controller (running with an empty
//!   store, `controller.join = true`) is asked who it is, added as a
//!   learner, and promoted to voter through a joint-consensus change once
//!   the leader has replicated to it everything it had when it started
//!   waiting (bounded by [`CATCH_UP_TIMEOUT`]). Asking again for a learner
//!   left behind by a timed-out attempt finishes the job; asking for a voter
//!   already at that address changes nothing.
//! - **remove** (`RemoveController`): a learner just leaves; a voter leaves
//!   through a joint-consensus change, unless it is the last voter or the
//!   voters left (or the current ones, who must commit the change) could
//!   not form a quorum among the controllers that answer now. The leader may
//!   remove itself: openraft steps it down once the change is committed.
//!   Before the membership changes, a `RemoveController` entry tells the
//!   controller (through the log, while it still gets the log) that it is
//!   removed: openraft stops replicating to it as soon as the membership
//!   without it is appended, so it would never learn otherwise, and would
//!   serve ever older metadata to whoever still watches it.
//!
//! One change at a time: a leader serializes them, and openraft refuses a
//! change while the previous one is uncommitted (`UNAVAILABLE`).

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use streambus_proto::internal::DescribeControllerRequest;
use streambus_proto::internal::controller_service_client::ControllerServiceClient;
use streambus_proto::v1::{ControllerMember, ControllerStatus};
use streambus_proto::{Error, Reason};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::grpc::{Proposer, members};
use crate::metadata::Command;
use crate::network::PeerDial;

/// How long a new controller may take to become a learner and catch up
/// with the leader's log before `AddController` gives up with `TIMEOUT`
/// (leaving it a learner that keeps receiving the log).
pub(crate) const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a controller the leader asks (the new one, or a voter whose
/// reachability counts for a removal) may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a voter change (the joint configuration, then the final one)
/// may take to commit.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the leader waits for a controller it removes to apply the
/// `RemoveController` entry before it changes the membership anyway (a
/// controller that is down learns nothing).
const APPLY_WAIT: Duration = Duration::from_secs(3);

/// Adds and removes controllers, one change at a time.
pub(crate) struct MembershipChanges {
    proposer: Proposer,
    one_at_a_time: Mutex<()>,
}

impl MembershipChanges {
    pub(crate) fn new(proposer: Proposer) -> MembershipChanges {
        MembershipChanges {
            proposer,
            one_at_a_time: Mutex::new(()),
        }
    }

    /// Adds controller `node_id` at `address` as a voter; returns the
    /// members after the change.
    pub(crate) async fn add(
        &self,
        node_id: u64,
        address: &str,
    ) -> Result<Vec<ControllerMember>, Error> {
        if node_id == 0 {
            return Err(invalid("node_id must not be 0"));
        }
        check_address(address)?;
        self.proposer.ensure_leader()?;
        let _one = self.one_at_a_time.lock().await;
        self.proposer.ensure_leader()?;
        let current = self.proposer.membership();
        let membership = current.membership();
        // Removed earlier with this id (or a removal that did not finish).
        let marked_removed = self
            .proposer
            .metadata()
            .removed_controllers
            .contains(&node_id);
        match membership.get_node(&node_id) {
            Some(node) if node.addr != address => {
                return Err(invalid(format!(
                    "controller {node_id} is already a member, at {}; remove it first to give it another address",
                    node.addr
                )));
            }
            Some(_) if membership.voter_ids().any(|v| v == node_id) => {
                if marked_removed {
                    self.proposer
                        .propose(Command::AddController { node_id })
                        .await?;
                }
                tracing::info!(node_id, %address, "controller is already a voter");
                return Ok(members(membership));
            }
            // A learner left behind by an earlier attempt: finish it.
            Some(_) => {}
            None => {
                if let Some((other, _)) = membership.nodes().find(|(_, n)| n.addr == address) {
                    return Err(invalid(format!(
                        "{address} is the address of controller {other}"
                    )));
                }
                check_joinable(self.proposer.dial(), node_id, address).await?;
            }
        }

        if marked_removed {
            self.proposer
                .propose(Command::AddController { node_id })
                .await?;
        }
        let raft = self.proposer.raft();
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        let mut target = raft.metrics().borrow().last_log_index.unwrap_or(0);
        if membership.get_node(&node_id).is_none() {
            tracing::info!(node_id, %address, "adding controller as a learner");
            let added = tokio::time::timeout_at(
                deadline,
                raft.add_learner(node_id, BasicNode::new(address), false),
            )
            .await
            .map_err(|_| {
                Error::new(
                    Reason::Timeout,
                    format!(
                        "adding controller {node_id} as a learner was not committed within {} s; it may still be applied",
                        CATCH_UP_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|e| self.proposer.write_error(e))?;
            target = target.max(added.log_id.index);
        }
        self.caught_up(node_id, address, target, deadline).await?;

        tracing::info!(node_id, %address, "controller caught up; making it a voter");
        let changed = tokio::time::timeout(
            CHANGE_TIMEOUT,
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false),
        )
        .await
        .map_err(|_| not_committed(format!("making controller {node_id} a voter")))?
        .map_err(|e| self.proposer.write_error(e))?;
        tracing::info!(node_id, %address, "controller added as a voter");
        Ok(match changed.membership {
            Some(m) => members(&m),
            None => members(self.proposer.membership().membership()),
        })
    }

    /// Waits until the leader has replicated up to `target` to learner
    /// `node_id`.
    async fn caught_up(
        &self,
        node_id: u64,
        address: &str,
        target: u64,
        deadline: Instant,
    ) -> Result<(), Error> {
        let matched = |m: &openraft::RaftMetrics<u64, BasicNode>| {
            m.replication
                .as_ref()
                .map(|r| r.get(&node_id).cloned().flatten().map_or(0, |l| l.index))
        };
        let mut rx = self.proposer.raft().metrics();
        let waited = tokio::time::timeout_at(
            deadline,
            // `None`: no longer the leader (said below).
            rx.wait_for(|m| matched(m).is_none_or(|i| i >= target)),
        )
        .await
        .map(|r| r.map(drop));
        match waited {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(Error::new(
                    Reason::ShuttingDown,
                    "the controller is shutting down",
                ));
            }
            Err(_) => {
                let at = matched(&rx.borrow()).unwrap_or(0);
                return Err(Error::new(
                    Reason::Timeout,
                    format!(
                        "controller {node_id} at {address} is a learner but did not catch up within {} s (it has the log up to index {at} of {target}); it keeps receiving the log: add it again to make it a voter once it has caught up, or remove it",
                        CATCH_UP_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
        self.proposer.ensure_leader()?;
        if self
            .proposer
            .membership()
            .membership()
            .get_node(&node_id)
            .is_none()
        {
            return Err(Error::new(
                Reason::Unavailable,
                format!("controller {node_id} was removed while it caught up"),
            ));
        }
        Ok(())
    }

    /// Removes controller `node_id` (a voter or a learner); returns the
    /// members after the change.
    pub(crate) async fn remove(&self, node_id: u64) -> Result<Vec<ControllerMember>, Error> {
        if node_id == 0 {
            return Err(invalid("node_id must not be 0"));
        }
        self.proposer.ensure_leader()?;
        let _one = self.one_at_a_time.lock().await;
        self.proposer.ensure_leader()?;
        let current = self.proposer.membership();
        let membership = current.membership();
        if membership.get_node(&node_id).is_none() {
            let ids: Vec<String> = membership.nodes().map(|(id, _)| id.to_string()).collect();
            return Err(invalid(format!(
                "controller {node_id} is not a member of the controller group (members: {})",
                ids.join(", ")
            )));
        }
        let address = membership
            .get_node(&node_id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        // Whether the controller answers (not asked for a learner).
        let mut answers = true;
        let change = if voters.contains(&node_id) {
            if voters.len() == 1 {
                return Err(invalid(format!(
                    "controller {node_id} is the last voter; the group cannot remove its last voter"
                )));
            }
            let addresses: Vec<(u64, String)> = voters
                .iter()
                .filter_map(|id| membership.get_node(id).map(|n| (*id, n.addr.clone())))
                .collect();
            let reachable = self.reachable(&addresses).await;
            check_quorum(&voters, node_id, &reachable)?;
            answers = reachable.contains(&node_id);
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        };
        tracing::info!(node_id, "removing controller");
        // First through the log, while it still replicates to the
        // controller: it learns it is removed and stops serving metadata.
        self.proposer
            .propose(Command::RemoveController { node_id })
            .await?;
        if node_id != self.proposer.node_id() && answers {
            let applied = self.proposer.metadata().version;
            if !applied_at(self.proposer.dial(), &address, applied).await {
                tracing::warn!(
                    node_id,
                    %address,
                    "the controller did not confirm it knows it is removed; stop it"
                );
            }
        }
        let unfinished = |e: Error| {
            Error::new(
                e.reason,
                format!(
                    "{}; controller {node_id} no longer serves metadata but is still a member: remove it again to finish, or add it again to keep it",
                    e.message
                ),
            )
            .with_leader_hint(e.leader_hint.clone().unwrap_or_default())
        };
        let changed = tokio::time::timeout(
            CHANGE_TIMEOUT,
            self.proposer.raft().change_membership(change, false),
        )
        .await
        .map_err(|_| unfinished(not_committed(format!("removing controller {node_id}"))))?
        .map_err(|e| unfinished(self.proposer.write_error(e)))?;
        tracing::info!(node_id, "controller removed");
        Ok(match changed.membership {
            Some(m) => members(&m),
            None => members(self.proposer.membership().membership()),
        })
    }

    /// The voters among `voters` that answer now (this controller does).
    async fn reachable(&self, voters: &[(u64, String)]) -> BTreeSet<u64> {
        let me = self.proposer.node_id();
        let dial = self.proposer.dial();
        let asks = voters.iter().map(|(id, address)| async move {
            (*id == me || describe(dial, address).await.is_ok()).then_some(*id)
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Whether removing voter `node_id` leaves a group that can still commit:
/// the change needs a quorum of the current voters (the joint
/// configuration) and then of the voters left, among those `reachable`.
fn check_quorum(
    voters: &BTreeSet<u64>,
    node_id: u64,
    reachable: &BTreeSet<u64>,
) -> Result<(), Error> {
    let quorum = |n: usize| n / 2 + 1;
    let left: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != node_id).collect();
    let list = |s: &BTreeSet<u64>| s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let reachable_left: BTreeSet<u64> = left.intersection(reachable).copied().collect();
    if reachable_left.len() < quorum(left.len()) {
        return Err(Error::new(
            Reason::Unavailable,
            format!(
                "removing controller {node_id} would leave voters {} of which only {} answer now ({}), fewer than a quorum of {}; bring the others back first, or remove one that is down",
                list(&left),
                reachable_left.len(),
                list(&reachable_left),
                quorum(left.len())
            ),
        ));
    }
    let reachable_now = voters.intersection(reachable).count();
    if reachable_now < quorum(voters.len()) {
        return Err(Error::new(
            Reason::Unavailable,
            format!(
                "only {reachable_now} of the voters {} answer now, fewer than the quorum of {} that must commit the change",
                list(voters),
                quorum(voters.len())
            ),
        ));
    }
    Ok(())
}

/// Refuses an address that is not `host:port`.
fn check_address(address: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        invalid(format!(
            "invalid controller address {address:?}: {why}; expected HOST:PORT, e.g. controller-3.controller:7401"
        ))
    };
    if address.contains("://") {
        return Err(bad("give it without a scheme"));
    }
    if address.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(bad("it contains a space or a slash"));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err(bad("the port must be 1 to 65535"));
    }
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| bad(&e.to_string()))?;
    Ok(())
}

/// Asks the controller at `address` who it is: it must be `node_id`, with
/// an empty store (a controller with Raft state belongs to a group already,
/// this one or another).
async fn check_joinable(dial: &PeerDial, node_id: u64, address: &str) -> Result<(), Error> {
    let status = describe(dial, address).await.map_err(|e| {
        Error::new(
            Reason::Unavailable,
            format!(
                "no controller answers at {address} ({e}); start controller {node_id} there first, with an empty data_dir and controller.join = true"
            ),
        )
    })?;
    if status.node_id != node_id {
        return Err(invalid(format!(
            "the controller at {address} is controller {}, not {node_id}",
            status.node_id
        )));
    }
    if status.last_log_index > 0 || !status.members.is_empty() {
        return Err(invalid(format!(
            "controller {node_id} at {address} already has Raft state (last log index {}, {} members); only a controller with an empty data_dir can join (start it with controller.join = true)",
            status.last_log_index,
            status.members.len()
        )));
    }
    Ok(())
}

/// Waits (a little) until the controller at `address` has applied the log
/// up to `index`; false when it does not say so in time.
async fn applied_at(dial: &PeerDial, address: &str, index: u64) -> bool {
    let deadline = Instant::now() + APPLY_WAIT;
    loop {
        if describe(dial, address)
            .await
            .is_ok_and(|s| s.last_applied >= index)
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `DescribeController` of the controller at `address`.
async fn describe(dial: &PeerDial, address: &str) -> Result<ControllerStatus, String> {
    let channel = dial.channel(address).map_err(|e| e.to_string())?;
    let mut client = ControllerServiceClient::new(channel);
    let mut request = tonic::Request::new(DescribeControllerRequest {});
    request.set_timeout(PROBE_TIMEOUT);
    match tokio::time::timeout(PROBE_TIMEOUT, client.describe_controller(request)).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(Error::from_status(&status).to_string()),
        Err(_) => Err(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(Reason::InvalidArgument, message)
}

fn not_committed(what: String) -> Error {
    Error::new(
        Reason::Timeout,
        format!(
            "{what} was not committed within {} s; it may still be applied (see `streambus cluster status`)",
            CHANGE_TIMEOUT.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_host_and_port() {
        for ok in [
            "127.0.0.1:7401",
            "controller-3.controller:7401",
            "[::1]:7401",
        ] {
            check_address(ok).unwrap();
        }
        for bad in [
            "",
            "127.0.0.1",
            ":7401",
            "h:0",
            "h:65536",
            "h:port",
            "http://h:7401",
            "h :7401",
            "h:7401/x",
        ] {
            let err = check_address(bad).unwrap_err();
            assert_eq!(err.reason, Reason::InvalidArgument, "{bad:?}");
            assert!(err.message.contains("HOST:PORT"), "{}", err.message);
        }
    }

    #[test]
    fn a_removal_needs_a_reachable_quorum_before_and_after() {
        let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        // Three voters, all up: any one may go.
        check_quorum(&set(&[1, 2, 3]), 2, &set(&[1, 2, 3])).unwrap();
        // 3 is down: removing it leaves 1 and 2, both up.
        check_quorum(&set(&[1, 2, 3]), 3, &set(&[1, 2])).unwrap();
        // 3 is down: removing 2 leaves 1 and 3, one of which answers.
        let err = check_quorum(&set(&[1, 2, 3]), 2, &set(&[1, 2])).unwrap_err();
        assert_eq!(err.reason, Reason::Unavailable);
        assert!(err.message.contains("voters 1, 3"), "{}", err.message);
        // Two voters: removing the other leaves this one alone, but the
        // joint configuration needs both to commit.
        check_quorum(&set(&[1, 2]), 2, &set(&[1, 2])).unwrap();
        let err = check_quorum(&set(&[1, 2]), 2, &set(&[1])).unwrap_err();
        assert!(err.message.contains("commit"), "{}", err.message);
        // Five voters, two down: removing a live one leaves 2 of 4.
        let err = check_quorum(&set(&[1, 2, 3, 4, 5]), 3, &set(&[1, 2, 3])).unwrap_err();
        assert_eq!(err.reason, Reason::Unavailable);
        check_quorum(&set(&[1, 2, 3, 4, 5]), 5, &set(&[1, 2, 3])).unwrap();
        // Four voters, two down: the change itself cannot commit.
        let err = check_quorum(&set(&[1, 2, 3, 4]), 4, &set(&[1, 2])).unwrap_err();
        assert!(err.message.contains("commit"), "{}", err.message);
    }
}
