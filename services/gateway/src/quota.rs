//! Quotas per principal: produce bytes, consume bytes and calls per
//! second, set in the cluster metadata (`AlterClientQuotas`) and held at
//! each gateway by slowing a principal down, never by refusing it (Kafka's
//! way): a call over its principal's rate waits before it is served, and
//! the wait is reported to the client (`throttle_time_ms`) and in
//! `streambus_gateway_throttle_seconds`.
//!
//! Each limit is a virtual clock (the generic cell rate algorithm): a
//! charge of `n` units moves it `n / rate` seconds ahead, and a call waits
//! until the clock, as it was before its own charge, is no longer ahead of
//! now. Calls of one principal arriving together are therefore spaced out
//! in arrival order, and over any interval a principal gets its rate plus
//! at most one call's worth; an idle principal builds up no credit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use streambus_proto::v1::ClientQuota;
use tokio::time::Instant;

use crate::auth::Principal;
use crate::metadata::MetadataCache;

/// What a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Record bytes produced.
    Produce,
    /// Record bytes consumed.
    Consume,
    /// Calls.
    Requests,
}

impl Kind {
    /// Its metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Produce => "produce",
            Kind::Consume => "consume",
            Kind::Requests => "request",
        }
    }

    fn rate(self, q: &ClientQuota) -> u64 {
        match self {
            Kind::Produce => q.produce_bytes_per_second,
            Kind::Consume => q.consume_bytes_per_second,
            Kind::Requests => q.requests_per_second,
        }
    }
}

/// The quota that applies to `principal`: its own, else the default
/// (`User:*`).
pub fn quota_of<'a>(
    quotas: &'a std::collections::BTreeMap<String, ClientQuota>,
    principal: &str,
) -> Option<&'a ClientQuota> {
    quotas.get(principal).or_else(|| quotas.get("User:*"))
}

/// One limit's virtual clock.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    rate: u64,
    clock: Instant,
}

impl Throttle {
    /// A limit of `rate` units per second (at least 1), idle at `now`.
    pub fn new(rate: u64, now: Instant) -> Throttle {
        Throttle {
            rate: rate.max(1),
            clock: now,
        }
    }

    /// Charges `amount` units at `now`: how long the call waits first.
    /// The clock runs at most [`MAX_DEBT`] ahead of now: one huge call (or
    /// calls the client gave up on) cannot lock a principal out for long.
    pub fn charge(&mut self, now: Instant, amount: u64) -> Duration {
        let wait = self.clock.saturating_duration_since(now);
        let cost = Duration::from_secs_f64(amount as f64 / self.rate as f64);
        self.clock = (self.clock.max(now) + cost).min(now + MAX_DEBT);
        wait
    }

    /// How long a call arriving at `now` waits, without charging it.
    pub fn pending(&self, now: Instant) -> Duration {
        self.clock.saturating_duration_since(now)
    }

    /// Whether the clock is behind `now` (nothing owed: it can be dropped).
    fn idle(&self, now: Instant) -> bool {
        self.clock <= now
    }
}

/// How far ahead of now a principal's clock may run: the longest a call
/// waits (Kafka caps its throttle time likewise).
pub const MAX_DEBT: Duration = Duration::from_secs(30);

/// Labels of `streambus_gateway_throttle_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct ThrottleLabels {
    /// produce, consume or request.
    pub kind: &'static str,
}

/// Most principals' clocks kept before idle ones are dropped.
const PRUNE_AT: usize = 4096;

/// The gateway's quotas (cheap to clone).
#[derive(Clone)]
pub struct Quotas {
    metadata: MetadataCache,
    clocks: Arc<Mutex<HashMap<(Principal, Kind), Throttle>>>,
    throttled: Family<ThrottleLabels, Histogram>,
}

impl Quotas {
    /// Quotas as `metadata` sets them; waits go to `throttled`.
    pub fn new(metadata: MetadataCache, throttled: Family<ThrottleLabels, Histogram>) -> Quotas {
        Quotas {
            metadata,
            clocks: Arc::default(),
            throttled,
        }
    }

    /// Charges `amount` of `kind` to `principal`: how long its call must
    /// wait (zero without a quota).
    pub fn charge(&self, principal: &Principal, kind: Kind, amount: u64) -> Duration {
        let view = self.metadata.current();
        let rate = quota_of(&view.quotas, principal.as_str()).map_or(0, |q| kind.rate(q));
        let now = Instant::now();
        let mut clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
        let key = (principal.clone(), kind);
        if rate == 0 {
            clocks.remove(&key);
            return Duration::ZERO;
        }
        if clocks.len() >= PRUNE_AT {
            clocks.retain(|_, t| !t.idle(now));
        }
        let throttle = clocks
            .entry(key)
            .and_modify(|t| t.rate = rate)
            .or_insert_with(|| Throttle::new(rate, now));
        let wait = throttle.charge(now, amount);
        drop(clocks);
        if !wait.is_zero() {
            self.throttled
                .get_or_create(&ThrottleLabels {
                    kind: kind.as_str(),
                })
                .observe(wait.as_secs_f64());
        }
        wait
    }

    /// How long a call of `principal` of `kind` would wait now, without
    /// charging it (for calls whose size is known only after they ran:
    /// they wait out what the principal owes first, then are charged).
    pub fn pending(&self, principal: &Principal, kind: Kind) -> Duration {
        let clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
        clocks
            .get(&(principal.clone(), kind))
            .map_or(Duration::ZERO, |t| t.pending(Instant::now()))
    }

    /// Waits out what `principal` owes for `kind` (see
    /// [`Quotas::pending`]); the wait in milliseconds.
    pub async fn wait_pending(&self, principal: &Principal, kind: Kind) -> u32 {
        let wait = self.pending(principal, kind);
        if !wait.is_zero() {
            self.throttled
                .get_or_create(&ThrottleLabels {
                    kind: kind.as_str(),
                })
                .observe(wait.as_secs_f64());
            tokio::time::sleep(wait).await;
        }
        millis(wait)
    }

    /// [`Quotas::charge`], then waits it out; the wait in milliseconds.
    pub async fn throttle(&self, principal: &Principal, kind: Kind, amount: u64) -> u32 {
        let wait = self.charge(principal, kind, amount);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        millis(wait)
    }
}

/// A wait in whole milliseconds (rounded up, so a wait is never 0).
pub fn millis(wait: Duration) -> u32 {
    u32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_spaces_calls_out_to_its_rate_and_keeps_no_credit_while_idle() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1000, t0);
        // The first call goes at once; it owes a second.
        assert_eq!(t.charge(t0, 1000), Duration::ZERO);
        // Calls arriving together are spaced in arrival order.
        assert_eq!(t.charge(t0, 500), Duration::from_secs(1));
        assert_eq!(t.charge(t0, 500), Duration::from_millis(1500));
        // 2 s later everything is paid: no wait.
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(t.charge(t2, 100), Duration::ZERO);
        // Idle for a minute: no credit, the clock starts from now.
        let t60 = t0 + Duration::from_secs(60);
        assert_eq!(t.charge(t60, 2000), Duration::ZERO);
        assert_eq!(t.pending(t60), Duration::from_secs(2));
        assert_eq!(t.charge(t60, 1), Duration::from_secs(2));
        // A huge call owes at most MAX_DEBT.
        let t100 = t0 + Duration::from_secs(100);
        assert_eq!(t.charge(t100, 1_000_000_000), Duration::ZERO);
        assert_eq!(t.pending(t100), MAX_DEBT);
    }

    #[test]
    fn a_greedy_caller_gets_the_rate_over_time() {
        // Simulates a caller that sends 64 KiB as soon as its previous
        // call was let through, for 20 s at 100 KiB/s.
        let t0 = Instant::now();
        let mut t = Throttle::new(100 * 1024, t0);
        let mut now = t0;
        let mut sent = 0u64;
        while now < t0 + Duration::from_secs(20) {
            now += t.charge(now, 64 * 1024);
            if now < t0 + Duration::from_secs(20) {
                sent += 64 * 1024;
            }
        }
        let expected = 20 * 100 * 1024;
        assert!(
            sent.abs_diff(expected) <= 64 * 1024,
            "{sent} bytes against {expected}"
        );
    }

    #[test]
    fn the_own_quota_wins_over_the_default() {
        let q = |p: &str, produce| ClientQuota {
            principal: p.into(),
            produce_bytes_per_second: produce,
            ..ClientQuota::default()
        };
        let quotas = std::collections::BTreeMap::from([
            ("User:*".to_string(), q("User:*", 10)),
            ("User:fast".to_string(), q("User:fast", 0)),
        ]);
        assert_eq!(
            quota_of(&quotas, "User:slow")
                .unwrap()
                .produce_bytes_per_second,
            10
        );
        assert_eq!(
            quota_of(&quotas, "User:fast")
                .unwrap()
                .produce_bytes_per_second,
            0
        );
        assert!(quota_of(&std::collections::BTreeMap::new(), "User:x").is_none());
    }
}
