//! Sends partition requests to the storage node that leads the partition,
//! and hides leader moves: a request that finds no leader or a stale one is
//! retried against fresh metadata until its deadline.
//!
//! Every attempt has its own deadline as well (`gateway.storage_call_timeout_ms`
//! plus the call's own long-poll wait, never past the request's deadline),
//! so a storage node stuck in fsync or behind a half-open connection fails
//! the attempt with `TIMEOUT` instead of hanging the request and whatever
//! it holds.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streambus_proto::internal::storage_service_client::StorageServiceClient;
use streambus_proto::{Error, Reason};
use tokio::time::Instant;
use tonic::transport::Channel;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::metadata::MetadataCache;

/// Routes partition requests to their leaders.
#[derive(Clone)]
pub struct Router {
    metadata: MetadataCache,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    attempt_timeout: Duration,
    /// Every attempt's latency, by method and storage node.
    hops: Family<HopLabels, Histogram>,
}

/// The labels of the gateway-to-storage-node latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HopLabels {
    /// The storage node's `StorageService` method.
    pub method: &'static str,
    /// The storage node's address.
    pub storage_node: String,
}

/// How one routed request may be attempted.
#[derive(Debug, Clone, Copy)]
pub struct CallPolicy {
    /// The storage node's method, for the latency metric.
    pub method: &'static str,
    /// When the whole request (every attempt and pause) must be done.
    pub deadline: Instant,
    /// How long the storage node may legitimately hold one attempt on
    /// purpose (a long-poll fetch's wait); added to the attempt timeout.
    pub server_wait: Duration,
    /// Whether an attempt that timed out may be tried again. False for
    /// appends: the stuck node may still write the batch, and a retry
    /// would then write it twice.
    pub retry_timeouts: bool,
}

impl CallPolicy {
    /// A read (safe to repeat) of `method` that must finish by `deadline`.
    pub fn read(method: &'static str, deadline: Instant) -> CallPolicy {
        CallPolicy {
            method,
            deadline,
            server_wait: Duration::ZERO,
            retry_timeouts: true,
        }
    }

    /// A write of `method` that must finish by `deadline`; a timed-out
    /// attempt ends it.
    pub fn write(method: &'static str, deadline: Instant) -> CallPolicy {
        CallPolicy {
            method,
            deadline,
            server_wait: Duration::ZERO,
            retry_timeouts: false,
        }
    }

    /// The same policy, allowing the storage node to hold each attempt for
    /// `wait` on purpose.
    pub fn with_server_wait(self, wait: Duration) -> CallPolicy {
        CallPolicy {
            server_wait: wait,
            ..self
        }
    }
}

/// A request carrying its per-attempt deadline (`grpc-timeout`), so the
/// storage node also gives up on it.
pub fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(timeout);
    // The storage node's spans continue the current trace, if any.
    streambus_service::trace::inject(&mut r);
    r
}

/// Whether an error from a storage node means "ask again, elsewhere or
/// later" rather than "this request is wrong". A full disk is retriable for
/// the client (space may be freed) but not worth the gateway's retries:
/// the same leader would refuse again until then, so it is answered at once.
fn should_retry(e: &Error) -> bool {
    (e.retriable() && e.reason != Reason::DiskFull)
        // A storage node that has not yet applied the metadata that created
        // the topic: the gateway's own view already knows it.
        || matches!(e.reason, Reason::UnknownTopic | Reason::UnknownPartition)
}

impl Router {
    /// A router over `metadata`; one attempt on a storage node may take
    /// `attempt_timeout` (plus the call's own server wait). Every attempt's
    /// latency is observed in `hops`.
    pub fn new(
        metadata: MetadataCache,
        attempt_timeout: Duration,
        hops: Family<HopLabels, Histogram>,
    ) -> Router {
        Router {
            metadata,
            channels: Arc::default(),
            attempt_timeout,
            hops,
        }
    }

    /// How long one attempt on a storage node may take, past its own
    /// long-poll wait (`gateway.storage_call_timeout_ms`).
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// The metadata cache.
    pub fn metadata(&self) -> &MetadataCache {
        &self.metadata
    }

    pub(crate) fn client(&self, addr: &str) -> Result<StorageServiceClient<Channel>, Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = streambus_service::grpc::channel(addr).map_err(|e| {
                    Error::new(
                        Reason::Internal,
                        format!("bad storage node address {addr:?}: {e}"),
                    )
                })?;
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(StorageServiceClient::new(channel)
            .max_decoding_message_size(streambus_service::grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(streambus_service::grpc::MAX_MESSAGE_BYTES))
    }

    /// Runs `call` against the leader of `topic`/`partition`, retrying
    /// retriable failures with fresh metadata until `policy.deadline`.
    /// `call` gets the client, the attempt's timeout (pass it on with
    /// [`request`]) and the leader epoch the metadata names (appends carry
    /// it, so a node that is no longer leader at that epoch refuses); the
    /// attempt is abandoned with `TIMEOUT` when it runs out.
    pub async fn call<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        policy: CallPolicy,
        call: F,
    ) -> Result<T, Error>
    where
        F: Fn(StorageServiceClient<Channel>, Duration, u64) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = policy.deadline;
        let mut backoff = Duration::from_millis(5);
        loop {
            let attempt = match self.metadata.leader(topic, partition) {
                Ok((addr, leader_epoch)) => {
                    let client = self.client(&addr)?;
                    let left = deadline.saturating_duration_since(Instant::now());
                    let own = self.attempt_timeout + policy.server_wait;
                    let timeout = own.min(left);
                    let sent = Instant::now();
                    let answered =
                        tokio::time::timeout(timeout, call(client, timeout, leader_epoch)).await;
                    self.hops
                        .get_or_create(&HopLabels {
                            method: policy.method,
                            storage_node: addr.clone(),
                        })
                        .observe(sent.elapsed().as_secs_f64());
                    match answered {
                        Ok(Ok(r)) => Ok(r.into_inner()),
                        // The storage node gave up on the attempt's
                        // `grpc-timeout` (tonic reports that as CANCELLED)
                        // a moment before the gateway's own timer.
                        Ok(Err(s))
                            if sent.elapsed() >= timeout
                                && matches!(
                                    s.code(),
                                    tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                                ) =>
                        {
                            Err(Error::new(
                                Reason::Timeout,
                                format!(
                                    "{topic}/{partition}: storage node {addr} did not answer within {} ms (gateway.storage_call_timeout_ms, or the request's deadline)",
                                    timeout.as_millis()
                                ),
                            ))
                        }
                        Ok(Err(s)) => Err(Error::from_status(&s)),
                        Err(_) if timeout < own => {
                            return Err(Error::new(
                                Reason::Timeout,
                                format!(
                                    "{topic}/{partition}: the request's deadline passed while storage node {addr} was working on it"
                                ),
                            ));
                        }
                        Err(_) => Err(Error::new(
                            Reason::Timeout,
                            format!(
                                "{topic}/{partition}: storage node {addr} did not answer within {} ms (gateway.storage_call_timeout_ms)",
                                own.as_millis()
                            ),
                        )),
                    }
                }
                // The gateway's own view says the topic or partition does
                // not exist: that is final.
                Err(e) if !e.retriable() => return Err(e),
                Err(e) => Err(e),
            };
            match attempt {
                Ok(v) => return Ok(v),
                // A write that timed out may still happen: do not repeat it.
                Err(e) if e.reason == Reason::Timeout && !policy.retry_timeouts => return Err(e),
                Err(e) if should_retry(&e) && Instant::now() + backoff < deadline => {
                    tracing::debug!(%topic, partition, error = %e, "retrying partition request");
                    // The metadata may be stale: refresh, then back off.
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, self.metadata.refresh()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(refresh)) => {
                            tracing::debug!(error = %refresh, "metadata refresh failed");
                        }
                        Err(_) => return Err(e),
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
