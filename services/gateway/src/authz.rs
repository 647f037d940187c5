//! Authorization at the gateway: every public call asks [`Authz::check`]
//! whether its principal may do the operation to the resource, against the
//! ACLs of the cluster metadata the gateway watches (`streambus-acl`
//! decides). Off unless `gateway.auth.acls` is set; then a call no ACL
//! allows is refused with `PERMISSION_DENIED`, naming the principal, the
//! operation and the resource.
//!
//! Until the first metadata snapshot arrives there are no ACLs: only
//! superusers get in (fail closed).

use std::collections::BTreeSet;
use std::sync::Arc;

use streambus_acl::{Authorizer, CLUSTER_NAME, Decision, Operation, ResourceType};
use streambus_proto::{Error, Reason};

use crate::auth::Principal;
use crate::metadata::MetadataCache;

/// The gateway's authorizer (cheap to clone).
#[derive(Clone)]
pub struct Authz {
    inner: Option<Arc<Enforced>>,
}

struct Enforced {
    metadata: MetadataCache,
    superusers: BTreeSet<String>,
}

impl Authz {
    /// Lets every call through (`gateway.auth.acls` off).
    pub fn off() -> Authz {
        Authz { inner: None }
    }

    /// Enforces the ACLs `metadata` holds, with `superusers` (principals,
    /// `User:<name>`) allowed everything.
    pub fn enforce(metadata: MetadataCache, superusers: BTreeSet<String>) -> Authz {
        Authz {
            inner: Some(Arc::new(Enforced {
                metadata,
                superusers,
            })),
        }
    }

    /// Whether ACLs are enforced.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether `principal` may do `operation` to the resource `name` of
    /// `resource_type`.
    pub fn allowed(
        &self,
        principal: &Principal,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        self.decide(principal, operation, resource_type, name)
            .is_ok()
    }

    /// `Ok` when `principal` may do `operation` to the resource `name` of
    /// `resource_type`; `PERMISSION_DENIED` saying who, what and why not
    /// otherwise.
    pub fn check(
        &self,
        principal: &Principal,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Result<(), Error> {
        self.decide(principal, operation, resource_type, name)
            .map_err(|why| {
                tracing::debug!(
                    principal = %principal,
                    %operation,
                    %resource_type,
                    resource = name,
                    why,
                    "call refused"
                );
                denied(principal, operation, resource_type, name, &why)
            })
    }

    /// `Ok` when `principal` may do `operation` to some resource of
    /// `resource_type` (for a call that names none); `PERMISSION_DENIED`
    /// otherwise.
    pub fn check_any(
        &self,
        principal: &Principal,
        operation: Operation,
        resource_type: ResourceType,
    ) -> Result<(), Error> {
        let Some(e) = &self.inner else {
            return Ok(());
        };
        let view = e.metadata.current();
        if Authorizer::new(&view.acls, &e.superusers).authorize_any(
            principal.as_str(),
            operation,
            resource_type,
        ) {
            return Ok(());
        }
        Err(Error::new(
            Reason::PermissionDenied,
            format!("{principal} may not {operation} any {resource_type}: no ACL allows it"),
        ))
    }

    /// `check` on the cluster resource.
    pub fn check_cluster(&self, principal: &Principal, operation: Operation) -> Result<(), Error> {
        self.check(principal, operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    fn decide(
        &self,
        principal: &Principal,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Result<(), String> {
        let Some(e) = &self.inner else {
            return Ok(());
        };
        if resource_type == ResourceType::Topic
            && name == crate::groups::TOPIC
            && !e.superusers.contains(principal.as_str())
        {
            // Every group's offsets and members: no ACL opens it, or
            // `read` on `*` would bypass the group ACLs.
            return Err(format!("the internal topic {name} is for superusers only"));
        }
        let view = e.metadata.current();
        let decision = Authorizer::new(&view.acls, &e.superusers).authorize(
            principal.as_str(),
            operation,
            resource_type,
            name,
        );
        match decision {
            Decision::Superuser | Decision::AllowedBy(_) => Ok(()),
            Decision::DeniedBy(acl) => Err(format!("denied by ACL \"{acl}\"")),
            Decision::NoAclAllows => Err("no ACL allows it".to_string()),
        }
    }
}

fn denied(
    principal: &Principal,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
    why: &str,
) -> Error {
    Error::new(
        Reason::PermissionDenied,
        format!("{principal} may not {operation} {resource_type} {name:?}: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use streambus_acl::{Acl, Acls, PatternType, Permission, ResourcePattern};
    use streambus_cluster::{ClusterView, ControllerClient};

    fn cache(acls: Vec<Acl>) -> MetadataCache {
        let cache = MetadataCache::new(ControllerClient::new(vec!["127.0.0.1:1".into()]).unwrap());
        let mut set = Acls::default();
        for a in acls {
            set.add(a).unwrap();
        }
        cache.install(ClusterView {
            acls: Arc::new(set),
            ..ClusterView::default()
        });
        cache
    }

    fn acl(principal: &str, name: &str, operation: Operation, permission: Permission) -> Acl {
        Acl {
            principal: principal.into(),
            pattern: ResourcePattern {
                resource_type: ResourceType::Topic,
                pattern_type: PatternType::Prefixed,
                name: name.into(),
            },
            operation,
            permission,
        }
    }

    #[tokio::test]
    async fn refusals_name_the_principal_operation_resource_and_cause() {
        let alice = Principal::user("alice");
        let authz = Authz::enforce(
            cache(vec![
                acl("User:alice", "orders.", Operation::Read, Permission::Allow),
                acl(
                    "User:alice",
                    "orders.secret",
                    Operation::All,
                    Permission::Deny,
                ),
            ]),
            BTreeSet::from(["User:root".to_string()]),
        );
        authz
            .check(&alice, Operation::Read, ResourceType::Topic, "orders.eu")
            .unwrap();
        // Read implies describe.
        authz
            .check(
                &alice,
                Operation::Describe,
                ResourceType::Topic,
                "orders.eu",
            )
            .unwrap();
        let e = authz
            .check(&alice, Operation::Write, ResourceType::Topic, "orders.eu")
            .unwrap_err();
        assert_eq!(e.reason, Reason::PermissionDenied);
        assert_eq!(
            e.message,
            "User:alice may not write topic \"orders.eu\": no ACL allows it"
        );
        let e = authz
            .check(
                &alice,
                Operation::Read,
                ResourceType::Topic,
                "orders.secret",
            )
            .unwrap_err();
        assert_eq!(
            e.message,
            "User:alice may not read topic \"orders.secret\": denied by ACL \"deny User:alice all topic:orders.secret*\""
        );
        // Superusers need no ACL; the cluster has none for alice.
        authz
            .check_cluster(&Principal::user("root"), Operation::Alter)
            .unwrap();
        assert!(!authz.allowed(
            &alice,
            Operation::Describe,
            ResourceType::Cluster,
            "cluster"
        ));
        // The internal groups topic: superusers only, whatever ACLs say.
        let all = Authz::enforce(
            cache(vec![acl(
                "User:alice",
                "_",
                Operation::All,
                Permission::Allow,
            )]),
            BTreeSet::from(["User:root".to_string()]),
        );
        let e = all
            .check(&alice, Operation::Read, ResourceType::Topic, "__groups")
            .unwrap_err();
        assert!(e.message.contains("for superusers only"), "{e}");
        all.check(
            &Principal::user("root"),
            Operation::Read,
            ResourceType::Topic,
            "__groups",
        )
        .unwrap();
        // Off: everything goes.
        Authz::off()
            .check_cluster(&alice, Operation::Alter)
            .unwrap();
    }
}
