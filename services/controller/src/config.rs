//! Controller configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::ControllerError;

/// One controller of the Raft group. Deserializes from a table
/// (`{ id = 1, address = "c-0.c:7401" }`) or, for environment variables, from
/// the string `"1=c-0.c:7401"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "PeerRepr")]
pub struct Peer {
    /// Its `node_id`.
    pub id: u64,
    /// host:port of its gRPC listener (DNS names allowed).
    pub address: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PeerRepr {
    Text(String),
    Table(PeerTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerTable {
    id: u64,
    address: String,
}

impl TryFrom<PeerRepr> for Peer {
    type Error = String;

    fn try_from(repr: PeerRepr) -> Result<Peer, String> {
        match repr {
            PeerRepr::Table(t) => Ok(Peer {
                id: t.id,
                address: t.address,
            }),
            PeerRepr::Text(s) => s.parse(),
        }
    }
}

impl FromStr for Peer {
    type Err = String;

    /// Parses `id=host:port`.
    fn from_str(s: &str) -> Result<Peer, String> {
        let bad = || {
            format!(
                "invalid peer {s:?}: expected ID=HOST:PORT, e.g. 1=controller-0.controller:7401"
            )
        };
        let (id, address) = s.trim().split_once('=').ok_or_else(bad)?;
        let id = id.trim().parse().map_err(|_| bad())?;
        let address = address.trim();
        if address.is_empty() {
            return Err(bad());
        }
        Ok(Peer {
            id,
            address: address.to_string(),
        })
    }
}

/// Settings of one controller. Every field has a dev-friendly default:
/// node 1 alone on `127.0.0.1:7401`, data under `./data/controller`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// This controller's Raft node id (explicit, never derived from a hostname).
    pub node_id: u64,
    /// Where the gRPC server (controller, Raft, health, reflection) listens.
    pub listen_addr: SocketAddr,
    /// The address other controllers and clients use to reach this one.
    /// Empty = the bound listen address.
    pub advertised_addr: String,
    /// Where the sled database lives.
    pub data_dir: PathBuf,
    /// Bytes of disk held back for the Raft store (a file next to it,
    /// released when the disk is almost full so metadata writes go on);
    /// 0 = none.
    pub disk_reserve_bytes: u64,
    /// Every voter of the Raft group, this node included. Empty = just this
    /// node (`node_id` at `advertised_addr`). Only read to bootstrap an
    /// empty store.
    pub peers: Vec<Peer>,
    /// With an empty store, never initialize a group: wait to be added to
    /// a running one (`AddController`). `peers` is then not used. Ignored
    /// once the store is initialized.
    pub join: bool,
    /// A storage node that has not heartbeated for this long is marked dead.
    pub node_lease_ms: u64,
    /// Raft leader heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Raft election timeout, lower bound.
    pub election_timeout_min_ms: u64,
    /// Raft election timeout, upper bound.
    pub election_timeout_max_ms: u64,
    /// How often the leader hands leaderships back to preferred replicas
    /// (`replicas[0]`) that are alive and in sync; 0 = never.
    pub leader_rebalance_interval_ms: u64,
}

impl Default for ControllerConfig {
    fn default() -> ControllerConfig {
        ControllerConfig {
            node_id: 1,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7401)),
            advertised_addr: String::new(),
            data_dir: PathBuf::from("./data/controller"),
            disk_reserve_bytes: 16 * 1024 * 1024,
            peers: Vec::new(),
            join: false,
            node_lease_ms: 6000,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            leader_rebalance_interval_ms: 30_000,
        }
    }
}

impl ControllerConfig {
    /// The voters to bootstrap an empty store with, with the empty list
    /// resolved to this node alone at `advertised` (the effective advertised
    /// address). `None` with `join`: an empty store waits to be added.
    pub(crate) fn bootstrap_peers(
        &self,
        advertised: &str,
    ) -> Result<Option<Vec<Peer>>, ControllerError> {
        if self.join {
            return Ok(None);
        }
        self.effective_peers(advertised).map(Some)
    }

    /// The voters, with the empty list resolved to this node alone at
    /// `advertised` (the effective advertised address).
    fn effective_peers(&self, advertised: &str) -> Result<Vec<Peer>, ControllerError> {
        let mut peers = if self.peers.is_empty() {
            vec![Peer {
                id: self.node_id,
                address: advertised.to_string(),
            }]
        } else {
            self.peers.clone()
        };
        peers.sort_by_key(|p| p.id);
        if peers.windows(2).any(|w| w[0].id == w[1].id) {
            return Err(ControllerError::Config("duplicate peer id".into()));
        }
        if !peers.iter().any(|p| p.id == self.node_id) {
            return Err(ControllerError::Config(format!(
                "node_id {} is not in peers",
                self.node_id
            )));
        }
        if let Some(p) = peers.iter().find(|p| p.address.is_empty()) {
            return Err(ControllerError::Config(format!(
                "peer {} has no address",
                p.id
            )));
        }
        Ok(peers)
    }

    pub(crate) fn validate(&self) -> Result<(), ControllerError> {
        let bad = |m: &str| Err(ControllerError::Config(m.to_string()));
        if self.node_lease_ms == 0 {
            return bad("node_lease_ms must be positive");
        }
        if self.heartbeat_interval_ms == 0 {
            return bad("heartbeat_interval_ms must be positive");
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return bad("election_timeout_min_ms must exceed heartbeat_interval_ms");
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return bad("election_timeout_max_ms must exceed election_timeout_min_ms");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_peers_means_a_single_voter_at_the_advertised_address() {
        let config = ControllerConfig::default();
        config.validate().unwrap();
        let peers = config.effective_peers("127.0.0.1:7401").unwrap();
        assert_eq!(
            peers,
            vec![Peer {
                id: 1,
                address: "127.0.0.1:7401".into()
            }]
        );
    }

    #[test]
    fn a_joining_controller_bootstraps_nothing_and_needs_no_peers() {
        let config = ControllerConfig {
            node_id: 4,
            join: true,
            peers: vec![Peer {
                id: 1,
                address: "a:1".into(),
            }],
            ..ControllerConfig::default()
        };
        assert_eq!(config.bootstrap_peers("x:1").unwrap(), None);
        let alone = ControllerConfig {
            join: false,
            peers: Vec::new(),
            ..config
        };
        assert_eq!(alone.bootstrap_peers("x:1").unwrap().unwrap().len(), 1);
    }

    #[test]
    fn node_must_be_among_its_peers() {
        let config = ControllerConfig {
            node_id: 4,
            peers: vec![Peer {
                id: 1,
                address: "a:1".into(),
            }],
            ..ControllerConfig::default()
        };
        assert!(config.effective_peers("x:1").is_err());
    }

    #[test]
    fn config_deserializes_with_defaults_and_rejects_unknown_fields() {
        let config: ControllerConfig = serde_json::from_str(
            r#"{"node_id": 2, "peers": [{"id": 1, "address": "c-0.c:7401"}, {"id": 2, "address": "c-1.c:7401"}]}"#,
        )
        .unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.node_lease_ms, 6000);
        assert_eq!(config.peers.len(), 2);
        assert!(serde_json::from_str::<ControllerConfig>(r#"{"nodeid": 2}"#).is_err());
        assert!(
            serde_json::from_str::<ControllerConfig>(r#"{"peers": [{"id": 1, "addr": "x:1"}]}"#)
                .is_err()
        );
    }

    #[test]
    fn peers_parse_from_env_friendly_strings() {
        let config: ControllerConfig =
            serde_json::from_str(r#"{"peers": ["1=c-0.c:7401", "2=c-1.c:7401"]}"#).unwrap();
        assert_eq!(
            config.peers,
            vec![
                Peer {
                    id: 1,
                    address: "c-0.c:7401".into()
                },
                Peer {
                    id: 2,
                    address: "c-1.c:7401".into()
                },
            ]
        );
        assert!("c-0.c:7401".parse::<Peer>().is_err());
        assert!("x=c:1".parse::<Peer>().is_err());
    }
}
