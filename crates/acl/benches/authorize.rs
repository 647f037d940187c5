//! What one authorization costs as ACLs grow: a gateway asks once per
//! produced batch, fetch and admin call. 1,000 principals with ten ACLs
//! each, plus a few for `User:*`; the principal asking has its own.

use std::collections::BTreeSet;

use criterion::{Criterion, criterion_group, criterion_main};
use streambus_acl::{
    Acl, Acls, Authorizer, Operation, PatternType, Permission, ResourcePattern, ResourceType,
};

fn acls(principals: usize) -> Acls {
    let mut acls = Acls::default();
    for p in 0..principals {
        for t in 0..10 {
            acls.add(Acl {
                principal: format!("User:app-{p}"),
                pattern: ResourcePattern {
                    resource_type: ResourceType::Topic,
                    pattern_type: if t % 2 == 0 {
                        PatternType::Literal
                    } else {
                        PatternType::Prefixed
                    },
                    name: format!("team-{p}.topic-{t}"),
                },
                operation: Operation::Write,
                permission: Permission::Allow,
            })
            .unwrap();
        }
    }
    acls.add(Acl {
        principal: "User:*".into(),
        pattern: ResourcePattern {
            resource_type: ResourceType::Topic,
            pattern_type: PatternType::Literal,
            name: "public".into(),
        },
        operation: Operation::Read,
        permission: Permission::Allow,
    })
    .unwrap();
    acls
}

fn authorize(c: &mut Criterion) {
    let superusers = BTreeSet::new();
    for principals in [10, 1_000] {
        let acls = acls(principals);
        let z = Authorizer::new(&acls, &superusers);
        let asking = format!("User:app-{}", principals / 2);
        let topic = format!("team-{}.topic-4", principals / 2);
        c.bench_function(&format!("authorize/{}_acls", acls.len()), |b| {
            b.iter(|| {
                let d = z.authorize(
                    std::hint::black_box(&asking),
                    Operation::Write,
                    ResourceType::Topic,
                    std::hint::black_box(&topic),
                );
                assert!(d.allowed());
            })
        });
    }
}

criterion_group!(benches, authorize);
criterion_main!(benches);
