//! Status conditions: setting one keeps its `lastTransitionTime` unless
//! its status changes, as `meta.SetStatusCondition` does.

use crate::crd::Condition;

/// A condition to set (no time yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Update {
    /// A condition of `type_` with `status`.
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Update {
        Update {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Sets `update` in `conditions` for `generation`, at `now` (RFC 3339)
/// when its status changes or it is new.
pub fn set(conditions: &mut Vec<Condition>, update: Update, generation: Option<i64>, now: &str) {
    let status = if update.status { "True" } else { "False" }.to_string();
    let existing = conditions.iter_mut().find(|c| c.type_ == update.type_);
    match existing {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.to_string();
            }
            c.status = status;
            c.reason = update.reason;
            c.message = update.message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: update.type_.to_string(),
            status,
            reason: update.reason,
            message: update.message,
            last_transition_time: now.to_string(),
            observed_generation: generation,
        }),
    }
}

/// The condition of `type_`, if set.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Now, as Kubernetes writes times (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let mut c = Vec::new();
        set(
            &mut c,
            Update::new("Ready", false, "Creating", "a"),
            Some(1),
            "t1",
        );
        set(
            &mut c,
            Update::new("Ready", false, "Other", "b"),
            Some(2),
            "t2",
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, "t1");
        assert_eq!(c[0].reason, "Other");
        assert_eq!(c[0].observed_generation, Some(2));
        set(
            &mut c,
            Update::new("Ready", true, "Ready", ""),
            Some(2),
            "t3",
        );
        assert_eq!(c[0].status, "True");
        assert_eq!(c[0].last_transition_time, "t3");
    }

    #[test]
    fn now_is_rfc3339_utc() {
        let n = now();
        assert_eq!(n.len(), 20, "{n}");
        assert!(n.ends_with('Z'));
    }
}
