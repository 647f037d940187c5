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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

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
    /// A budget this one is part of: every reservation takes from both.
    parent: Option<MemoryBudget>,
    /// Reservations waiting for bytes right now.
    waiters: AtomicUsize,
}

/// A reservation of bytes from a [`MemoryBudget`], returned on drop.
#[must_use = "the reservation is released as soon as the permit is dropped"]
pub struct Permit {
    _permit: Option<OwnedSemaphorePermit>,
    /// The same bytes reserved from the parent budget.
    parent: Option<Box<Permit>>,
    bytes: usize,
}

impl Permit {
    fn empty() -> Permit {
        Permit {
            _permit: None,
            parent: None,
            bytes: 0,
        }
    }

    /// How many bytes this permit holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Returns all but `bytes` of the reservation (when less was used than
    /// reserved); a larger `bytes` changes nothing.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes >= self.bytes {
            return;
        }
        if let Some(p) = self._permit.as_mut() {
            drop(p.split(self.bytes - bytes));
            if bytes == 0 {
                self._permit = None;
            }
        }
        if let Some(parent) = self.parent.as_mut() {
            parent.shrink_to(bytes);
        }
        self.bytes = bytes;
    }
}

/// Counts a waiting reservation while alive.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
                parent: None,
                waiters: AtomicUsize::new(0),
            }),
        }
    }

    /// A budget of `capacity` bytes inside this one: a reservation from it
    /// takes the same bytes from both, so it is bounded by its own
    /// capacity and by what the whole budget has left.
    pub fn child(&self, name: &'static str, capacity: usize) -> MemoryBudget {
        let capacity = capacity.min(MAX_CAPACITY).min(Semaphore::MAX_PERMITS);
        MemoryBudget {
            inner: Arc::new(Inner {
                semaphore: Arc::new(Semaphore::new(capacity)),
                capacity,
                name,
                parent: Some(self.clone()),
                waiters: AtomicUsize::new(0),
            }),
        }
    }

    /// The setting that sizes this budget.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Reservations waiting for bytes right now.
    pub fn waiters(&self) -> usize {
        self.inner.waiters.load(Ordering::Relaxed)
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
            return Ok(Permit::empty());
        }
        if let Some(e) = self.too_large(n) {
            return Err(e);
        }
        // n <= capacity <= u32::MAX, so this never fails.
        let count = u32::try_from(n).map_err(|_| self.exhausted(n))?;
        let own = match self.inner.semaphore.clone().try_acquire_many_owned(count) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) | Err(TryAcquireError::Closed) => {
                return Err(self.exhausted(n));
            }
        };
        let parent = match &self.inner.parent {
            Some(parent) => Some(Box::new(parent.try_acquire(n)?)),
            None => None,
        };
        Ok(Permit {
            _permit: Some(own),
            parent,
            bytes: n,
        })
    }

    /// Reserves `n` bytes, waiting at most `wait` for other permits to be
    /// returned. Waiters are served in arrival order.
    pub async fn acquire(&self, n: usize, wait: Duration) -> Result<Permit, BudgetError> {
        if n == 0 {
            return Ok(Permit::empty());
        }
        if let Some(e) = self.too_large(n) {
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + wait;
        // n <= capacity <= u32::MAX, so this never fails.
        let count = u32::try_from(n).map_err(|_| self.exhausted(n))?;
        let own = {
            let _waiting = Waiting::new(&self.inner.waiters);
            let acquire = self.inner.semaphore.clone().acquire_many_owned(count);
            match tokio::time::timeout_at(deadline, acquire).await {
                Ok(Ok(p)) => p,
                // The semaphore is never closed; treat it like a timeout.
                Ok(Err(_)) | Err(_) => return Err(self.exhausted(n)),
            }
        };
        let parent = match &self.inner.parent {
            Some(parent) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                Some(Box::new(Box::pin(parent.acquire(n, left)).await?))
            }
            None => None,
        };
        Ok(Permit {
            _permit: Some(own),
            parent,
            bytes: n,
        })
    }
}

/// The memory this process may use: the machine's (`MemTotal`), or its
/// cgroup's limit (`memory.max`, cgroup v2) when lower; `None` when
/// neither can be read.
pub fn machine_memory() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// The default memory budget of a process with `memory` bytes (see
/// [`machine_memory`]): 1/64 of it, between 256 MiB and 1 GiB; 256 MiB
/// when unknown.
pub fn derived_budget(memory: Option<u64>) -> usize {
    const MIB: u64 = 1024 * 1024;
    let bytes = memory.map_or(256 * MIB, |m| (m / 64).clamp(256 * MIB, 1024 * MIB));
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Exposes budgets at every scrape as `<prefix>_memory_budget_bytes`,
/// `<prefix>_memory_used_bytes` and `<prefix>_memory_waiters`, labelled
/// with each budget's setting (`budget="gateway.memory_budget_bytes"`).
#[derive(Debug)]
pub struct BudgetCollector {
    prefix: &'static str,
    budgets: Budgets,
}

/// The budgets a [`BudgetCollector`] reports; budgets made after the
/// metrics were registered are added here.
#[derive(Debug, Clone, Default)]
pub struct Budgets(Arc<std::sync::Mutex<Vec<MemoryBudget>>>);

impl Budgets {
    /// Reports `budget` from now on.
    pub fn add(&self, budget: &MemoryBudget) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(budget.clone());
    }

    /// Every budget reported.
    pub fn all(&self) -> Vec<MemoryBudget> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl BudgetCollector {
    /// A collector of `budgets`, metric names starting with `prefix`
    /// (e.g. `streambus_gateway`).
    pub fn new(prefix: &'static str, budgets: Budgets) -> BudgetCollector {
        BudgetCollector { prefix, budgets }
    }
}

impl Collector for BudgetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        type Read = fn(&MemoryBudget) -> usize;
        let series: [(&str, &str, Read); 3] = [
            (
                "memory_budget_bytes",
                "The size of a memory budget for buffered record data",
                MemoryBudget::capacity,
            ),
            (
                "memory_used_bytes",
                "Bytes reserved from a memory budget",
                MemoryBudget::in_use,
            ),
            (
                "memory_waiters",
                "Reservations waiting for room in a memory budget",
                MemoryBudget::waiters,
            ),
        ];
        for (name, help, read) in series {
            let full = format!("{}_{name}", self.prefix);
            let mut family = encoder.encode_descriptor(
                &full,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for b in &self.budgets.all() {
                let labels = [("budget", b.name())];
                let gauge = ConstGauge::new(read(b) as i64);
                gauge.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
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
    fn a_child_takes_from_its_parent_and_shrinking_returns_to_both() {
        let whole = MemoryBudget::new("whole", 100);
        let part = whole.child("part", 60);
        let mut p = part.try_acquire(50).unwrap();
        assert_eq!((part.in_use(), whole.in_use()), (50, 50));
        // The part's own cap, then the whole's.
        assert_eq!(
            part.try_acquire(20)
                .unwrap_err()
                .to_string()
                .split(' ')
                .next(),
            Some("part")
        );
        let other = whole.try_acquire(45).unwrap();
        let err = part.try_acquire(8).unwrap_err();
        assert!(
            matches!(err, BudgetError::Exhausted { name: "whole", .. }),
            "{err}"
        );
        assert_eq!(part.in_use(), 50, "a refused reservation keeps nothing");
        p.shrink_to(10);
        assert_eq!((part.in_use(), whole.in_use()), (10, 55));
        drop(p);
        drop(other);
        assert_eq!((part.in_use(), whole.in_use()), (0, 0));
    }

    #[tokio::test]
    async fn waiters_are_counted_and_a_child_waits_for_its_parent() {
        let whole = MemoryBudget::new("whole", 100);
        let part = whole.child("part", 100);
        let held = whole.try_acquire(100).unwrap();
        let waiting = {
            let part = part.clone();
            tokio::spawn(async move { part.acquire(30, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(whole.waiters(), 1);
        drop(held);
        let p = waiting.await.unwrap().unwrap();
        assert_eq!(
            (part.in_use(), whole.in_use(), whole.waiters()),
            (30, 30, 0)
        );
        drop(p);
        let mut registry = prometheus_client::registry::Registry::default();
        let budgets = Budgets::default();
        registry.register_collector(Box::new(BudgetCollector::new(
            "streambus_test",
            budgets.clone(),
        )));
        budgets.add(&whole);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("streambus_test_memory_budget_bytes{budget=\"whole\"} 100"),
            "{text}"
        );
        assert!(
            text.contains("streambus_test_memory_used_bytes{budget=\"whole\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn the_derived_budget_is_a_64th_of_memory_within_bounds() {
        const GIB: u64 = 1024 * 1024 * 1024;
        assert_eq!(derived_budget(Some(24 * GIB)), 384 * 1024 * 1024);
        assert_eq!(derived_budget(Some(2 * GIB)), 256 * 1024 * 1024);
        assert_eq!(derived_budget(Some(512 * GIB)), 1024 * 1024 * 1024);
        assert_eq!(derived_budget(None), 256 * 1024 * 1024);
        assert!(machine_memory().is_some_and(|m| m > 0));
    }

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
