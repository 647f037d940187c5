//! ACLs end to end on separate processes: a controller, a storage node and
//! two gateways enforcing ACLs, principals authenticated by bearer tokens,
//! ACLs managed with `streambus acl` through one gateway and enforced by
//! both, refusals with `PERMISSION_DENIED`, a subscription stopped when
//! its ACL is removed, ACLs kept across a controller restart, and every
//! ACL change in the audit log.

mod procs;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use procs::{Cluster, connect_with_token, eventually};
use streambus_client::{
    GroupEvent, GroupOptions, OffsetReset, ProducerConfig, Record, StartFrom, SubscribeOptions, v1,
};

const ADMIN: &str = "admin-token-0123456789abcdef";
const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef00";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The CLI against `gateway` with `token`, `stdin` written to it.
fn cli_in(gateway: &str, token: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_streambus"))
        .args(args)
        .args(["--gateway", gateway, "--token", token])
        .env(
            "STREAMBUS_CLIENT_CONFIG",
            "/nonexistent/streambus-client.toml",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn cli(gateway: &str, token: &str, args: &[&str]) -> Output {
    cli_in(gateway, token, args, "")
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts the command failed with PERMISSION_DENIED saying `says`.
#[track_caller]
fn denied(out: &Output, says: &str) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "succeeded: {}", text(&out.stdout));
    assert!(
        stderr.contains("PERMISSION_DENIED") && stderr.contains(says),
        "expected PERMISSION_DENIED with {says:?}, got: {stderr}"
    );
}

fn topics(gateway: &str, token: &str) -> Vec<String> {
    ok(&cli(gateway, token, &["topic", "list"]))
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn acls_decide_who_does_what_on_every_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("admin {ADMIN}\nalice {ALICE}\nbob {BOB}\n"),
    )
    .unwrap();
    let settings = [
        format!("gateway.auth.token_file={}", tokens.display()),
        "gateway.auth.acls=true".to_string(),
        "gateway.auth.superusers=User:admin".to_string(),
    ];
    let mut cluster = Cluster::start_configured(1, 2, &[], &settings);
    let (g0, g1) = (
        cluster.gateway_addrs[0].clone(),
        cluster.gateway_addrs[1].clone(),
    );

    // The superuser needs no ACL.
    for t in ["orders.eu", "orders.us", "payments"] {
        ok(&cli(&g0, ADMIN, &["topic", "create", t]));
    }
    // Without ACLs Alice sees nothing and may change nothing.
    assert!(topics(&g0, ALICE).is_empty());
    denied(
        &cli(&g0, ALICE, &["topic", "create", "mine"]),
        "User:alice may not create topic \"mine\": no ACL allows it",
    );
    denied(
        &cli(&g0, ALICE, &["acl", "list"]),
        "User:alice may not describe cluster \"cluster\"",
    );

    // Bad ACLs are refused by the CLI before anything is sent.
    let out = cli(
        &g0,
        ADMIN,
        &[
            "acl",
            "create",
            "--allow",
            "alice",
            "--operation",
            "read",
            "--topic",
            "t",
        ],
    );
    assert!(
        !out.status.success() && text(&out.stderr).contains("expected User:<name>"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(
        &g0,
        ADMIN,
        &[
            "acl",
            "create",
            "--allow",
            "User:alice",
            "--operation",
            "write",
            "--group",
            "g",
        ],
    );
    assert!(
        !out.status.success() && text(&out.stderr).contains("group has no write operation"),
        "{}",
        text(&out.stderr)
    );

    // ACLs made through gateway 0.
    let made = ok(&cli(
        &g0,
        ADMIN,
        &[
            "acl",
            "create",
            "--allow",
            "User:alice",
            "--operation",
            "read,write",
            "--topic",
            "orders.",
            "--prefixed",
        ],
    ));
    assert!(made.contains("created 2 ACLs"), "{made}");
    ok(&cli(
        &g0,
        ADMIN,
        &[
            "acl",
            "create",
            "--deny",
            "User:alice",
            "--operation",
            "write",
            "--topic",
            "orders.us",
        ],
    ));
    ok(&cli(
        &g0,
        ADMIN,
        &[
            "acl",
            "create",
            "--allow",
            "User:alice",
            "--operation",
            "read",
            "--group",
            "app-",
            "--prefixed",
        ],
    ));
    ok(&cli(
        &g0,
        ADMIN,
        &[
            "acl",
            "create",
            "--allow",
            "User:bob",
            "--operation",
            "describe",
            "--topic",
            "*",
        ],
    ));
    let listed = ok(&cli(
        &g0,
        ADMIN,
        &["acl", "list", "--principal", "User:alice"],
    ));
    assert_eq!(listed.lines().count(), 1 + 4, "{listed}");
    assert!(
        listed.contains("User:alice  deny        write      topic     literal   orders.us"),
        "{listed}"
    );

    // Enforced by gateway 1 as well, once its metadata has them.
    eventually("gateway 1 enforcing the new ACLs", || {
        topics(&g1, ALICE) == ["orders.eu", "orders.us"]
    });
    assert_eq!(topics(&g1, BOB), ["orders.eu", "orders.us", "payments"]);
    ok(&cli_in(&g1, ALICE, &["produce", "orders.eu"], "one\ntwo\n"));
    // Deny wins over the prefixed allow.
    denied(
        &cli_in(&g1, ALICE, &["produce", "orders.us"], "x\n"),
        "User:alice may not write topic \"orders.us\": denied by ACL \"deny User:alice write topic:orders.us\"",
    );
    denied(
        &cli_in(&g1, ALICE, &["produce", "payments"], "x\n"),
        // The CLI looks the topic up first.
        "User:alice may not describe topic \"payments\"",
    );
    denied(
        &cli_in(&g1, BOB, &["produce", "orders.eu"], "x\n"),
        // Asking for an idempotent producer id needs write on some topic.
        "User:bob may not write any topic: no ACL allows it",
    );
    let read = ok(&cli(
        &g1,
        ALICE,
        &["consume", "orders.eu", "--from-beginning", "-n", "2"],
    ));
    assert_eq!(read, "one\ntwo\n");
    denied(
        &cli(
            &g1,
            ALICE,
            &["consume", "payments", "--from-beginning", "-n", "1"],
        ),
        "User:alice may not read topic \"payments\"",
    );
    assert!(ok(&cli(&g1, BOB, &["topic", "describe", "payments"])).contains("payments"));
    // A group she may read, and one she may not.
    let read = ok(&cli(
        &g1,
        ALICE,
        &[
            "consume",
            "orders.eu",
            "--group",
            "app-1",
            "--from-beginning",
            "-n",
            "2",
        ],
    ));
    assert_eq!(read, "one\ntwo\n");
    denied(
        &cli(
            &g1,
            ALICE,
            &["consume", "orders.eu", "--group", "other", "-n", "1"],
        ),
        "User:alice may not read group \"other\"",
    );
    denied(
        &cli(&g1, BOB, &["topic", "delete", "payments"]),
        "User:bob may not delete topic \"payments\"",
    );
    // Groups are listed as far as the caller may describe them.
    assert!(ok(&cli(&g1, ALICE, &["group", "list"])).contains("app-1"));
    assert_eq!(ok(&cli(&g1, BOB, &["group", "list"])).lines().count(), 1);

    let rt = tokio::runtime::Runtime::new().unwrap();
    // A pattern subscription is resolved at the gateway against what its
    // member may read: Alice's `.*` gets the orders topics, a new one as
    // it comes, and never payments (nor its name).
    rt.block_on(async {
        let alice = connect_with_token(&g1, ALICE).await;
        let mut member = alice
            .group_consumer(GroupOptions {
                pattern: Some(".*".into()),
                reset: OffsetReset::Earliest,
                ..GroupOptions::new("app-pattern", &[])
            })
            .await
            .unwrap();
        let readable = ["orders.eu", "orders.us", "orders.ap"];
        let (mut records, mut assigned) = (Vec::new(), BTreeSet::new());
        let mut created = false;
        while records.len() < 2 || !assigned.contains("orders.ap") {
            let event = tokio::time::timeout(Duration::from_secs(30), member.next())
                .await
                .expect("the member hears of orders.ap and reads orders.eu")
                .expect("the member stays")
                .expect("and is not refused");
            match event {
                GroupEvent::Record(_, r) => records.push(r.value.unwrap()),
                GroupEvent::Assigned(tps) => {
                    for tp in tps {
                        assert!(readable.contains(&tp.topic.as_str()), "{}", tp.topic);
                        assigned.insert(tp.topic);
                    }
                }
                GroupEvent::Revoked(_) | GroupEvent::Lost(_) => {}
            }
            if !created && assigned.contains("orders.eu") {
                created = true;
                for t in ["orders.ap", "secret"] {
                    ok(&cli(&g0, ADMIN, &["topic", "create", t]));
                }
            }
        }
        assert_eq!(records, [Bytes::from("one"), Bytes::from("two")]);
        let admin = connect_with_token(&g0, ADMIN).await;
        let described = admin.describe_group("app-pattern").await.unwrap();
        let members = described.group.unwrap().members;
        assert_eq!(members[0].topic_pattern, ".*");
        assert_eq!(
            members[0].topics,
            ["orders.ap", "orders.eu", "orders.us"],
            "the member's subscription"
        );
        member.close().await.unwrap();
        for t in ["orders.ap", "secret"] {
            admin.delete_topic(t).await.unwrap();
        }
    });

    // An ACL removed while a subscription reads stops the subscription.
    rt.block_on(async {
        let alice = connect_with_token(&g1, ALICE).await;
        let mut sub = alice
            .subscribe(SubscribeOptions {
                start: StartFrom::Earliest,
                ..SubscribeOptions::new("orders.eu")
            })
            .await
            .unwrap();
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        let out = cli(
            &g0,
            ADMIN,
            &[
                "acl",
                "delete",
                "--principal",
                "User:alice",
                "--topic",
                "orders.",
                "--prefixed",
                "--operation",
                "read",
            ],
        );
        assert!(ok(&out).contains("orders."), "{}", text(&out.stdout));
        let admin = connect_with_token(&g0, ADMIN).await;
        admin
            .producer(ProducerConfig::default())
            .send_and_wait(
                "orders.eu",
                Record {
                    key: None,
                    value: Some(Bytes::from("after")),
                    headers: vec![],
                    timestamp_ms: 0,
                },
                Some(0),
            )
            .await
            .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("the subscription ends")
            .expect("with an error");
        let e = end.expect_err("the record after the ACL was removed is not delivered");
        assert!(e.to_string().contains("PERMISSION_DENIED"), "{e}");

        // The API refuses what the CLI would not send.
        let e = admin
            .create_acls(vec![v1::AclBinding {
                principal: "User:x".into(),
                resource_name: "t".into(),
                ..v1::AclBinding::default()
            }])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("INVALID_ARGUMENT"), "{e}");
    });

    // The internal groups topic stays closed even to `read` on every
    // topic, and unlisted.
    ok(&cli(
        &g0,
        ADMIN,
        &[
            "acl",
            "create",
            "--allow",
            "User:bob",
            "--operation",
            "read",
            "--topic",
            "*",
        ],
    ));
    denied(
        &cli(
            &g0,
            BOB,
            &["consume", "__groups", "--from-beginning", "-n", "1"],
        ),
        "the internal topic __groups is for superusers only",
    );
    assert_eq!(topics(&g0, BOB), ["orders.eu", "orders.us", "payments"]);
    assert!(topics(&g0, ADMIN).contains(&"__groups".to_string()));

    // ACLs are replicated metadata: a controller killed and started again
    // still has them, and the gateways still enforce them.
    let controller = cluster.controllers.get_mut(&1).unwrap();
    controller.kill();
    controller.start();
    controller.wait_ready();
    eventually("the ACLs back after the controller restart", || {
        let out = cli(&g0, ADMIN, &["acl", "list", "--principal", "User:alice"]);
        out.status.success() && text(&out.stdout).lines().count() == 1 + 3
    });
    denied(
        &cli_in(&g0, ALICE, &["produce", "orders.us"], "x\n"),
        "denied by ACL",
    );

    // Every ACL change, and the refused admin change, are in the audit log.
    let log = std::fs::read_to_string(&cluster.gateways[0].log).unwrap();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("streambus::audit"))
        .collect();
    let creates = audit
        .iter()
        .filter(|l| {
            l.contains("CreateAcls")
                && l.contains("principal=User:admin")
                && l.contains("result=\"ok\"")
        })
        .count();
    assert_eq!(creates, 5, "{audit:#?}");
    assert!(
        audit
            .iter()
            .any(|l| l.contains("CreateAcls") && l.contains("INVALID_ARGUMENT")),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("DeleteAcls") && l.contains("removed=1")),
        "{audit:#?}"
    );
    let log1 = std::fs::read_to_string(&cluster.gateways[1].log).unwrap();
    assert!(
        log1.lines().any(|l| l.contains("streambus::audit")
            && l.contains("DeleteTopic")
            && l.contains("principal=User:bob")
            && l.contains("PERMISSION_DENIED")),
        "{log1}"
    );
    drop(cluster);
}
