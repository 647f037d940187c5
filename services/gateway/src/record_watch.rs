//! Record watches: how subscriptions wait at the end of a partition.
//!
//! Every subscription partition that has caught up waits for new records.
//! Polling each with a long-poll `Fetch` costs a request per partition per
//! wait, which at thousands of partitions is all the CPU there is. Instead
//! the gateway keeps one `WatchRecords` stream per storage node, shared by
//! every subscription: a caught-up partition registers a watch on it and
//! is told when the high watermark passes its offset. Idle partitions cost
//! nothing on either side.
//!
//! Anything unusual is left to the routed `Fetch` path, which already
//! knows how to find leaders and name errors: a watch the node could not
//! answer (it does not lead the partition, or stopped leading it), a
//! stream that broke or was never answered, and storage nodes that predate
//! watches (UNIMPLEMENTED; asked again after [`LEGACY_RETRY`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use streambus_proto::internal::{PartitionRef, RecordWatch, WatchRecordsRequest};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::router::Router;

/// How long a watch waits before the storage node answers it anyway.
pub(crate) const WATCH_WAIT: Duration = Duration::from_secs(10);
/// How long a storage node that answered UNIMPLEMENTED is polled instead.
const LEGACY_RETRY: Duration = Duration::from_secs(60);
/// The most additions and cancellations one request on the stream carries.
const MAX_CHANGES_PER_REQUEST: usize = 4096;

/// How a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The partition's high watermark, as its leader saw it: past the
    /// watched offset, or not when the wait ran out.
    HighWatermark(i64),
    /// Ask with a routed fetch: the node could not answer the watch, the
    /// stream broke, or the node does not serve watches.
    Route,
}

enum Change {
    Add(RecordWatch),
    Cancel(u64),
}

/// One `WatchRecords` stream to a storage node.
struct Session {
    changes: mpsc::UnboundedSender<Change>,
    /// Registered watches; `None` once the stream ended (nothing more
    /// will be answered on it).
    waiters: Mutex<Option<HashMap<u64, oneshot::Sender<Woken>>>>,
    /// The task running the stream.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Session {
    fn waiters(&self) -> MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<Woken>>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Arc<Session>>,
    /// Storage nodes that do not serve watches, until when.
    legacy: HashMap<String, Instant>,
    next_id: u64,
}

/// The gateway's record watches, one stream per storage node.
#[derive(Clone)]
pub(crate) struct RecordWatches {
    router: Router,
    state: Arc<Mutex<State>>,
}

/// A registered watch: cancelled on the stream when dropped before it
/// fired (its subscription ended).
struct Registered {
    session: Arc<Session>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let pending = self
            .session
            .waiters()
            .as_mut()
            .and_then(|w| w.remove(&self.id))
            .is_some();
        if pending {
            let _ = self.session.changes.send(Change::Cancel(self.id));
        }
    }
}

impl RecordWatches {
    pub(crate) fn new(router: Router) -> RecordWatches {
        RecordWatches {
            router,
            state: Arc::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `topic`/`partition` has records at `offset`, for at
    /// most about `wait`.
    pub(crate) async fn wait(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        wait: Duration,
    ) -> Woken {
        let Ok((addr, _)) = self.router.metadata().leader(topic, partition) else {
            return Woken::Route;
        };
        let Some((session, id)) = self.session(&addr) else {
            return Woken::Route;
        };
        let (tx, rx) = oneshot::channel();
        match session.waiters().as_mut() {
            Some(w) => {
                w.insert(id, tx);
            }
            None => return Woken::Route,
        }
        let registered = Registered { session, id };
        let watch = RecordWatch {
            id,
            partition: Some(PartitionRef {
                topic: topic.to_string(),
                partition,
            }),
            offset,
            max_wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        if registered.session.changes.send(Change::Add(watch)).is_err() {
            return Woken::Route;
        }
        // The node answers after `wait` at the latest; past that and the
        // attempt timeout, the stream is taken to be stuck.
        let limit = wait + self.router.attempt_timeout();
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(woken)) => woken,
            // The stream ended.
            Ok(Err(_)) => Woken::Route,
            Err(_) => {
                // The node holds the stream open but does not answer:
                // every watch on it goes the routed way, and the next
                // wait opens a new stream.
                tracing::debug!(%addr, "record watch stream stopped answering; closing it");
                self.close(&addr, &registered.session);
                Woken::Route
            }
        }
    }

    /// Ends `session` (the stream to `addr`): its waiters are answered
    /// [`Woken::Route`], and it leaves the map unless replaced already.
    fn close(&self, addr: &str, session: &Arc<Session>) {
        // Dropping the senders answers every waiter.
        session.waiters().take();
        if let Some(task) = session
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
        let mut state = self.state();
        if state
            .sessions
            .get(addr)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            state.sessions.remove(addr);
        }
    }

    /// The stream to `addr` and an id for a new watch on it; `None` when
    /// the node does not serve watches.
    fn session(&self, addr: &str) -> Option<(Arc<Session>, u64)> {
        let mut state = self.state();
        if let Some(until) = state.legacy.get(addr) {
            if Instant::now() < *until {
                return None;
            }
            state.legacy.remove(addr);
        }
        state.next_id += 1;
        let id = state.next_id;
        if let Some(s) = state.sessions.get(addr) {
            return Some((s.clone(), id));
        }
        let (changes, rx) = mpsc::unbounded_channel();
        let session = Arc::new(Session {
            changes,
            waiters: Mutex::new(Some(HashMap::new())),
            task: Mutex::new(None),
        });
        state.sessions.insert(addr.to_string(), session.clone());
        let task = tokio::spawn(self.clone().run(addr.to_string(), session.clone(), rx));
        *session.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        Some((session, id))
    }

    /// Runs the stream to `addr` until it ends; then every watch still
    /// registered on it is answered [`Woken::Route`].
    async fn run(self, addr: String, session: Arc<Session>, rx: mpsc::UnboundedReceiver<Change>) {
        let requests = futures::stream::unfold(rx, |mut rx| async move {
            let first = rx.recv().await?;
            let mut request = WatchRecordsRequest::default();
            let add = |c: Change, r: &mut WatchRecordsRequest| match c {
                Change::Add(w) => r.add.push(w),
                Change::Cancel(id) => r.cancel.push(id),
            };
            add(first, &mut request);
            while request.add.len() + request.cancel.len() < MAX_CHANGES_PER_REQUEST {
                match rx.try_recv() {
                    Ok(c) => add(c, &mut request),
                    Err(_) => break,
                }
            }
            Some((request, rx))
        });
        let opened = match self.router.client(&addr) {
            Ok(mut client) => client.watch_records(requests).await,
            Err(e) => Err(e.to_status()),
        };
        match opened {
            Ok(response) => {
                let mut fired = response.into_inner();
                loop {
                    match fired.message().await {
                        Ok(Some(m)) => {
                            let mut waiters = session.waiters();
                            let Some(w) = waiters.as_mut() else { break };
                            for f in m.fired {
                                if let Some(tx) = w.remove(&f.id) {
                                    let _ = tx.send(if f.unanswered {
                                        Woken::Route
                                    } else {
                                        Woken::HighWatermark(f.high_watermark)
                                    });
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(%addr, %status, "record watch stream ended");
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(%addr, "storage node does not serve record watches; subscriptions poll it");
                self.state()
                    .legacy
                    .insert(addr.clone(), Instant::now() + LEGACY_RETRY);
            }
            Err(status) => {
                tracing::debug!(%addr, %status, "record watch stream could not open");
            }
        }
        session
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.close(&addr, &session);
    }
}
