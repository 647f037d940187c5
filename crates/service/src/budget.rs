//! A server-wide memory budget, for work whose memory use is decided by a
//! client: above all decompressing a batch to validate or decode it.
//!
//! Per-batch caps (`streambus_record::MAX_DECOMPRESSED_SIZE`) bound what one
//! batch may expand to, but not what N concurrent requests may expand to
//! together. A [`MemoryBudget`] is shared by every request of a process:
//! before expanding a batch the caller reserves the bytes it may need, and
//! the reservation ([`Permit`]) is returned when the permit is dropped.
//! When the budget is spent the caller waits a short, bounded time for
//! other requests to finish and then refuses the work with
//! `RESOURCE_EXHAUSTED` (reason `OVERLOADED`, retriable) instead of
//! allocating.
//!
//! ```
//! use std::time::Duration;
//! use streambus_service::budget::MemoryBudget;
//!
//! # tokio_test_block_on(async {
//! let budget = MemoryBudget::new("gateway.decompression_budget_bytes", 1024);
//! let a = budget.try_acquire(1000).unwrap();
//! assert!(budget.try_acquire(100).is_err()); // only 24 bytes left
//! drop(a);                                   // released on drop
//! let b = budget.acquire(100, Duration::from_millis(10)).await.unwrap();
//! assert_eq!(budget.in_use(), 100);
//! # drop(b);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! Waiting is fair (first come, first served): a large reservation that is
//! waiting is not starved by a stream of small ones.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use streambus_proto::{Error, Reason};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// A shared budget of bytes; cheap to clone (clones share the budget).
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    semaphore: Arc<Semaphore>,
    capacity: usize,
    name: &'static str,
}

/// A reservation of bytes from a [`MemoryBudget`], returned on drop.
#[must_use = "the reservation is released as soon as the permit is dropped"]
pub struct Permit {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Permit {
    /// How many bytes this permit holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetError {
    /// The budget is spent right now (after the allowed wait); retrying
    /// later may succeed. Maps to [`Reason::Overloaded`].
    Exhausted {
        /// The budget's name (its setting).
        name: &'static str,
        /// Bytes asked for.
        requested: usize,
        /// Bytes free when the caller gave up.
        available: usize,
        /// The whole budget.
        capacity: usize,
    },
    /// The request is larger than the whole budget and can never be
    /// granted. Maps to [`Reason::RecordTooLarge`]: retrying is pointless.
    TooLarge {
        /// The budget's name (its setting).
        name: &'static str,
        /// Bytes asked for.
        requested: usize,
        /// The whole budget.
        capacity: usize,
    },
}

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetError::Exhausted {
                name,
                requested,
                available,
                capacity,
            } => write!(
                f,
                "{name} is exhausted: {requested} bytes needed, {available} of {capacity} free; retry later"
            ),
            BudgetError::TooLarge {
                name,
                requested,
                capacity,
            } => write!(
                f,
                "{requested} bytes needed but {name} is only {capacity} bytes in all"
            ),
        }
    }
}

impl std::error::Error for BudgetError {}

impl From<BudgetError> for Error {
    fn from(e: BudgetError) -> Error {
        let reason = match e {
            BudgetError::Exhausted { .. } => Reason::Overloaded,
            BudgetError::TooLarge { .. } => Reason::RecordTooLarge,
        };
        Error::new(reason, e.to_string())
    }
}

impl From<BudgetError> for tonic::Status {
    fn from(e: BudgetError) -> tonic::Status {
        Error::from(e).to_status()
    }
}

/// The largest budget a [`MemoryBudget`] can hold (4 GiB - 1: one
/// reservation is one acquisition of tokio semaphore permits, counted in
/// `u32`).
pub const MAX_CAPACITY: usize = u32::MAX as usize;

impl MemoryBudget {
    /// A budget of `capacity` bytes (clamped to [`MAX_CAPACITY`]). `name`
    /// appears in refusals, so make it the setting that sizes the budget
    /// (e.g. `"gateway.decompression_budget_bytes"`).
    pub fn new(name: &'static str, capacity: usize) -> MemoryBudget {
        let capacity = capacity.min(MAX_CAPACITY).min(Semaphore::MAX_PERMITS);
        MemoryBudget {
            inner: Arc::new(Inner {
                semaphore: Arc::new(Semaphore::new(capacity)),
                capacity,
                name,
            }),
        }
    }

    /// The whole budget in bytes.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Bytes free right now.
    pub fn available(&self) -> usize {
        self.inner.semaphore.available_permits()
    }

    /// Bytes held by live permits right now.
    pub fn in_use(&self) -> usize {
        self.inner.capacity - self.available()
    }

    fn too_large(&self, n: usize) -> Option<BudgetError> {
        (n > self.inner.capacity).then_some(BudgetError::TooLarge {
            name: self.inner.name,
            requested: n,
            capacity: self.inner.capacity,
        })
    }

    fn exhausted(&self, n: usize) -> BudgetError {
        BudgetError::Exhausted {
            name: self.inner.name,
            requested: n,
            available: self.available(),
            capacity: self.inner.capacity,
        }
    }

    /// Reserves `n` bytes if they are free now; never waits. A zero-byte
    /// reservation always succeeds.
    pub fn try_acquire(&self, n: usize) -> Result<Permit, BudgetError> {
        if n == 0 {
            return Ok(Permit {
                _permit: None,
                bytes: 0,
            });
        }
        if let Some(e) = self.too_large(n) {
            return Err(e);
        }
        // n <= capacity <= u32::MAX, so this never fails.
        let count = u32::try_from(n).map_err(|_| self.exhausted(n))?;
        match self.inner.semaphore.clone().try_acquire_many_owned(count) {
            Ok(p) => Ok(Permit {
                _permit: Some(p),
                bytes: n,
            }),
            Err(TryAcquireError::NoPermits) | Err(TryAcquireError::Closed) => {
                Err(self.exhausted(n))
            }
        }
    }

    /// Reserves `n` bytes, waiting at most `wait` for other permits to be
    /// returned. Waiters are served in arrival order.
    pub async fn acquire(&self, n: usize, wait: Duration) -> Result<Permit, BudgetError> {
        if n == 0 {
            return Ok(Permit {
                _permit: None,
                bytes: 0,
            });
        }
        if let Some(e) = self.too_large(n) {
            return Err(e);
        }
        // n <= capacity <= u32::MAX, so this never fails.
        let count = u32::try_from(n).map_err(|_| self.exhausted(n))?;
        let acquire = self.inner.semaphore.clone().acquire_many_owned(count);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(p)) => Ok(Permit {
                _permit: Some(p),
                bytes: n,
            }),
            // The semaphore is never closed; treat it like a timeout.
            Ok(Err(_)) | Err(_) => Err(self.exhausted(n)),
        }
    }
}

impl fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("name", &self.inner.name)
            .field("capacity", &self.inner.capacity)
            .field("in_use", &self.in_use())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "test.budget_bytes";

    #[test]
    fn permits_are_released_on_drop() {
        let b = MemoryBudget::new(NAME, 100);
        let p = b.try_acquire(60).unwrap();
        assert_eq!(p.bytes(), 60);
        assert_eq!(b.in_use(), 60);
        assert_eq!(b.available(), 40);
        let q = b.try_acquire(40).unwrap();
        assert_eq!(b.available(), 0);
        drop(p);
        assert_eq!(b.in_use(), 40);
        drop(q);
        assert_eq!(b.in_use(), 0);
        assert_eq!(b.available(), 100);
    }

    #[test]
    fn past_the_budget_is_overloaded_and_retriable() {
        let b = MemoryBudget::new(NAME, 100);
        let _held = b.try_acquire(90).unwrap();
        let err = b.try_acquire(20).unwrap_err();
        assert_eq!(
            err,
            BudgetError::Exhausted {
                name: NAME,
                requested: 20,
                available: 10,
                capacity: 100
            }
        );
        let e = Error::from(err);
        assert_eq!(e.reason, Reason::Overloaded);
        assert!(e.retriable());
        assert!(e.message.contains(NAME), "{}", e.message);
        let status = tonic::Status::from(b.try_acquire(20).unwrap_err());
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        // A failed attempt reserves nothing.
        assert_eq!(b.in_use(), 90);
    }

    #[test]
    fn larger_than_the_whole_budget_is_final() {
        let b = MemoryBudget::new(NAME, 100);
        let err = b.try_acquire(101).unwrap_err();
        assert!(matches!(err, BudgetError::TooLarge { requested: 101, .. }));
        let e = Error::from(err);
        assert_eq!(e.reason, Reason::RecordTooLarge);
        assert!(!e.retriable());
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn zero_bytes_always_succeed() {
        let b = MemoryBudget::new(NAME, 1);
        let _all = b.try_acquire(1).unwrap();
        let z = b.try_acquire(0).unwrap();
        assert_eq!(z.bytes(), 0);
    }

    #[test]
    fn clones_share_one_budget() {
        let a = MemoryBudget::new(NAME, 10);
        let b = a.clone();
        let _p = a.try_acquire(10).unwrap();
        assert!(b.try_acquire(1).is_err());
        assert_eq!(b.in_use(), 10);
    }

    #[tokio::test]
    async fn acquire_waits_for_a_release() {
        let b = MemoryBudget::new(NAME, 100);
        let held = b.try_acquire(100).unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(50, Duration::from_secs(1)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(held);
        let p = waiter.await.unwrap().unwrap();
        assert_eq!(p.bytes(), 50);
        assert_eq!(b.in_use(), 50);
    }

    #[tokio::test]
    async fn acquire_gives_up_after_the_wait() {
        let b = MemoryBudget::new(NAME, 100);
        let _held = b.try_acquire(100).unwrap();
        let started = tokio::time::Instant::now();
        let err = b.acquire(1, Duration::from_millis(250)).await.unwrap_err();
        assert!(matches!(err, BudgetError::Exhausted { .. }));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        // The abandoned wait took nothing.
        assert_eq!(b.in_use(), 100);
    }

    #[tokio::test]
    async fn concurrent_holders_never_exceed_the_budget() {
        let b = MemoryBudget::new(NAME, 1000);
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let b = b.clone();
            let peak = peak.clone();
            tasks.push(tokio::spawn(async move {
                let n = 100 + (i % 7) * 50;
                if let Ok(_p) = b.acquire(n, Duration::from_secs(10)).await {
                    peak.fetch_max(b.in_use(), std::sync::atomic::Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 1000);
        assert_eq!(b.in_use(), 0);
    }
}
