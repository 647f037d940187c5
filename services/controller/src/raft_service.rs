//! The internal `RaftService`: decodes openraft RPCs (JSON payloads), hands
//! them to the local Raft and returns its `Result` as JSON, so remote Raft
//! errors reach the caller intact.

use serde::Serialize;
use serde::de::DeserializeOwned;
use streambus_proto::internal::RaftPayload;
use streambus_proto::internal::raft_service_server::RaftService;
use streambus_proto::{Error, Reason};
use tonic::{Request, Response, Status};

use crate::store::Raft;

/// Serves Raft RPCs from other controllers.
pub struct RaftServiceImpl {
    raft: Raft,
}

impl RaftServiceImpl {
    /// Wraps the local Raft.
    pub fn new(raft: Raft) -> RaftServiceImpl {
        RaftServiceImpl { raft }
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().data).map_err(|e| {
        Error::new(
            Reason::InvalidArgument,
            format!("malformed raft payload: {e}"),
        )
        .to_status()
    })
}

fn encode<T: Serialize>(reply: &T) -> Result<Response<RaftPayload>, Status> {
    let data = serde_json::to_vec(reply).map_err(|e| {
        Error::new(Reason::Internal, format!("cannot encode raft reply: {e}")).to_status()
    })?;
    Ok(Response::new(RaftPayload { data: data.into() }))
}

#[tonic::async_trait]
impl RaftService for RaftServiceImpl {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
