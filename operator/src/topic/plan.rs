//! What to do about one topic: a pure function of the resource's spec and
//! the topic as StreamBus describes it (or its absence).

use std::collections::{BTreeMap, HashMap};

use streambus_cluster::TopicConfig;

use crate::crd::StreamBusTopicSpec;

/// The topic as StreamBus has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// StreamBus's topic id.
    pub topic_id: String,
    /// Partition count.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// The effective configuration (defaults filled in).
    pub configs: BTreeMap<String, String>,
}

/// One call to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the topic (`replication_factor` 0 = the cluster default).
    Create {
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    },
    /// Grow the topic to `partitions`.
    AddPartitions { partitions: u32 },
    /// Change the topic's configuration: `set` the keys the spec gives a
    /// value the topic does not have, `reset` to their defaults the keys
    /// the spec leaves out and the topic has changed.
    AlterConfigs {
        set: BTreeMap<String, String>,
        reset: Vec<String>,
    },
}

/// Why the topic cannot be made as the spec says; reported in the Ready
/// condition, never retried in a loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The condition's reason.
    pub reason: &'static str,
    /// The condition's message.
    pub message: String,
}

/// The decision for one reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The calls to make now, in order.
    pub actions: Vec<Action>,
    /// What the spec asks for that cannot be done.
    pub problems: Vec<Problem>,
}

/// Decides what to do for `spec` given the topic StreamBus has and the
/// config keys the operator applied before (`managed`).
pub fn plan(spec: &StreamBusTopicSpec, observed: Option<&Observed>, managed: &[String]) -> Plan {
    let desired_config = match canonical_config(&spec.config) {
        Ok(config) => config,
        Err(message) => {
            return Plan {
                actions: Vec::new(),
                problems: vec![Problem {
                    reason: "InvalidConfig",
                    message,
                }],
            };
        }
    };
    let Some(observed) = observed else {
        return Plan {
            actions: vec![Action::Create {
                partitions: spec.partitions,
                replication_factor: spec.replication_factor.unwrap_or(0),
                configs: spec.config.clone(),
            }],
            problems: Vec::new(),
        };
    };
    let mut problems = Vec::new();
    let mut actions = Vec::new();
    if observed.partitions < spec.partitions {
        actions.push(Action::AddPartitions {
            partitions: spec.partitions,
        });
    } else if observed.partitions > spec.partitions {
        problems.push(Problem {
            reason: "PartitionDecreaseRefused",
            message: format!(
                "the topic has {} partitions and spec.partitions is {}: StreamBus never removes partitions; set spec.partitions to {} or more",
                observed.partitions, spec.partitions, observed.partitions
            ),
        });
    }
    if let Some(rf) = spec.replication_factor
        && rf != observed.replication_factor
    {
        problems.push(Problem {
            reason: "ReplicationFactorChangeUnsupported",
            message: format!(
                "the topic has replication factor {} and spec.replicationFactor is {rf}: StreamBus cannot change the replication factor of an existing topic",
                observed.replication_factor
            ),
        });
    }
    // The keys spec.config lists are set to its values, drift included;
    // a key the operator set before and the spec no longer lists goes back
    // to its default. Keys it never managed are left alone, so adopting a
    // topic (with a compacted or long-retention configuration, say) never
    // changes what the spec does not mention.
    let mut set = BTreeMap::new();
    let mut reset = Vec::new();
    for (key, value) in &desired_config {
        if observed.configs.get(key) == Some(value) {
            continue;
        }
        if spec.config.contains_key(key) {
            set.insert(key.clone(), value.clone());
        } else if managed.contains(key) {
            reset.push(key.clone());
        }
    }
    if !set.is_empty() || !reset.is_empty() {
        actions.push(Action::AlterConfigs { set, reset });
    }
    Plan { actions, problems }
}

/// The configuration the spec implies, in StreamBus's canonical spelling
/// (what `DescribeTopic` reports): the spec's entries, defaults for the
/// rest; an unknown key or a bad value is an error naming it.
fn canonical_config(config: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String> {
    let map: HashMap<String, String> = config.clone().into_iter().collect();
    let parsed = TopicConfig::from_map(&map).map_err(|e| format!("spec.config: {}", e.message))?;
    Ok(parsed.to_btree_map())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DeletionPolicy;

    fn spec(partitions: u32, rf: Option<u32>, config: &[(&str, &str)]) -> StreamBusTopicSpec {
        StreamBusTopicSpec {
            topic_name: None,
            partitions,
            replication_factor: rf,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            deletion_policy: DeletionPolicy::Delete,
        }
    }

    /// `plan` with no previously managed keys.
    fn plan_(spec: &StreamBusTopicSpec, observed: Option<&Observed>) -> Plan {
        plan(spec, observed, &[])
    }

    fn observed(partitions: u32, rf: u32, config: &[(&str, &str)]) -> Observed {
        let mut configs = TopicConfig::default().to_btree_map();
        for (k, v) in config {
            configs.insert(k.to_string(), v.to_string());
        }
        Observed {
            topic_id: "id".into(),
            partitions,
            replication_factor: rf,
            configs,
        }
    }

    #[test]
    fn missing_topic_is_created_as_specified() {
        let p = plan_(&spec(3, Some(1), &[("retention.ms", "1000")]), None);
        assert_eq!(
            p.actions,
            [Action::Create {
                partitions: 3,
                replication_factor: 1,
                configs: [("retention.ms".to_string(), "1000".to_string())].into(),
            }]
        );
        assert!(p.problems.is_empty());
    }

    #[test]
    fn omitted_replication_factor_asks_for_the_cluster_default() {
        let p = plan_(&spec(1, None, &[]), None);
        assert!(matches!(
            p.actions[..],
            [Action::Create {
                replication_factor: 0,
                ..
            }]
        ));
    }

    #[test]
    fn topic_as_specified_needs_nothing() {
        let p = plan_(
            &spec(3, Some(1), &[("retention.ms", "1000")]),
            Some(&observed(3, 1, &[("retention.ms", "1000")])),
        );
        assert!(p.actions.is_empty());
        assert!(p.problems.is_empty(), "{:?}", p.problems);
    }

    #[test]
    fn more_partitions_grow_the_topic() {
        let p = plan_(&spec(6, None, &[]), Some(&observed(3, 1, &[])));
        assert_eq!(p.actions, [Action::AddPartitions { partitions: 6 }]);
        assert!(p.problems.is_empty());
    }

    #[test]
    fn fewer_partitions_are_refused_with_a_reason() {
        let p = plan_(&spec(2, None, &[]), Some(&observed(3, 1, &[])));
        assert!(p.actions.is_empty());
        assert_eq!(p.problems.len(), 1);
        assert_eq!(p.problems[0].reason, "PartitionDecreaseRefused");
        assert!(p.problems[0].message.contains("has 3 partitions"));
    }

    #[test]
    fn replication_factor_change_is_refused_but_growth_still_happens() {
        let p = plan_(&spec(4, Some(3), &[]), Some(&observed(3, 1, &[])));
        assert_eq!(p.actions, [Action::AddPartitions { partitions: 4 }]);
        assert_eq!(p.problems[0].reason, "ReplicationFactorChangeUnsupported");
    }

    #[test]
    fn config_differences_are_set_and_keys_dropped_from_the_spec_reset() {
        // retention.ms drifted; segment.bytes was in the spec before and
        // is no longer; max.message.bytes was never the operator's.
        let observed = observed(
            2,
            1,
            &[
                ("retention.ms", "5000"),
                ("segment.bytes", "1048576"),
                ("max.message.bytes", "2000"),
            ],
        );
        let managed = ["retention.ms".to_string(), "segment.bytes".to_string()];
        let p = plan(
            &spec(
                3,
                None,
                &[("retention.ms", "1000"), ("cleanup.policy", "delete")],
            ),
            Some(&observed),
            &managed,
        );
        assert_eq!(
            p.actions,
            [
                Action::AddPartitions { partitions: 3 },
                Action::AlterConfigs {
                    set: [("retention.ms".to_string(), "1000".to_string())].into(),
                    reset: vec!["segment.bytes".to_string()],
                },
            ]
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
    }

    #[test]
    fn an_adopted_topic_keeps_the_settings_the_spec_does_not_mention() {
        let p = plan_(
            &spec(1, None, &[]),
            Some(&observed(
                1,
                1,
                &[("cleanup.policy", "compact"), ("retention.ms", "-1")],
            )),
        );
        assert!(p.actions.is_empty(), "{:?}", p.actions);
    }

    #[test]
    fn config_is_compared_in_canonical_form() {
        // A retention of -1 (infinite) is how StreamBus reports "none".
        let p = plan_(
            &spec(1, None, &[("retention.ms", "-1")]),
            Some(&observed(1, 1, &[("retention.ms", "-1")])),
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert!(p.actions.is_empty(), "{:?}", p.actions);
    }

    #[test]
    fn invalid_config_is_reported_without_any_call() {
        let p = plan_(&spec(1, None, &[("retention.hours", "1")]), None);
        assert!(p.actions.is_empty());
        assert_eq!(p.problems[0].reason, "InvalidConfig");
        assert!(p.problems[0].message.contains("retention.hours"));
    }

    #[test]
    fn adopted_topic_with_other_settings_is_kept_and_reported() {
        // A pre-existing topic is adopted as it is: never deleted or
        // recreated to match the spec.
        let p = plan_(&spec(1, Some(1), &[]), Some(&observed(4, 1, &[])));
        assert!(p.actions.is_empty());
        assert_eq!(p.problems[0].reason, "PartitionDecreaseRefused");
    }
}
