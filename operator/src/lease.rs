//! Leader election through a `coordination.k8s.io/v1` Lease: one replica
//! reconciles, the others wait to take over. Writes are optimistic
//! (`resourceVersion`), so two replicas never both win a round.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

/// What a replica does about the lease in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No lease yet: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Its holder let it expire (or released it): take it.
    TakeOver,
    /// Someone else holds it.
    Wait { holder: String },
}

/// Decides the step for `me` given the lease (if any) at `now`.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Step::Renew;
    }
    if holder.is_empty() {
        return Step::TakeOver;
    }
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
    match &spec.renew_time {
        Some(MicroTime(renewed)) if *renewed + duration > now => Step::Wait { holder },
        _ => Step::TakeOver,
    }
}

/// Leader election settings.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's namespace and name.
    pub namespace: String,
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews and the others check.
    pub retry: Duration,
}

impl Election {
    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round; whether we hold the lease after it.
    async fn round(&self, api: &Api<Lease>) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = api.get_opt(&self.name).await?;
        let step = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
        );
        match (step, current) {
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, None, 0)),
                };
                api.create(&PostParams::default(), &lease).await?;
                tracing::info!(lease = %self.name, "acquired the leader lease (created it)");
                Ok(true)
            }
            (Step::Renew, Some(mut lease)) => {
                let old = lease.spec.take().unwrap_or_default();
                lease.spec =
                    Some(self.spec(now, old.acquire_time, old.lease_transitions.unwrap_or(0)));
                api.replace(&self.name, &PostParams::default(), &lease)
                    .await?;
                Ok(true)
            }
            (Step::TakeOver, Some(mut lease)) => {
                let old = lease.spec.take().unwrap_or_default();
                let previous = old.holder_identity.unwrap_or_default();
                lease.spec = Some(self.spec(now, None, old.lease_transitions.unwrap_or(0) + 1));
                api.replace(&self.name, &PostParams::default(), &lease)
                    .await?;
                tracing::info!(lease = %self.name, previous = %previous, "acquired the leader lease");
                Ok(true)
            }
            (Step::Wait { holder }, _) => {
                tracing::debug!(lease = %self.name, holder = %holder, "another replica leads");
                Ok(false)
            }
            // The lease vanished between the read and the decision.
            (_, None) => Ok(false),
        }
    }

    /// Campaigns and renews until `stop` fires: `leader` is true while we
    /// hold the lease. Returns an error when leadership is lost (a renewal
    /// failed for longer than the lease lasts), after which this process
    /// must stop reconciling. On `stop` the lease is released so another
    /// replica takes over at once.
    pub async fn run(
        self,
        client: kube::Client,
        leader: watch::Sender<bool>,
        api_reachable: watch::Sender<bool>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        let mut last_renewal: Option<std::time::Instant> = None;
        loop {
            match self.round(&api).await {
                Ok(held) => {
                    let _ = api_reachable.send(true);
                    if held {
                        last_renewal = Some(std::time::Instant::now());
                        leader.send_if_modified(|l| !std::mem::replace(l, true));
                    } else if *leader.borrow() {
                        return Err("the leader lease was taken by another replica".into());
                    }
                }
                // A conflict means another replica wrote first: next round.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "leader lease round failed");
                    if let Some(at) = last_renewal
                        && *leader.borrow()
                        && at.elapsed() > self.lease_duration
                    {
                        return Err(format!(
                            "could not renew the leader lease for {:?}: {e}",
                            at.elapsed()
                        ));
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.retry) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if *leader.borrow() {
            self.release(&api).await;
        }
        Ok(())
    }

    async fn release(&self, api: &Api<Lease>) {
        let Ok(Some(mut lease)) = api.get_opt(&self.name).await else {
            return;
        };
        if let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(&self.identity)
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            match api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => tracing::info!(lease = %self.name, "released the leader lease"),
                Err(e) => tracing::warn!(error = %e, "cannot release the leader lease"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let now = Timestamp::from_second(1_000_000).unwrap();
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
            ..LeaseSpec::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide(None, "a", now()), Step::Create);
    }

    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(decide(Some(&lease("a", 3, 15)), "a", now()), Step::Renew);
    }

    #[test]
    fn live_lease_of_another_replica_is_waited_for() {
        assert_eq!(
            decide(Some(&lease("b", 14, 15)), "a", now()),
            Step::Wait { holder: "b".into() }
        );
    }

    #[test]
    fn expired_or_released_lease_is_taken_over() {
        assert_eq!(
            decide(Some(&lease("b", 16, 15)), "a", now()),
            Step::TakeOver
        );
        let mut released = lease("b", 1, 15);
        released.holder_identity = None;
        assert_eq!(decide(Some(&released), "a", now()), Step::TakeOver);
    }
}
