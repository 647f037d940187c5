//! ACLs between their model ([`streambus_acl`]) and their wire form
//! (`streambus.v1.AclBinding`, `AclBindingFilter`).

use streambus_acl::{
    Acl, AclFilter, Operation, PatternType, Permission, ResourcePattern, ResourceType,
};
use streambus_proto::v1::{
    AclBinding, AclBindingFilter, AclOperation, AclPatternType, AclPermission, AclResourceType,
};
use streambus_proto::{Error, Reason};

fn invalid(message: String) -> Error {
    Error::new(Reason::InvalidArgument, message)
}

fn resource_type(raw: i32) -> Result<Option<ResourceType>, Error> {
    Ok(match AclResourceType::try_from(raw) {
        Ok(AclResourceType::Unspecified) => None,
        Ok(AclResourceType::Topic) => Some(ResourceType::Topic),
        Ok(AclResourceType::Group) => Some(ResourceType::Group),
        Ok(AclResourceType::Cluster) => Some(ResourceType::Cluster),
        Err(_) => return Err(invalid(format!("unknown ACL resource type {raw}"))),
    })
}

fn pattern_type(raw: i32) -> Result<Option<PatternType>, Error> {
    Ok(match AclPatternType::try_from(raw) {
        Ok(AclPatternType::Unspecified) => None,
        Ok(AclPatternType::Literal) => Some(PatternType::Literal),
        Ok(AclPatternType::Prefixed) => Some(PatternType::Prefixed),
        Err(_) => return Err(invalid(format!("unknown ACL pattern type {raw}"))),
    })
}

fn operation(raw: i32) -> Result<Option<Operation>, Error> {
    Ok(match AclOperation::try_from(raw) {
        Ok(AclOperation::Unspecified) => None,
        Ok(AclOperation::All) => Some(Operation::All),
        Ok(AclOperation::Read) => Some(Operation::Read),
        Ok(AclOperation::Write) => Some(Operation::Write),
        Ok(AclOperation::Create) => Some(Operation::Create),
        Ok(AclOperation::Delete) => Some(Operation::Delete),
        Ok(AclOperation::Alter) => Some(Operation::Alter),
        Ok(AclOperation::Describe) => Some(Operation::Describe),
        Err(_) => return Err(invalid(format!("unknown ACL operation {raw}"))),
    })
}

fn permission(raw: i32) -> Result<Option<Permission>, Error> {
    Ok(match AclPermission::try_from(raw) {
        Ok(AclPermission::Unspecified) => None,
        Ok(AclPermission::Allow) => Some(Permission::Allow),
        Ok(AclPermission::Deny) => Some(Permission::Deny),
        Err(_) => return Err(invalid(format!("unknown ACL permission {raw}"))),
    })
}

/// The wire number of a resource type.
pub fn resource_type_to_wire(t: ResourceType) -> AclResourceType {
    match t {
        ResourceType::Topic => AclResourceType::Topic,
        ResourceType::Group => AclResourceType::Group,
        ResourceType::Cluster => AclResourceType::Cluster,
    }
}

fn pattern_type_to_wire(t: PatternType) -> AclPatternType {
    match t {
        PatternType::Literal => AclPatternType::Literal,
        PatternType::Prefixed => AclPatternType::Prefixed,
    }
}

/// The wire number of an operation.
pub fn operation_to_wire(o: Operation) -> AclOperation {
    match o {
        Operation::All => AclOperation::All,
        Operation::Read => AclOperation::Read,
        Operation::Write => AclOperation::Write,
        Operation::Create => AclOperation::Create,
        Operation::Delete => AclOperation::Delete,
        Operation::Alter => AclOperation::Alter,
        Operation::Describe => AclOperation::Describe,
    }
}

fn permission_to_wire(p: Permission) -> AclPermission {
    match p {
        Permission::Allow => AclPermission::Allow,
        Permission::Deny => AclPermission::Deny,
    }
}

/// The wire form of `acl`.
pub fn to_wire(acl: &Acl) -> AclBinding {
    AclBinding {
        principal: acl.principal.clone(),
        resource_type: resource_type_to_wire(acl.pattern.resource_type) as i32,
        pattern_type: pattern_type_to_wire(acl.pattern.pattern_type) as i32,
        resource_name: acl.pattern.name.clone(),
        operation: operation_to_wire(acl.operation) as i32,
        permission: permission_to_wire(acl.permission) as i32,
    }
}

/// The ACL `b` describes, checked ([`Acl::validate`]); `INVALID_ARGUMENT`
/// naming what is wrong otherwise.
pub fn from_wire(b: &AclBinding) -> Result<Acl, Error> {
    let missing = |what: &str| invalid(format!("ACL {}: {what} is required", b.principal));
    let acl = Acl {
        principal: b.principal.clone(),
        pattern: ResourcePattern {
            resource_type: resource_type(b.resource_type)?
                .ok_or_else(|| missing("the resource type"))?,
            pattern_type: pattern_type(b.pattern_type)?
                .ok_or_else(|| missing("the pattern type"))?,
            name: b.resource_name.clone(),
        },
        operation: operation(b.operation)?.ok_or_else(|| missing("the operation"))?,
        permission: permission(b.permission)?.ok_or_else(|| missing("the permission"))?,
    };
    acl.validate()
        .map_err(|e| invalid(format!("ACL {acl}: {e}")))?;
    Ok(acl)
}

/// The filter `f` describes (empty and unspecified fields match anything).
pub fn filter_from_wire(f: &AclBindingFilter) -> Result<AclFilter, Error> {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(AclFilter {
        principal: text(&f.principal),
        resource_type: resource_type(f.resource_type)?,
        pattern_type: pattern_type(f.pattern_type)?,
        name: text(&f.resource_name),
        operation: operation(f.operation)?,
        permission: permission(f.permission)?,
    })
}

/// The wire form of `f`.
pub fn filter_to_wire(f: &AclFilter) -> AclBindingFilter {
    AclBindingFilter {
        principal: f.principal.clone().unwrap_or_default(),
        resource_type: f
            .resource_type
            .map_or(AclResourceType::Unspecified, resource_type_to_wire)
            as i32,
        pattern_type: f
            .pattern_type
            .map_or(AclPatternType::Unspecified, pattern_type_to_wire) as i32,
        resource_name: f.name.clone().unwrap_or_default(),
        operation: f
            .operation
            .map_or(AclOperation::Unspecified, operation_to_wire) as i32,
        permission: f
            .permission
            .map_or(AclPermission::Unspecified, permission_to_wire) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_acl_survives_the_wire_and_bad_ones_are_named() {
        for &t in ResourceType::ALL_VALUES {
            for &p in PatternType::ALL_VALUES {
                for &o in Operation::ALL_VALUES {
                    for &perm in Permission::ALL_VALUES {
                        let acl = Acl {
                            principal: "User:alice".into(),
                            pattern: ResourcePattern {
                                resource_type: t,
                                pattern_type: p,
                                name: if t == ResourceType::Cluster {
                                    "cluster".into()
                                } else {
                                    "orders".into()
                                },
                            },
                            operation: o,
                            permission: perm,
                        };
                        match acl.validate() {
                            Ok(()) => assert_eq!(from_wire(&to_wire(&acl)).unwrap(), acl),
                            Err(_) => {
                                let e = from_wire(&to_wire(&acl)).unwrap_err();
                                assert_eq!(e.reason, Reason::InvalidArgument);
                            }
                        }
                    }
                }
            }
        }
        let mut b = to_wire(&Acl {
            principal: "User:bob".into(),
            pattern: ResourcePattern {
                resource_type: ResourceType::Topic,
                pattern_type: PatternType::Literal,
                name: "t".into(),
            },
            operation: Operation::Read,
            permission: Permission::Allow,
        });
        b.operation = 0;
        let e = from_wire(&b).unwrap_err();
        assert!(e.message.contains("the operation is required"), "{e}");
        b.operation = 99;
        let e = from_wire(&b).unwrap_err();
        assert!(e.message.contains("unknown ACL operation 99"), "{e}");
    }

    #[test]
    fn filters_round_trip_and_empty_fields_match_anything() {
        let any = filter_from_wire(&AclBindingFilter::default()).unwrap();
        assert_eq!(any, AclFilter::default());
        let f = AclFilter {
            principal: Some("User:a".into()),
            resource_type: Some(ResourceType::Group),
            pattern_type: Some(PatternType::Prefixed),
            name: Some("g".into()),
            operation: Some(Operation::Read),
            permission: Some(Permission::Deny),
        };
        assert_eq!(filter_from_wire(&filter_to_wire(&f)).unwrap(), f);
    }
}
