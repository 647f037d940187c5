//! Access control lists, Kafka's model: an ACL lets (or forbids) a
//! principal one operation on the resources a pattern matches.
//!
//! - A **principal** is `User:<name>`; `User:*` matches every principal.
//! - A **resource pattern** is a type (topic, group, cluster) and a name,
//!   literal (`orders`; the literal `*` matches every name) or prefixed
//!   (`orders.` matches `orders.eu`, `orders.us`).
//! - An **operation** is read, write, create, delete, alter, describe or
//!   all. Allowing read, write, delete or alter also allows describe.
//! - **Deny wins:** any matching deny refuses, whatever allows it; with no
//!   matching allow the answer is no. Superusers are allowed everything.
//!
//! Only decisions live here: no I/O, no clock. The controller stores the
//! ACLs and the gateway asks [`Authorizer::authorize`] before each call.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of thing a resource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    /// A topic, by name.
    Topic,
    /// A consumer group, by name.
    Group,
    /// The cluster itself (name [`CLUSTER_NAME`]): controllers, storage
    /// nodes, ACLs.
    Cluster,
}

/// The one name of the cluster resource.
pub const CLUSTER_NAME: &str = "cluster";

/// How a pattern's name matches resource names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternType {
    /// The same name (`*`: every name).
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

/// What a principal does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Every operation.
    All,
    /// Consume a topic; commit or fetch a group's offsets, join it.
    Read,
    /// Produce to a topic.
    Write,
    /// Create a topic (or, on the cluster, any topic).
    Create,
    /// Delete a topic or a group.
    Delete,
    /// Change a topic's configuration or partitions; on the cluster,
    /// controllers, storage nodes and ACLs.
    Alter,
    /// See that it exists and how it is set up.
    Describe,
}

/// Whether an ACL lets or forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Lets the principal do it.
    Allow,
    /// Forbids it, whatever allows it.
    Deny,
}

macro_rules! names {
    ($ty:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            /// Every value, in documentation order.
            pub const ALL_VALUES: &'static [$ty] = &[$($ty::$variant),*];

            /// The lowercase name (as the CLI and the API spell it).
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),* }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = AclError;
            fn from_str(s: &str) -> Result<$ty, AclError> {
                match s.to_ascii_lowercase().as_str() {
                    $($name => Ok($ty::$variant),)*
                    _ => Err(AclError(format!(
                        "unknown {} {s:?}: expected one of {}",
                        stringify!($ty),
                        [$($name),*].join(", ")
                    ))),
                }
            }
        }
    };
}

names!(ResourceType { Topic => "topic", Group => "group", Cluster => "cluster" });
names!(PatternType { Literal => "literal", Prefixed => "prefixed" });
names!(Operation {
    All => "all",
    Read => "read",
    Write => "write",
    Create => "create",
    Delete => "delete",
    Alter => "alter",
    Describe => "describe",
});
names!(Permission { Allow => "allow", Deny => "deny" });

/// An ACL that cannot be stored, or a name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclError(pub String);

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AclError {}

/// Which resources an ACL is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourcePattern {
    /// Their type.
    pub resource_type: ResourceType,
    /// How `name` matches.
    pub pattern_type: PatternType,
    /// The name, or its prefix.
    pub name: String,
}

impl ResourcePattern {
    /// Whether it matches the resource `name` of `resource_type`.
    pub fn matches(&self, resource_type: ResourceType, name: &str) -> bool {
        self.resource_type == resource_type
            && match self.pattern_type {
                PatternType::Literal => self.name == "*" || self.name == name,
                PatternType::Prefixed => name.starts_with(&self.name),
            }
    }
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pattern_type {
            PatternType::Literal => write!(f, "{}:{}", self.resource_type, self.name),
            PatternType::Prefixed => write!(f, "{}:{}*", self.resource_type, self.name),
        }
    }
}

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Acl {
    /// `User:<name>`, or `User:*` for everyone.
    pub principal: String,
    /// The resources.
    pub pattern: ResourcePattern,
    /// The operation.
    pub operation: Operation,
    /// Allow or deny.
    pub permission: Permission,
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.permission, self.principal, self.operation, self.pattern
        )
    }
}

impl Acl {
    /// Checks what a stored ACL must be: a `User:` principal with a name,
    /// a non-empty resource name (the cluster's only [`CLUSTER_NAME`],
    /// literal), and an operation the resource type has.
    pub fn validate(&self) -> Result<(), AclError> {
        let err = |m: String| Err(AclError(m));
        match self.principal.strip_prefix("User:") {
            Some(name) if !name.is_empty() && !name.chars().any(char::is_whitespace) => {}
            _ => {
                return err(format!(
                    "principal {:?}: expected User:<name> or User:*",
                    self.principal
                ));
            }
        }
        let p = &self.pattern;
        if p.name.is_empty() {
            return err("the resource name is empty".into());
        }
        if p.pattern_type == PatternType::Prefixed && p.name == "*" {
            return err(
                "a prefixed pattern cannot be `*`: use a literal `*` for every name".into(),
            );
        }
        if p.resource_type == ResourceType::Cluster
            && (p.pattern_type != PatternType::Literal || p.name != CLUSTER_NAME)
        {
            return err(format!(
                "the cluster resource is the literal name {CLUSTER_NAME:?}"
            ));
        }
        let allowed: &[Operation] = match p.resource_type {
            ResourceType::Topic => &[
                Operation::All,
                Operation::Read,
                Operation::Write,
                Operation::Create,
                Operation::Delete,
                Operation::Alter,
                Operation::Describe,
            ],
            ResourceType::Group => &[
                Operation::All,
                Operation::Read,
                Operation::Delete,
                Operation::Describe,
            ],
            ResourceType::Cluster => &[
                Operation::All,
                Operation::Create,
                Operation::Alter,
                Operation::Describe,
            ],
        };
        if !allowed.contains(&self.operation) {
            return err(format!(
                "{} has no {} operation (it has {})",
                p.resource_type,
                self.operation,
                allowed
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(())
    }

    /// Whether this ACL, as an allow, covers `operation`: the same one,
    /// `all`, or describe implied by read, write, delete or alter.
    fn allows(&self, operation: Operation) -> bool {
        self.operation == Operation::All
            || self.operation == operation
            || (operation == Operation::Describe
                && matches!(
                    self.operation,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
    }

    /// Whether this ACL, as a deny, covers `operation`: the same one or
    /// `all` (a deny implies nothing else).
    fn denies(&self, operation: Operation) -> bool {
        self.operation == Operation::All || self.operation == operation
    }
}

/// Selects stored ACLs (for listing and deleting): every field set must be
/// equal; unset fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    /// The principal, as stored.
    pub principal: Option<String>,
    /// The resource type.
    pub resource_type: Option<ResourceType>,
    /// The pattern type.
    pub pattern_type: Option<PatternType>,
    /// The pattern's name, as stored.
    pub name: Option<String>,
    /// The operation.
    pub operation: Option<Operation>,
    /// The permission.
    pub permission: Option<Permission>,
}

impl AclFilter {
    /// Whether `acl` is selected.
    pub fn matches(&self, acl: &Acl) -> bool {
        self.principal.as_ref().is_none_or(|p| *p == acl.principal)
            && self
                .resource_type
                .is_none_or(|t| t == acl.pattern.resource_type)
            && self
                .pattern_type
                .is_none_or(|t| t == acl.pattern.pattern_type)
            && self.name.as_ref().is_none_or(|n| *n == acl.pattern.name)
            && self.operation.is_none_or(|o| o == acl.operation)
            && self.permission.is_none_or(|p| p == acl.permission)
    }
}

/// The ACLs of a cluster: a set (adding one twice stores it once).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acls {
    entries: BTreeSet<Acl>,
}

impl Acls {
    /// Adds `acl` after checking it; `Ok(false)` when it was there.
    pub fn add(&mut self, acl: Acl) -> Result<bool, AclError> {
        acl.validate()?;
        Ok(self.entries.insert(acl))
    }

    /// Removes every ACL `filter` selects and returns them.
    pub fn remove(&mut self, filter: &AclFilter) -> Vec<Acl> {
        let removed: Vec<Acl> = self
            .entries
            .iter()
            .filter(|a| filter.matches(a))
            .cloned()
            .collect();
        for a in &removed {
            self.entries.remove(a);
        }
        removed
    }

    /// The ACLs `filter` selects, in a stable order.
    pub fn list(&self, filter: &AclFilter) -> Vec<&Acl> {
        self.entries.iter().filter(|a| filter.matches(a)).collect()
    }

    /// Every ACL, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = &Acl> {
        self.entries.iter()
    }

    /// The ACLs stored for exactly `principal` (`User:*` ones only when it
    /// is `User:*`). The set is ordered by principal first, so they are
    /// one range of it: found in O(log n), not by scanning every ACL.
    fn of<'s>(&'s self, principal: &str) -> impl Iterator<Item = &'s Acl> {
        let first = Acl {
            principal: principal.to_string(),
            pattern: ResourcePattern {
                resource_type: ResourceType::Topic,
                pattern_type: PatternType::Literal,
                name: String::new(),
            },
            operation: Operation::All,
            permission: Permission::Allow,
        };
        self.entries
            .range(first..)
            .take_while(move |a| a.principal == principal)
    }

    /// The ACLs that apply to `principal`: its own and `User:*`'s.
    fn applying_to<'s>(&'s self, principal: &str) -> impl Iterator<Item = &'s Acl> {
        let everyone = (principal != "User:*").then(|| self.of("User:*"));
        self.of(principal).chain(everyone.into_iter().flatten())
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why a request was allowed or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// The principal is a superuser.
    Superuser,
    /// This ACL allows it (and none denies it).
    AllowedBy(&'a Acl),
    /// This ACL denies it.
    DeniedBy(&'a Acl),
    /// No ACL allows it.
    NoAclAllows,
}

impl Decision<'_> {
    /// Whether the request may go on.
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Superuser | Decision::AllowedBy(_))
    }
}

/// Decides requests from a set of ACLs and the superusers.
#[derive(Debug, Clone, Copy)]
pub struct Authorizer<'a> {
    acls: &'a Acls,
    superusers: &'a BTreeSet<String>,
}

impl<'a> Authorizer<'a> {
    /// Over `acls`, with `superusers` (principals, `User:<name>`).
    pub fn new(acls: &'a Acls, superusers: &'a BTreeSet<String>) -> Authorizer<'a> {
        Authorizer { acls, superusers }
    }

    /// Whether `principal` may do `operation` to the resource `name` of
    /// `resource_type`, and why.
    pub fn authorize(
        &self,
        principal: &str,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Decision<'a> {
        if self.superusers.contains(principal) {
            return Decision::Superuser;
        }
        let mut allowed_by = None;
        for acl in self.acls.applying_to(principal) {
            if !acl.pattern.matches(resource_type, name) {
                continue;
            }
            match acl.permission {
                Permission::Deny if acl.denies(operation) => return Decision::DeniedBy(acl),
                Permission::Allow if allowed_by.is_none() && acl.allows(operation) => {
                    allowed_by = Some(acl);
                }
                _ => {}
            }
        }
        allowed_by.map_or(Decision::NoAclAllows, Decision::AllowedBy)
    }

    /// Whether `principal` may do `operation` to some resource of
    /// `resource_type` (Kafka's "by resource type" check, for calls that
    /// name no resource, such as asking for an idempotent producer id):
    /// an allow covers it on some pattern, and no deny covers it on every
    /// name (a literal `*`).
    pub fn authorize_any(
        &self,
        principal: &str,
        operation: Operation,
        resource_type: ResourceType,
    ) -> bool {
        if self.superusers.contains(principal) {
            return true;
        }
        let relevant = || {
            self.acls
                .applying_to(principal)
                .filter(|a| a.pattern.resource_type == resource_type)
        };
        let denied_everywhere = relevant().any(|a| {
            a.permission == Permission::Deny
                && a.denies(operation)
                && a.pattern.pattern_type == PatternType::Literal
                && a.pattern.name == "*"
        });
        !denied_everywhere
            && relevant().any(|a| a.permission == Permission::Allow && a.allows(operation))
    }
}

#[cfg(test)]
mod tests;
