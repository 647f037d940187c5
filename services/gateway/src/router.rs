//! Sends partition requests to the storage node that leads the partition,
//! and hides leader moves: a request that finds no leader or a stale one is
//! retried against fresh metadata until its deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus_proto::internal::storage_service_client::StorageServiceClient;
use streambus_proto::{Error, Reason};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::metadata::MetadataCache;

/// Routes partition requests to their leaders.
#[derive(Clone)]
pub struct Router {
    metadata: MetadataCache,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// Whether an error from a storage node means "ask again, elsewhere or
/// later" rather than "this request is wrong".
fn should_retry(e: &Error) -> bool {
    e.retriable()
        // A storage node that has not yet applied the metadata that created
        // the topic: the gateway's own view already knows it.
        || matches!(e.reason, Reason::UnknownTopic | Reason::UnknownPartition)
}

impl Router {
    /// A router over `metadata`.
    pub fn new(metadata: MetadataCache) -> Router {
        Router {
            metadata,
            channels: Arc::default(),
        }
    }

    /// The metadata cache.
    pub fn metadata(&self) -> &MetadataCache {
        &self.metadata
    }

    fn client(&self, addr: &str) -> Result<StorageServiceClient<Channel>, Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
                    Error::new(
                        Reason::Internal,
                        format!("bad storage node address {addr:?}: {e}"),
                    )
                })?;
                let c = endpoint
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .initial_stream_window_size(streambus_service::grpc::STREAM_WINDOW_BYTES)
                    .initial_connection_window_size(
                        streambus_service::grpc::CONNECTION_WINDOW_BYTES,
                    )
                    .connect_lazy();
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(StorageServiceClient::new(channel)
            .max_decoding_message_size(streambus_service::grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(streambus_service::grpc::MAX_MESSAGE_BYTES))
    }

    /// Runs `call` against the leader of `topic`/`partition`, retrying
    /// retriable failures with fresh metadata until `deadline`.
    pub async fn call<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        deadline: Instant,
        call: F,
    ) -> Result<T, Error>
    where
        F: Fn(StorageServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut backoff = Duration::from_millis(5);
        loop {
            let attempt = match self.metadata.leader_address(topic, partition) {
                Ok(addr) => match self.client(&addr) {
                    Ok(client) => call(client)
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| Error::from_status(&s)),
                    Err(e) => return Err(e),
                },
                // The gateway's own view says the topic or partition does
                // not exist: that is final.
                Err(e) if !e.retriable() => return Err(e),
                Err(e) => Err(e),
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(e) if should_retry(&e) && Instant::now() + backoff < deadline => {
                    tracing::debug!(%topic, partition, error = %e, "retrying partition request");
                    // The metadata may be stale: refresh, then back off.
                    if let Err(refresh) = self.metadata.refresh().await {
                        tracing::debug!(error = %refresh, "metadata refresh failed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
