//! The Raft network client: openraft RPCs as JSON payloads over the
//! internal `RaftService` gRPC service. Each peer gets a lazily connecting
//! tonic channel, so a peer that is down only costs failed RPCs.
//!
//! Every connection this controller makes to another controller (Raft
//! RPCs here, and the leader's probes in `membership.rs` and `server.rs`)
//! goes through [`PeerDial`], which may rewrite the peer's address.

use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use streambus_proto::internal::RaftPayload;
use streambus_proto::internal::raft_service_client::RaftServiceClient;
use tonic::transport::Channel;

use crate::store::TypeConfig;

/// Largest Raft message (append batches and snapshot chunks are far smaller).
pub(crate) const MAX_RAFT_MESSAGE_BYTES: usize = 64 << 20;

/// How this controller reaches another controller: maps the address the
/// other controller has in the Raft membership (what it advertises, what
/// `AddController` was given) to the address to connect to. The identity
/// unless [`crate::ServeOptions::peer_dial`] sets one.
#[derive(Clone)]
pub struct PeerDial(Arc<dyn Fn(&str) -> String + Send + Sync>);

impl PeerDial {
    /// Dials `map(address)` instead of `address`.
    pub fn new(map: impl Fn(&str) -> String + Send + Sync + 'static) -> PeerDial {
        PeerDial(Arc::new(map))
    }

    /// Dials every address as it is.
    pub(crate) fn direct() -> PeerDial {
        PeerDial::new(str::to_string)
    }

    /// The address to connect to for the controller at `address`.
    pub(crate) fn resolve(&self, address: &str) -> String {
        (self.0)(address)
    }

    /// A lazily connecting channel (nothing is dialled until the first
    /// RPC) to the controller at `address`.
    pub(crate) fn channel(&self, address: &str) -> Result<Channel, tonic::transport::Error> {
        streambus_service::grpc::channel(&self.resolve(address))
    }
}

impl std::fmt::Debug for PeerDial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerDial(..)")
    }
}

/// Builds one [`PeerClient`] per replication target.
#[derive(Debug, Clone)]
pub struct Network {
    backoff: Duration,
    dial: PeerDial,
}

impl Network {
    /// A network that dials peers through `dial` and waits `backoff` before
    /// retrying an unreachable peer.
    pub fn new(backoff: Duration, dial: PeerDial) -> Network {
        Network { backoff, dial }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        let client = self.dial.channel(&node.addr).map(|channel| {
            RaftServiceClient::new(channel)
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        });
        PeerClient {
            target,
            node: node.clone(),
            client,
            backoff: self.backoff,
        }
    }
}

/// The RPC client for one peer.
pub struct PeerClient {
    target: u64,
    node: BasicNode,
    client: Result<RaftServiceClient<Channel>, tonic::transport::Error>,
    backoff: Duration,
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e))),
        };
        let data = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data: data.into() });
        request.set_timeout(option.hard_ttl());
        let result = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let payload = result.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let reply: Result<Resp, RaftError<u64, E>> =
            serde_json::from_slice(&payload.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
