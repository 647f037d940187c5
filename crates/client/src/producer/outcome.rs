//! A batch's outcome, shared by the delivery futures of its records: one
//! allocation per batch instead of a channel per record.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use streambus_proto::Error;

use super::RecordMetadata;
use super::lock;
use crate::ClientError;

/// How a batch ended.
#[derive(Debug, Clone)]
enum Ended {
    /// Written at this base offset (`-1` when the server assigns none, as
    /// with `acks=none`).
    Written(i64),
    Failed(Error),
    /// The producer went away before the batch was resolved.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    ended: Option<Ended>,
    /// The tasks waiting, one slot per delivery future that waited.
    wakers: Vec<Waker>,
}

/// The outcome of one batch; see the module docs.
#[derive(Debug)]
pub(crate) struct BatchOutcome {
    partition: u32,
    state: Mutex<State>,
}

impl BatchOutcome {
    pub fn new(partition: u32) -> Arc<BatchOutcome> {
        Arc::new(BatchOutcome {
            partition,
            state: Mutex::new(State::default()),
        })
    }

    /// The delivery of the batch's record `index`.
    pub fn delivery(self: &Arc<Self>, index: u32) -> Delivery {
        Delivery {
            outcome: self.clone(),
            index,
            slot: None,
        }
    }

    /// Resolves every record: offsets from `base_offset`, or the error.
    /// Only the first call counts.
    pub fn resolve(&self, result: Result<i64, Error>) {
        self.end(match result {
            Ok(base) => Ended::Written(base),
            Err(e) => Ended::Failed(e),
        });
    }

    /// Fails every record with [`ClientError::Closed`] unless resolved.
    pub fn close(&self) {
        self.end(Ended::Closed);
    }

    fn end(&self, ended: Ended) {
        let wakers = {
            let mut state = lock(&self.state);
            if state.ended.is_some() {
                return;
            }
            state.ended = Some(ended);
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

/// One record's delivery: resolves once its batch is acknowledged or
/// failed.
#[derive(Debug)]
pub(crate) struct Delivery {
    outcome: Arc<BatchOutcome>,
    index: u32,
    /// Where this future's waker is in the outcome's list.
    slot: Option<usize>,
}

impl Future for Delivery {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut state = lock(&this.outcome.state);
        let partition = this.outcome.partition;
        match &state.ended {
            Some(Ended::Written(base)) => Poll::Ready(Ok(RecordMetadata {
                partition,
                offset: if *base >= 0 {
                    base + i64::from(this.index)
                } else {
                    -1
                },
            })),
            Some(Ended::Failed(e)) => Poll::Ready(Err(ClientError::Server(e.clone()))),
            Some(Ended::Closed) => Poll::Ready(Err(ClientError::Closed)),
            None => {
                match this.slot {
                    Some(slot) => {
                        if !state.wakers[slot].will_wake(cx.waker()) {
                            state.wakers[slot] = cx.waker().clone();
                        }
                    }
                    None => {
                        this.slot = Some(state.wakers.len());
                        state.wakers.push(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use streambus_proto::Reason;

    use super::*;

    /// Counts its wake-ups.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(d: &mut Delivery, waker: &Waker) -> Poll<Result<RecordMetadata, ClientError>> {
        Pin::new(d).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn every_waiting_record_is_woken_once_with_its_own_offset() {
        let outcome = BatchOutcome::new(3);
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut deliveries: Vec<Delivery> = (0..3).map(|i| outcome.delivery(i)).collect();
        for d in &mut deliveries {
            assert!(poll(d, &waker).is_pending());
            // Polled again with the same waker: still one slot each.
            assert!(poll(d, &waker).is_pending());
        }
        assert_eq!(lock(&outcome.state).wakers.len(), 3);
        outcome.resolve(Ok(100));
        assert_eq!(counter.0.load(Ordering::SeqCst), 3);
        for (i, d) in deliveries.iter_mut().enumerate() {
            let Poll::Ready(Ok(md)) = poll(d, &waker) else {
                panic!("record {i} not resolved");
            };
            assert_eq!((md.partition, md.offset), (3, 100 + i as i64));
        }
        // A later resolution changes nothing.
        outcome.resolve(Err(Error::new(Reason::Timeout, "late")));
        assert!(matches!(
            poll(&mut deliveries[0], &waker),
            Poll::Ready(Ok(_))
        ));
    }

    #[test]
    fn failures_and_closing_reach_every_record() {
        let waker = Waker::from(Arc::new(Counter(AtomicUsize::new(0))));
        let failed = BatchOutcome::new(0);
        let mut d = failed.delivery(0);
        failed.resolve(Err(Error::new(Reason::UnknownTopic, "gone")));
        let Poll::Ready(Err(e)) = poll(&mut d, &waker) else {
            panic!("not failed");
        };
        assert_eq!(e.reason(), Some(Reason::UnknownTopic));

        let closed = BatchOutcome::new(0);
        let mut d = closed.delivery(0);
        assert!(poll(&mut d, &waker).is_pending());
        closed.close();
        assert!(matches!(
            poll(&mut d, &waker),
            Poll::Ready(Err(ClientError::Closed))
        ));

        // Without acks the server assigns no offsets.
        let unacked = BatchOutcome::new(1);
        let mut d = unacked.delivery(5);
        unacked.resolve(Ok(-1));
        let Poll::Ready(Ok(md)) = poll(&mut d, &waker) else {
            panic!("not resolved");
        };
        assert_eq!(md.offset, -1);
    }
}
