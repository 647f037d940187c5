use super::*;

fn acl(principal: &str, rt: &str, pt: &str, name: &str, op: &str, perm: &str) -> Acl {
    Acl {
        principal: principal.into(),
        pattern: ResourcePattern {
            resource_type: rt.parse().unwrap(),
            pattern_type: pt.parse().unwrap(),
            name: name.into(),
        },
        operation: op.parse().unwrap(),
        permission: perm.parse().unwrap(),
    }
}

fn acls(list: &[Acl]) -> Acls {
    let mut acls = Acls::default();
    for a in list {
        acls.add(a.clone()).unwrap();
    }
    acls
}

fn may(acls: &Acls, principal: &str, op: &str, rt: &str, name: &str) -> bool {
    let none = BTreeSet::new();
    Authorizer::new(acls, &none)
        .authorize(principal, op.parse().unwrap(), rt.parse().unwrap(), name)
        .allowed()
}

#[test]
fn no_acl_allows_nothing() {
    let empty = Acls::default();
    for op in Operation::ALL_VALUES {
        assert!(!may(&empty, "User:alice", op.as_str(), "topic", "orders"));
    }
}

#[test]
fn a_literal_acl_covers_its_name_only_and_star_covers_every_name() {
    let a = acls(&[acl(
        "User:alice",
        "topic",
        "literal",
        "orders",
        "write",
        "allow",
    )]);
    assert!(may(&a, "User:alice", "write", "topic", "orders"));
    assert!(!may(&a, "User:alice", "write", "topic", "orders2"));
    assert!(!may(&a, "User:alice", "write", "topic", "order"));
    assert!(!may(&a, "User:bob", "write", "topic", "orders"));
    assert!(!may(&a, "User:alice", "read", "topic", "orders"));
    assert!(
        !may(&a, "User:alice", "write", "group", "orders"),
        "another resource type"
    );
    let star = acls(&[acl("User:alice", "topic", "literal", "*", "read", "allow")]);
    assert!(may(&star, "User:alice", "read", "topic", "anything"));
    assert!(!may(&star, "User:alice", "read", "group", "anything"));
}

#[test]
fn a_prefixed_acl_covers_every_name_it_starts() {
    let a = acls(&[acl(
        "User:alice",
        "topic",
        "prefixed",
        "orders.",
        "read",
        "allow",
    )]);
    assert!(may(&a, "User:alice", "read", "topic", "orders.eu"));
    assert!(may(&a, "User:alice", "read", "topic", "orders."));
    assert!(!may(&a, "User:alice", "read", "topic", "orders"));
    assert!(!may(&a, "User:alice", "read", "topic", "payments.eu"));
}

#[test]
fn the_wildcard_principal_covers_everyone() {
    let a = acls(&[acl("User:*", "topic", "literal", "public", "read", "allow")]);
    assert!(may(&a, "User:alice", "read", "topic", "public"));
    assert!(may(&a, "User:ANONYMOUS", "read", "topic", "public"));
}

#[test]
fn deny_wins_over_allow_wherever_it_matches() {
    let a = acls(&[
        acl("User:*", "topic", "prefixed", "orders", "all", "allow"),
        acl(
            "User:mallory",
            "topic",
            "literal",
            "orders.secret",
            "read",
            "deny",
        ),
        acl(
            "User:*",
            "topic",
            "literal",
            "orders.frozen",
            "write",
            "deny",
        ),
    ]);
    assert!(may(&a, "User:mallory", "read", "topic", "orders.eu"));
    assert!(!may(&a, "User:mallory", "read", "topic", "orders.secret"));
    assert!(
        may(&a, "User:mallory", "write", "topic", "orders.secret"),
        "a deny covers its operation only"
    );
    assert!(may(&a, "User:alice", "read", "topic", "orders.secret"));
    assert!(!may(&a, "User:alice", "write", "topic", "orders.frozen"));
    let none = BTreeSet::new();
    let decision = Authorizer::new(&a, &none).authorize(
        "User:mallory",
        Operation::Read,
        ResourceType::Topic,
        "orders.secret",
    );
    match decision {
        Decision::DeniedBy(acl) => {
            assert_eq!(
                acl.to_string(),
                "deny User:mallory read topic:orders.secret"
            )
        }
        other => panic!("{other:?}"),
    }
    let deny_all = acls(&[
        acl("User:eve", "topic", "literal", "*", "all", "deny"),
        acl("User:eve", "topic", "literal", "*", "all", "allow"),
    ]);
    for op in Operation::ALL_VALUES {
        assert!(!may(&deny_all, "User:eve", op.as_str(), "topic", "x"));
    }
}

#[test]
fn allowing_read_write_delete_or_alter_allows_describe() {
    for op in ["read", "write", "delete", "alter"] {
        let a = acls(&[acl("User:alice", "topic", "literal", "t", op, "allow")]);
        assert!(may(&a, "User:alice", "describe", "topic", "t"), "{op}");
        assert!(!may(&a, "User:alice", "create", "topic", "t"), "{op}");
    }
    let create = acls(&[acl(
        "User:alice",
        "topic",
        "literal",
        "t",
        "create",
        "allow",
    )]);
    assert!(!may(&create, "User:alice", "describe", "topic", "t"));
    // A deny of read does not deny describe.
    let a = acls(&[
        acl("User:alice", "topic", "literal", "t", "write", "allow"),
        acl("User:alice", "topic", "literal", "t", "read", "deny"),
    ]);
    assert!(may(&a, "User:alice", "describe", "topic", "t"));
    assert!(!may(&a, "User:alice", "read", "topic", "t"));
}

#[test]
fn superusers_are_allowed_everything_even_what_is_denied() {
    let a = acls(&[acl("User:root", "topic", "literal", "*", "all", "deny")]);
    let supers: BTreeSet<String> = ["User:root".to_string()].into();
    let auth = Authorizer::new(&a, &supers);
    assert_eq!(
        auth.authorize("User:root", Operation::Delete, ResourceType::Topic, "x"),
        Decision::Superuser
    );
    assert_eq!(
        auth.authorize("User:alice", Operation::Delete, ResourceType::Topic, "x"),
        Decision::NoAclAllows
    );
}

#[test]
fn every_operation_on_every_resource_type_is_decided_by_its_own_acl() {
    // The matrix: for each resource type and operation it has, an allow
    // of exactly that operation allows it and nothing else but implied
    // describe; a deny of it refuses it even under an allow of all.
    let cases: &[(&str, &str)] = &[
        ("topic", "orders"),
        ("group", "billing"),
        ("cluster", CLUSTER_NAME),
    ];
    for &(rt, name) in cases {
        for op in Operation::ALL_VALUES
            .iter()
            .filter(|o| **o != Operation::All)
        {
            let allow = acl("User:alice", rt, "literal", name, op.as_str(), "allow");
            if allow.validate().is_err() {
                continue;
            }
            let a = acls(&[allow]);
            for other in Operation::ALL_VALUES
                .iter()
                .filter(|o| **o != Operation::All)
            {
                let implied = *other == Operation::Describe
                    && matches!(
                        op,
                        Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                    );
                assert_eq!(
                    may(&a, "User:alice", other.as_str(), rt, name),
                    other == op || implied,
                    "allow {op} on {rt}: {other}"
                );
            }
            assert!(!may(&a, "User:bob", op.as_str(), rt, name));
            let denied = acls(&[
                acl("User:alice", rt, "literal", name, "all", "allow"),
                acl("User:alice", rt, "literal", name, op.as_str(), "deny"),
            ]);
            assert!(
                !may(&denied, "User:alice", op.as_str(), rt, name),
                "deny {op} on {rt}"
            );
        }
    }
}

#[test]
fn acls_that_cannot_be_stored_are_refused_with_a_reason() {
    let bad = |a: Acl, why: &str| {
        let e = Acls::default().add(a).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    };
    bad(
        acl("alice", "topic", "literal", "t", "read", "allow"),
        "User:",
    );
    bad(
        acl("User:", "topic", "literal", "t", "read", "allow"),
        "User:",
    );
    bad(
        acl("User:a b", "topic", "literal", "t", "read", "allow"),
        "User:",
    );
    bad(
        acl("User:a", "topic", "literal", "", "read", "allow"),
        "empty",
    );
    bad(
        acl("User:a", "topic", "prefixed", "*", "read", "allow"),
        "literal `*`",
    );
    bad(
        acl("User:a", "cluster", "literal", "other", "alter", "allow"),
        "cluster",
    );
    bad(
        acl("User:a", "cluster", "prefixed", "cluster", "alter", "allow"),
        "cluster",
    );
    bad(
        acl("User:a", "group", "literal", "g", "write", "allow"),
        "group has no write",
    );
    bad(
        acl("User:a", "cluster", "literal", "cluster", "read", "allow"),
        "cluster has no read",
    );
    assert!(
        "nope"
            .parse::<Operation>()
            .unwrap_err()
            .to_string()
            .contains("read, write")
    );
    assert_eq!(
        "TOPIC".parse::<ResourceType>().unwrap(),
        ResourceType::Topic
    );
}

#[test]
fn acls_are_a_set_listed_and_removed_by_filter() {
    let mut a = Acls::default();
    let read = acl("User:alice", "topic", "literal", "t", "read", "allow");
    assert!(a.add(read.clone()).unwrap());
    assert!(!a.add(read.clone()).unwrap(), "added twice, stored once");
    a.add(acl("User:alice", "group", "literal", "g", "read", "allow"))
        .unwrap();
    a.add(acl("User:bob", "topic", "prefixed", "t", "write", "deny"))
        .unwrap();
    assert_eq!(a.len(), 3);
    let alice = AclFilter {
        principal: Some("User:alice".into()),
        ..AclFilter::default()
    };
    assert_eq!(a.list(&alice).len(), 2);
    let topics = AclFilter {
        resource_type: Some(ResourceType::Topic),
        ..AclFilter::default()
    };
    assert_eq!(a.list(&topics).len(), 2);
    let removed = a.remove(&AclFilter {
        principal: Some("User:alice".into()),
        resource_type: Some(ResourceType::Topic),
        ..AclFilter::default()
    });
    assert_eq!(removed, vec![read]);
    assert_eq!(a.len(), 2);
    assert_eq!(a.remove(&AclFilter::default()).len(), 2);
    assert!(a.is_empty());
}

#[test]
fn some_resource_of_a_type_is_enough_unless_every_name_is_denied() {
    let mut a = Acls::default();
    a.add(acl(
        "User:alice",
        "topic",
        "prefixed",
        "orders.",
        "write",
        "allow",
    ))
    .unwrap();
    a.add(acl("User:carol", "topic", "literal", "t", "write", "allow"))
        .unwrap();
    a.add(acl("User:carol", "topic", "literal", "*", "all", "deny"))
        .unwrap();
    let su = BTreeSet::from(["User:root".to_string()]);
    let z = Authorizer::new(&a, &su);
    assert!(z.authorize_any("User:alice", Operation::Write, ResourceType::Topic));
    assert!(z.authorize_any("User:alice", Operation::Describe, ResourceType::Topic));
    assert!(!z.authorize_any("User:alice", Operation::Read, ResourceType::Topic));
    assert!(!z.authorize_any("User:alice", Operation::Write, ResourceType::Group));
    assert!(!z.authorize_any("User:bob", Operation::Write, ResourceType::Topic));
    assert!(!z.authorize_any("User:carol", Operation::Write, ResourceType::Topic));
    assert!(z.authorize_any("User:root", Operation::Write, ResourceType::Topic));
}
