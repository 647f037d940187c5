//! `WatchRecords`: one stream per gateway carrying many record watches.
//!
//! A subscription that has caught up on a partition registers a watch
//! (partition, offset) instead of polling with a `Fetch` of its own; the
//! watch fires once the partition's high watermark passes the offset, or
//! after its wait. An idle watch is a future parked on the replica's high
//! watermark channel: no request, no timer wake-up, no CPU.
//!
//! A watch on a partition this node does not lead, or stops leading, or
//! whose offset is past the log end, fires as `unanswered`: the gateway
//! then asks with a routed `Fetch`, which names the reason and finds the
//! new leader. The stream ends when the node drains (every watch left is
//! the gateway's to route again).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{AbortHandle, Abortable, BoxFuture};
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use prometheus_client::metrics::gauge::Gauge;
use streambus_proto::internal::{
    FiredWatch, RecordWatch, WatchRecordsRequest, WatchRecordsResponse,
};
use streambus_proto::{Error, Reason};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use crate::metrics::Metrics;
use crate::partitions::Partitions;
use crate::replica::Replica;

/// The most watches one response carries; more fired at once go in the
/// next.
const MAX_FIRED_PER_RESPONSE: usize = 4096;
/// The most watches one stream may hold: a gateway registers one per
/// caught-up partition of its subscriptions.
pub(crate) const MAX_WATCHES_PER_STREAM: usize = 1 << 20;

/// The response stream of `WatchRecords`.
pub type WatchRecordsStream =
    Pin<Box<dyn Stream<Item = Result<WatchRecordsResponse, Status>> + Send + 'static>>;

/// What a stream's watches need from the node.
pub(crate) struct Watches {
    pub partitions: Arc<Partitions>,
    pub metrics: Metrics,
    pub max_wait: Duration,
    pub draining: watch::Receiver<bool>,
}

/// Counts a watch in the node's gauge while it lives.
struct Counted(Gauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Watches {
    /// Serves one stream: its watches run until they fire, are cancelled,
    /// or the stream ends.
    pub fn serve(self, inbound: Streaming<WatchRecordsRequest>) -> WatchRecordsStream {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(self.run(inbound, tx));
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    async fn run(
        self,
        mut inbound: Streaming<WatchRecordsRequest>,
        tx: mpsc::Sender<Result<WatchRecordsResponse, Status>>,
    ) {
        let mut pending: FuturesUnordered<BoxFuture<'static, Option<FiredWatch>>> =
            FuturesUnordered::new();
        let mut handles: HashMap<u64, AbortHandle> = HashMap::new();
        let mut draining = self.draining.clone();
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(m)) => {
                        for id in m.cancel {
                            if let Some(h) = handles.remove(&id) {
                                h.abort();
                            }
                        }
                        for w in m.add {
                            if handles.len() >= MAX_WATCHES_PER_STREAM {
                                let _ = tx.send(Err(Error::new(
                                    Reason::Overloaded,
                                    format!("more than {MAX_WATCHES_PER_STREAM} record watches on one stream"),
                                ).to_status())).await;
                                return;
                            }
                            let (handle, registration) = AbortHandle::new_pair();
                            if let Some(old) = handles.insert(w.id, handle) {
                                old.abort();
                            }
                            let fut = Abortable::new(self.watch(w), registration)
                                .map(Result::ok);
                            pending.push(fut.boxed());
                        }
                    }
                    // The gateway closed its side, or the stream broke.
                    Ok(None) | Err(_) => return,
                },
                Some(first) = pending.next(), if !pending.is_empty() => {
                    let mut fired = Vec::new();
                    let mut next = first;
                    loop {
                        if let Some(f) = next {
                            handles.remove(&f.id);
                            fired.push(f);
                        }
                        if fired.len() >= MAX_FIRED_PER_RESPONSE {
                            break;
                        }
                        // Whatever else fired by now goes in the same response.
                        match pending.next().now_or_never() {
                            Some(Some(f)) => next = f,
                            _ => break,
                        }
                    }
                    if !fired.is_empty()
                        && tx.send(Ok(WatchRecordsResponse { fired })).await.is_err()
                    {
                        return;
                    }
                },
                () = draining.wait_for(|d| *d).map(|_| ()) => {
                    let _ = tx.send(Err(Error::new(
                        Reason::ShuttingDown,
                        "the storage node is draining: route the watched partitions again",
                    ).to_status())).await;
                    return;
                },
                () = tx.closed() => return,
            }
        }
    }

    /// One watch, until it fires.
    fn watch(&self, w: RecordWatch) -> BoxFuture<'static, FiredWatch> {
        let id = w.id;
        let unanswered = move |hw| FiredWatch {
            id,
            high_watermark: hw,
            unanswered: true,
        };
        let replica = match w
            .partition
            .as_ref()
            .map(|p| self.partitions.leader_replica(&p.topic, p.partition))
        {
            Some(Ok(r)) => r,
            _ => return futures::future::ready(unanswered(-1)).boxed(),
        };
        let wait = Duration::from_millis(u64::from(w.max_wait_ms)).min(self.max_wait);
        let deadline = tokio::time::Instant::now() + wait;
        let mut hw_rx = replica.watch_high_watermark();
        // Not the replica itself: a watch must not keep a closed log open.
        let weak: Weak<Replica> = Arc::downgrade(&replica);
        drop(replica);
        self.metrics.record_watches.inc();
        let counted = Counted(self.metrics.record_watches.clone());
        let offset = w.offset;
        async move {
            let _counted = counted;
            loop {
                let hw = *hw_rx.borrow_and_update();
                let Some(replica) = weak.upgrade() else {
                    return unanswered(hw);
                };
                if !replica.is_leader() || offset > replica.log.end_offset() {
                    return unanswered(hw);
                }
                drop(replica);
                if hw > offset {
                    return FiredWatch {
                        id,
                        high_watermark: hw,
                        unanswered: false,
                    };
                }
                match tokio::time::timeout_at(deadline, hw_rx.changed()).await {
                    Ok(Ok(())) => {}
                    // The replica was closed.
                    Ok(Err(_)) => return unanswered(hw),
                    Err(_) => {
                        return FiredWatch {
                            id,
                            high_watermark: hw,
                            unanswered: false,
                        };
                    }
                }
            }
        }
        .boxed()
    }
}
