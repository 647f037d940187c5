//! The chart and the operator against a real Kubernetes API server (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, kwok on
//! 127.0.0.1) and a real `streambus dev`, as a user drives them: `helm
//! install --wait`, `kubectl apply`, `streambus topic describe`.
//!
//! Run it with `cargo xtask k8s test` (part of `cargo xtask ci`): that
//! builds and starts the control plane and `streambus dev`, and passes
//! their addresses in `KUBECONFIG`, `STREAMBUS_K8S_BIN`,
//! `STREAMBUS_GATEWAY` and `STREAMBUS_BIN`.
//!
//! Pods there never run (kwok only marks them Running and Ready) and their
//! IPs are fake: nothing here sends traffic to them. The operator runs as
//! a local process with the chart's ServiceAccount token, so the chart's
//! RBAC is what it is tested with.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Env {
    kubeconfig: PathBuf,
    bin: PathBuf,
    gateway: String,
    streambus: PathBuf,
    namespace: String,
    /// The Helm release (cluster-scoped RBAC objects are named after it).
    release: String,
    /// The multi-node StreamBus cluster standing in for StreamBusCluster
    /// demo (its node ids match demo's pods): its gateway, directory, and
    /// the xtask binary that kills and restarts its processes.
    cluster_gateway: String,
    cluster_dir: PathBuf,
    xtask: PathBuf,
}

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run this test with `cargo xtask k8s test`"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/streambus")
}

impl Env {
    fn from_env() -> Env {
        Env {
            kubeconfig: var("KUBECONFIG").into(),
            bin: var("STREAMBUS_K8S_BIN").into(),
            gateway: var("STREAMBUS_GATEWAY"),
            cluster_gateway: var("STREAMBUS_CLUSTER_GATEWAY"),
            cluster_dir: var("STREAMBUS_CLUSTER_DIR").into(),
            xtask: var("STREAMBUS_XTASK").into(),
            streambus: var("STREAMBUS_BIN").into(),
            namespace: format!("sbtest-{}", std::process::id()),
            release: format!("sb{}", std::process::id()),
        }
    }

    fn tool(&self, name: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(self.bin.join(name))
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// kubectl in the test namespace; panics on failure.
    fn kubectl(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.namespace];
        full.extend_from_slice(args);
        let out = self.tool("kubectl", &full, None);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn apply(&self, yaml: &str) -> Output {
        self.tool(
            "kubectl",
            &["-n", &self.namespace, "apply", "-f", "-"],
            Some(yaml),
        )
    }

    fn apply_ok(&self, yaml: &str) {
        let out = self.apply(yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            text(&out.stderr)
        );
    }

    fn get_json(&self, what: &str) -> Option<Value> {
        let out = self.tool(
            "kubectl",
            &["-n", &self.namespace, "get", what, "-o", "json"],
            None,
        );
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    fn helm(&self, args: &[&str]) -> String {
        let out = self.tool("helm", args, None);
        assert!(
            out.status.success(),
            "helm {} failed: {}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn streambus(&self, args: &[&str]) -> Output {
        Command::new(&self.streambus)
            .args(args)
            .env("STREAMBUS_GATEWAY", &self.gateway)
            .output()
            .unwrap()
    }

    /// Removes what a failed earlier run left on the control plane (its
    /// namespace is kept for a look): its resources would otherwise be
    /// reconciled by this run's operator against this run's StreamBus.
    fn remove_earlier_runs(&self) {
        let namespaces = self.kubectl(&["get", "namespaces", "-o", "name"]);
        for ns in namespaces
            .lines()
            .filter_map(|l| l.strip_prefix("namespace/"))
        {
            if !ns.starts_with("sbtest-") || ns == self.namespace {
                continue;
            }
            let topics = self.tool(
                "kubectl",
                &["get", "streambustopics", "-n", ns, "-o", "name"],
                None,
            );
            for topic in text(&topics.stdout).lines() {
                let _ = self.tool(
                    "kubectl",
                    &[
                        "patch",
                        topic,
                        "-n",
                        ns,
                        "--type",
                        "merge",
                        "-p",
                        "{\"metadata\":{\"finalizers\":null}}",
                    ],
                    None,
                );
            }
            let _ = self.tool(
                "kubectl",
                &[
                    "delete",
                    "streambustopics,streambusclusters",
                    "--all",
                    "-n",
                    ns,
                    "--wait=false",
                ],
                None,
            );
            let _ = self.tool(
                "kubectl",
                &["delete", "namespace", ns, "--wait=false"],
                None,
            );
        }
    }

    /// `streambus ARGS` against the multi-node cluster.
    fn on_cluster(&self, args: &[&str]) -> String {
        let out = Command::new(&self.streambus)
            .args(args)
            .env("STREAMBUS_GATEWAY", &self.cluster_gateway)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "streambus {} failed: {}",
            args.join(" "),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `streambus cluster status` of the multi-node cluster.
    fn cluster_status(&self) -> Value {
        serde_json::from_str(&self.on_cluster(&["cluster", "status", "--format", "json"])).unwrap()
    }

    /// `cargo xtask cluster kill|restart ROLE ID` on the multi-node cluster.
    fn cluster_process(&self, action: &str, role: &str, id: &str) {
        let dir = self.cluster_dir.to_str().unwrap();
        let out = Command::new(&self.xtask)
            .args(["cluster", action, role, id, "--dir", dir])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{action} {role} {id}: {}",
            text(&out.stderr)
        );
    }

    /// `name -> uid` of the pods of `component` of cluster demo.
    fn pod_uids(&self, component: &str) -> BTreeMap<String, String> {
        let selector =
            format!("app.kubernetes.io/instance=demo,app.kubernetes.io/component={component}");
        let out = self.kubectl(&[
            "get",
            "pods",
            "-l",
            &selector,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.uid}{\"\\n\"}{end}",
        ]);
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, u)| (n.to_string(), u.to_string()))
            .collect()
    }

    /// The notes of the operator's events with `reason` about demo, oldest
    /// first.
    fn events(&self, reason: &str) -> Vec<String> {
        let list = self.get_json("events.events.k8s.io").unwrap_or_default();
        let mut found: Vec<(String, String)> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["reason"] == reason && e["regarding"]["name"] == "demo")
            .map(|e| {
                let at = e["eventTime"]
                    .as_str()
                    .or(e["metadata"]["creationTimestamp"].as_str())
                    .unwrap_or_default()
                    .to_string();
                (at, e["note"].as_str().unwrap_or_default().to_string())
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, n)| n).collect()
    }

    fn describe(&self, topic: &str) -> Option<String> {
        let out = self.streambus(&["topic", "describe", topic]);
        out.status.success().then(|| text(&out.stdout))
    }

    /// Waits until `check` returns `Some`, polling; panics with `what`.
    fn wait<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            if started.elapsed() > timeout {
                let ops = self.tool(
                    "kubectl",
                    &[
                        "-n",
                        &self.namespace,
                        "get",
                        "streambustopics,streambusclusters,events",
                        "-o",
                        "wide",
                    ],
                    None,
                );
                panic!("{what}: not within {timeout:?}\n{}", text(&ops.stdout));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn condition(&self, what: &str, type_: &str) -> Option<(String, String, String)> {
        condition_of(&self.get_json(what)?, type_)
    }

    /// Waits until the Ready condition of `what` has `status` and `reason`
    /// for the object's current generation.
    fn wait_ready(&self, what: &str, status: &str, reason: &str) -> Value {
        self.wait(
            &format!("{what} Ready={status} ({reason})"),
            Duration::from_secs(60),
            || {
                let obj = self.get_json(what)?;
                let generation = obj["metadata"]["generation"].clone();
                let (s, r, _) = condition_of(&obj, "Ready")?;
                (s == status && r == reason && obj["status"]["observedGeneration"] == generation)
                    .then_some(obj)
            },
        )
    }
}

/// `(status, reason, message)` of the condition `type_` of `obj`.
fn condition_of(obj: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
        c["message"].as_str()?.to_string(),
    ))
}

fn topic_yaml(name: &str, topic: Option<&str>, partitions: u32, extra: &str) -> String {
    let topic_name = topic
        .map(|t| format!("  topicName: {t}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: streambus.io/v1alpha1\nkind: StreamBusTopic\nmetadata:\n  name: {name}\n  labels:\n    streambus.io/cluster: dev\nspec:\n{topic_name}  partitions: {partitions}\n{extra}"
    )
}

/// The operator as a local process, authenticated with the chart's
/// ServiceAccount token.
struct Operator {
    child: Child,
    http: String,
}

impl Operator {
    /// `secure_gateway`: where the gateway standing in for the TLS
    /// cluster `secure` will listen.
    fn start(env: &Env, sa: &str, dir: &Path, secure_gateway: &str) -> Operator {
        let token = env.kubectl(&["create", "token", sa, "--duration", "1h"]);
        let admin: serde_json::Value = serde_json::from_str(
            &env.kubectl(&["config", "view", "--raw", "--minify", "-o", "json"]),
        )
        .unwrap();
        let cluster = &admin["clusters"][0]["cluster"];
        let kubeconfig = dir.join("operator.kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: operator\n  user:\n    token: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: operator, namespace: {}}}\ncurrent-context: c\n",
                cluster["server"].as_str().unwrap(),
                cluster["certificate-authority"].as_str().unwrap(),
                token.trim(),
                env.namespace
            ),
        )
        .unwrap();
        let http = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("operator.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_streambus-operator"))
            .args(["run", "--http-addr", &http, "--resync", "3s"])
            .args(["--external-cluster", &format!("dev={}", env.gateway)])
            .args([
                "--cluster-gateway",
                &format!("{}/demo={}", env.namespace, env.cluster_gateway),
                "--cluster-gateway",
                &format!("{}/secure={secure_gateway}", env.namespace),
                "--restart-settle",
                "2s",
            ])
            .args([
                "--lease-namespace",
                &env.namespace,
                "--instance",
                "test-operator",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Operator { child, http }
    }

    fn get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "2",
                &format!("http://{}{path}", self.http),
            ])
            .output()
            .unwrap();
        text(&out.stdout)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs the Kubernetes test control plane and streambus dev: cargo xtask k8s test"]
fn chart_and_operator_on_a_real_api_server() {
    let env = Env::from_env();
    // Kept when the test fails: the operator's log is in it.
    let work = std::env::temp_dir().join(format!("streambus-k8s-test-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    eprintln!("operator log: {}", work.join("operator.log").display());
    let started = Instant::now();
    // The topics this test makes, left over by an earlier run against the
    // same streambus dev.
    for topic in ["orders", "legacy", "drift"] {
        let _ = env.streambus(&["topic", "delete", topic]);
    }
    env.remove_earlier_runs();

    // The chart: schema-checked values, accepted by the API server, and
    // installed with --wait (kwok makes the operator pod ready).
    let bad = env.tool(
        "helm",
        &[
            "template",
            "x",
            chart().to_str().unwrap(),
            "--set",
            "operator.replicas=0",
        ],
        None,
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("/operator/replicas"),
        "{}",
        text(&bad.stderr)
    );
    let pod_monitor_selector = monitoring_renders_the_deploy_files(&env);
    env.helm(&[
        "install",
        &env.release,
        chart().to_str().unwrap(),
        "-n",
        &env.namespace,
        "--create-namespace",
        "--dry-run=server",
    ]);
    env.helm(&[
        "install",
        &env.release,
        chart().to_str().unwrap(),
        "-n",
        &env.namespace,
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
        "--set",
        &format!("operator.externalClusters.dev={}", env.gateway),
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
    ]);
    // The dashboard's ConfigMap, labelled for Grafana's sidecar.
    let dashboards = env.kubectl(&[
        "get",
        "configmap",
        "-l",
        &format!(
            "app.kubernetes.io/instance={},grafana_dashboard=1",
            env.release
        ),
        "-o",
        "json",
    ]);
    let dashboards: Value = serde_json::from_str(&dashboards).unwrap();
    assert_eq!(dashboards["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        dashboards["items"][0]["data"]["streambus.json"],
        deploy_file("grafana-dashboard.json")
    );
    let sa = &format!("{}-streambus-operator", env.release);
    assert_eq!(
        env.kubectl(&[
            "get",
            "deployment",
            sa,
            "-o",
            "jsonpath={.status.readyReplicas}"
        ]),
        "1"
    );
    eprintln!("chart installed in {:.1?}", started.elapsed());
    service_account_tokens_authenticate_at_a_gateway(&env, &work);
    eprintln!("ServiceAccount tokens checked in {:.1?}", started.elapsed());

    let secure_gateway = format!("127.0.0.1:{}", free_port());
    let operator = Operator::start(&env, sa, &work, &secure_gateway);
    env.wait("operator leads", Duration::from_secs(30), || {
        operator
            .get("/metrics")
            .contains("streambus_operator_leader 1")
            .then_some(())
    });
    env.wait("operator ready", Duration::from_secs(10), || {
        operator.get("/readyz").starts_with("ready").then_some(())
    });
    assert_eq!(
        env.kubectl(&[
            "get",
            "lease",
            "streambus-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}"
        ]),
        "test-operator"
    );

    // Created with the spec's partitions and configs.
    env.apply_ok(&topic_yaml(
        "orders",
        None,
        3,
        "  config:\n    retention.ms: \"86400000\"\n    cleanup.policy: compact\n",
    ));
    let obj = env.wait_ready("streambustopic/orders", "True", "Ready");
    assert_eq!(obj["status"]["partitions"], 3);
    let id = obj["status"]["topicId"].as_str().unwrap().to_string();
    let d = env.describe("orders").expect("topic created");
    assert!(d.contains(&format!("ID                  {id}")), "{d}");
    assert!(d.contains("PARTITIONS          3"), "{d}");
    assert!(
        d.lines()
            .any(|l| l.split_whitespace().eq(["retention.ms", "86400000"])),
        "{d}"
    );
    assert!(
        d.lines()
            .any(|l| l.split_whitespace().eq(["cleanup.policy", "compact"])),
        "{d}"
    );
    assert!(
        obj["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "streambus.io/topic")
    );

    // Altered: more partitions.
    env.apply_ok(&topic_yaml(
        "orders",
        None,
        5,
        "  config:\n    retention.ms: \"86400000\"\n    cleanup.policy: compact\n",
    ));
    env.wait(
        "orders grows to 5 partitions",
        Duration::from_secs(30),
        || {
            env.describe("orders")?
                .contains("PARTITIONS          5")
                .then_some(())
        },
    );
    env.wait_ready("streambustopic/orders", "True", "Ready");

    // Refused with a condition: fewer partitions.
    env.apply_ok(&topic_yaml(
        "orders",
        None,
        2,
        "  config:\n    retention.ms: \"86400000\"\n    cleanup.policy: compact\n",
    ));
    env.wait_ready("streambustopic/orders", "False", "PartitionDecreaseRefused");
    assert!(
        env.describe("orders")
            .unwrap()
            .contains("PARTITIONS          5")
    );
    // A config change is applied; a key left out of spec.config goes back
    // to its default.
    env.apply_ok(&topic_yaml(
        "orders",
        None,
        5,
        "  config:\n    retention.ms: \"1000\"\n",
    ));
    env.wait(
        "orders takes the new config",
        Duration::from_secs(30),
        || {
            let d = env.describe("orders")?;
            let has = |k: &str, v: &str| d.lines().any(|l| l.split_whitespace().eq([k, v]));
            (has("retention.ms", "1000") && has("cleanup.policy", "delete")).then_some(())
        },
    );
    env.wait_ready("streambustopic/orders", "True", "Ready");
    let events = env.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=orders",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(
        events.contains("Created")
            && events.contains("PartitionDecreaseRefused")
            && events.contains("ConfigChanged"),
        "{events}"
    );

    // Schema validation by the API server.
    let out = env.apply(&topic_yaml("bad", None, 0, ""));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("spec.partitions"),
        "{}",
        text(&out.stderr)
    );
    let out = env.apply(&topic_yaml("bad", Some("no spaces allowed"), 1, ""));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("spec.topicName"),
        "{}",
        text(&out.stderr)
    );

    // Adopted when it exists already (same topic id), keeping the settings
    // its spec does not mention.
    let out = env.streambus(&[
        "topic",
        "create",
        "legacy",
        "--partitions",
        "2",
        "--config",
        "cleanup.policy=compact",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let legacy_id = env
        .describe("legacy")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("ID"))
        .unwrap()
        .trim()
        .to_string();
    env.apply_ok(&topic_yaml(
        "legacy-topic",
        Some("legacy"),
        2,
        "  deletionPolicy: Retain\n",
    ));
    let obj = env.wait_ready("streambustopic/legacy-topic", "True", "Ready");
    assert_eq!(obj["status"]["topicId"], legacy_id.as_str());
    assert!(
        env.describe("legacy")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().eq(["cleanup.policy", "compact"])),
        "an adopted topic keeps its configuration"
    );

    // Drift made outside Kubernetes is corrected at the next resync.
    env.apply_ok(&topic_yaml(
        "drift",
        None,
        2,
        "  config:\n    retention.ms: \"86400000\"\n",
    ));
    let first =
        env.wait_ready("streambustopic/drift", "True", "Ready")["status"]["topicId"].clone();
    assert!(
        env.streambus(&["topic", "delete", "drift"])
            .status
            .success()
    );
    env.wait("drift recreated", Duration::from_secs(30), || {
        let obj = env.get_json("streambustopic/drift")?;
        (obj["status"]["topicId"] != first
            && env.describe("drift")?.contains("PARTITIONS          2"))
        .then_some(())
    });
    // And so is a key of spec.config changed with the CLI.
    assert!(
        env.streambus(&["topic", "alter", "drift", "--config", "retention.ms=5000"])
            .status
            .success()
    );
    env.wait("drift config set back", Duration::from_secs(30), || {
        env.describe("drift")?
            .lines()
            .any(|l| l.split_whitespace().eq(["retention.ms", "86400000"]))
            .then_some(())
    });

    // `kubectl get` columns.
    let table = env.kubectl(&["get", "streambustopics"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "CLUSTER",
            "TOPIC",
            "PARTITIONS",
            "REPLICATION",
            "READY",
            "AGE"
        ]
    );
    assert!(
        table.lines().any(|l| l.split_whitespace().take(6).eq([
            "legacy-topic",
            "dev",
            "legacy",
            "2",
            "1",
            "True"
        ])),
        "{table}"
    );

    // Deleted through the finalizer; Retain keeps the topic.
    env.kubectl(&[
        "delete",
        "streambustopic",
        "drift",
        "legacy-topic",
        "--wait",
        "--timeout",
        "30s",
    ]);
    assert!(env.describe("drift").is_none(), "drift should be deleted");
    assert!(env.describe("legacy").is_some(), "legacy is retained");
    eprintln!("topics checked in {:.1?}", started.elapsed());

    cluster_objects_become_ready(&env, &pod_monitor_selector);
    eprintln!("cluster checked in {:.1?}", started.elapsed());
    secure_cluster_over_tls(&env, &work, &secure_gateway);
    eprintln!("TLS cluster checked in {:.1?}", started.elapsed());

    // The operator's own objects go with the release; CRDs and resources stay.
    env.kubectl(&[
        "delete",
        "streambustopic",
        "orders",
        "--wait",
        "--timeout",
        "30s",
    ]);
    assert!(env.describe("orders").is_none());
    drop(operator);
    env.helm(&[
        "uninstall",
        &env.release,
        "-n",
        &env.namespace,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let instance = format!("app.kubernetes.io/instance={}", env.release);
    for kind in [
        "deployment",
        "serviceaccount",
        "role",
        "rolebinding",
        "configmap",
    ] {
        let left = env.kubectl(&["get", kind, "-l", &instance, "-o", "name"]);
        assert!(left.trim().is_empty(), "{kind} left behind: {left}");
    }
    let left = env.tool("kubectl", &["get", "clusterrole", sa], None);
    assert!(!left.status.success(), "the ClusterRole is left behind");
    env.kubectl(&[
        "get",
        "crd",
        "streambustopics.streambus.io",
        "streambusclusters.streambus.io",
    ]);
    let _ = env.tool(
        "kubectl",
        &["delete", "namespace", &env.namespace, "--wait=false"],
        None,
    );
    let _ = std::fs::remove_dir_all(&work);
    eprintln!("done in {:.1?}", started.elapsed());
}

/// A `streambus dev` whose gateway verifies bearer tokens with this API
/// server's TokenReview and enforces ACLs: a ServiceAccount's token names
/// `User:system:serviceaccount:<namespace>:<name>`, a superuser by that
/// name may do anything, another ServiceAccount only what ACLs allow, and
/// a forged token or the token of a deleted ServiceAccount is refused.
/// `token` (a ServiceAccount JWT) with `iat`, `nbf` and `exp` two hours
/// earlier, signed again (RS256) with the PEM key at `key`.
fn expired_token(token: &str, key: &str, work: &Path) -> String {
    let mut parts = token.trim().split('.');
    let (header, claims) = (parts.next().unwrap(), parts.next().unwrap());
    let mut claims: Value = serde_json::from_slice(&base64url_decode(claims)).unwrap();
    for time in ["iat", "nbf", "exp"] {
        if let Some(t) = claims[time].as_i64() {
            claims[time] = Value::from(t - 7200);
        }
    }
    let signed = format!(
        "{header}.{}",
        base64url_encode(&serde_json::to_vec(&claims).unwrap())
    );
    let input = work.join("expired-token-input");
    std::fs::write(&input, &signed).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign", key])
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", text(&out.stderr));
    let token = format!("{signed}.{}", base64url_encode(&out.stdout));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(claims["exp"].as_i64().unwrap() < now, "{claims}");
    token
}

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(BASE64URL[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn base64url_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = BASE64URL.iter().position(|&a| a == c).expect("base64url") as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A loopback port free now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A StreamBusCluster with `spec.tls`, gateways requiring client
/// certificates of a client CA and enforcing ACLs: held back (and its
/// topics with it) until its Secrets exist and its certificate covers
/// every name; then every pod mounts them, and a `streambus dev` run with
/// the ConfigMap the operator wrote lets the operator in as the
/// certificate's principal, the only way it can create and delete topics
/// there; a client certificate opens the gateway, under the ACLs, and not
/// the controller.
fn secure_cluster_over_tls(env: &Env, work: &Path, gateway: &str) {
    let ns = &env.namespace;
    env.apply_ok(&format!(
        "apiVersion: streambus.io/v1alpha1\nkind: StreamBusCluster\nmetadata:\n  name: secure\nspec:\n  image: streambus:test\n  controllers:\n    storage: {{size: 1Gi, storageClassName: {ns}-none}}\n  storageNodes:\n    replicas: 2\n    storage: {{size: 1Gi, storageClassName: {ns}-none}}\n  gateways:\n    replicas: 1\n    serviceAccountName: secure-gateway\n  tls:\n    secretName: secure-tls\n    clientAuth: required\n    clientCaSecretName: secure-clients\n  config:\n    http.tls: \"true\"\n    gateway.auth.mtls: \"true\"\n    gateway.auth.acls: \"true\"\n    gateway.auth.superusers: \"User:admin\"\n"
    ));
    env.apply_ok(
        &topic_yaml("secured", None, 2, "").replace("cluster: dev\n", "cluster: secure\n"),
    );
    let degraded = |needle: String| {
        env.wait(
            &format!("secure Degraded: {needle}"),
            Duration::from_secs(30),
            || {
                let (s, r, m) = env.condition("streambuscluster/secure", "Degraded")?;
                (s == "True" && r == "TlsSecretUnusable" && m.contains(&needle)).then_some(())
            },
        )
    };
    // No Secret yet: nothing is made, and the topic waits.
    degraded("no Secret \"secure-tls\"".into());
    for made in [
        "statefulset/secure-controller",
        "statefulset/secure-storage",
        "deployment/secure-gateway",
        "configmap/secure-config",
    ] {
        assert!(env.get_json(made).is_none(), "{made}");
    }
    let topic = env.wait_ready("streambustopic/secured", "False", "ClusterTlsUnusable");
    let (_, _, message) = condition_of(&topic, "Ready").unwrap();
    assert!(message.contains("no Secret"), "{message}");

    let secret = |name: &str, files: &[(&str, &Path)]| {
        let mut args = vec!["create", "secret", "generic", name];
        let files: Vec<String> = files
            .iter()
            .map(|(key, path)| format!("--from-file={key}={}", path.display()))
            .collect();
        args.extend(files.iter().map(String::as_str));
        args.extend(["--dry-run=client", "-o", "yaml"]);
        env.apply_ok(&env.kubectl(&args));
    };
    let certs = work.join("secure-certs");
    let generate = |hosts: &str| {
        let out = env.streambus(&[
            "tls",
            "generate",
            "--out",
            certs.to_str().unwrap(),
            "--force",
            "--hosts",
            hosts,
            "--clients",
            "alice",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        secret(
            "secure-tls",
            &[
                ("tls.crt", &certs.join("node.pem")),
                ("tls.key", &certs.join("node-key.pem")),
                ("ca.crt", &certs.join("ca.pem")),
            ],
        );
    };
    // A certificate missing the gateways' name, or the second storage
    // node's, is refused naming them.
    let peers = format!("*.secure-controller.{ns}.svc,127.0.0.1,localhost");
    generate(&format!("{peers},secure-storage-0.secure-storage.{ns}.svc"));
    degraded(format!(
        "not valid for secure-storage-1.secure-storage.{ns}.svc, secure-gateway.{ns}.svc"
    ));
    // A good one, but no client CA yet.
    let peers = format!("{peers},*.secure-storage.{ns}.svc,secure-gateway.{ns}.svc");
    generate(&peers);
    degraded("no Secret \"secure-clients\"".into());
    secret(
        "secure-clients",
        &[("ca.crt", &certs.join("client-ca.pem"))],
    );

    // Every pod mounts both, and the ConfigMap points at them.
    env.wait("secure objects", Duration::from_secs(30), || {
        env.get_json("deployment/secure-gateway")
    });
    let mut pods = Vec::new();
    for set in [
        "statefulset/secure-controller",
        "statefulset/secure-storage",
    ] {
        pods.push(env.get_json(set).unwrap()["spec"]["template"]["spec"].clone());
    }
    let gateway_pod =
        env.get_json("deployment/secure-gateway").unwrap()["spec"]["template"]["spec"].clone();
    assert_eq!(gateway_pod["serviceAccountName"], "secure-gateway");
    pods.push(gateway_pod);
    for pod in &pods {
        let volumes = pod["volumes"].as_array().unwrap();
        for (volume, secret, path) in [
            ("tls", "secure-tls", "/etc/streambus/tls"),
            ("client-ca", "secure-clients", "/etc/streambus/client-ca"),
        ] {
            assert!(
                volumes
                    .iter()
                    .any(|v| v["name"] == volume && v["secret"]["secretName"] == secret),
                "{pod}"
            );
            let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
            assert!(
                mounts
                    .iter()
                    .any(|m| m["name"] == volume && m["mountPath"] == path),
                "{pod}"
            );
        }
        let c = &pod["containers"][0];
        assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    }
    let config = env.get_json("configmap/secure-config").unwrap()["data"].clone();
    assert_eq!(
        config["STREAMBUS_TLS__CA_FILE"],
        "/etc/streambus/tls/ca.crt"
    );
    assert_eq!(
        config["STREAMBUS_TLS__CLIENT_CA_FILE"],
        "/etc/streambus/client-ca/ca.crt"
    );
    assert_eq!(config["STREAMBUS_TLS__CLIENT_AUTH"], "required");
    // `streambus tls generate` names the node certificate "streambus".
    assert_eq!(
        config["STREAMBUS_GATEWAY__AUTH__SUPERUSERS"],
        "User:admin,User:streambus"
    );

    // The gateway: the operator's settings, the Secrets' files here.
    let mut vars: Vec<(String, String)> = config
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    for (var, file) in [
        ("STREAMBUS_TLS__CERT_FILE", "node.pem"),
        ("STREAMBUS_TLS__KEY_FILE", "node-key.pem"),
        ("STREAMBUS_TLS__CA_FILE", "ca.pem"),
        ("STREAMBUS_TLS__CLIENT_CA_FILE", "client-ca.pem"),
    ] {
        vars.retain(|(k, _)| k != var);
        vars.push((var.into(), certs.join(file).display().to_string()));
    }
    let (_dev, _, controller) = Dev::start(
        env,
        &work.join("secure-dev"),
        &[format!("gateway.listen_addr={gateway}")],
        &vars,
    );
    env.wait_ready("streambustopic/secured", "True", "Ready");
    let cli = |args: &[&str], identity: Option<&str>| {
        let mut cmd = Command::new(&env.streambus);
        cmd.args(args)
            .args(["--gateway", gateway, "--tls-ca"])
            .arg(certs.join("ca.pem"))
            .env(
                "STREAMBUS_CLIENT_CONFIG",
                "/nonexistent/streambus-client.toml",
            );
        if let Some(name) = identity {
            cmd.arg("--tls-cert")
                .arg(certs.join(format!("{name}.pem")))
                .arg("--tls-key")
                .arg(certs.join(format!("{name}-key.pem")));
        }
        cmd.output().unwrap()
    };
    let out = cli(&["topic", "describe", "secured"], Some("node"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("PARTITIONS          2"),
        "{}",
        text(&out.stdout)
    );
    // Without a certificate the gateway lets nobody in.
    let out = cli(&["topic", "list"], None);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success()
            && (stderr.contains("CertificateRequired")
                || stderr.contains("connection closed")
                || stderr.contains("connection was not ready")),
        "{stderr}"
    );
    // A client certificate opens the gateway, under the ACLs...
    let out = cli(&["topic", "create", "mine"], Some("client-alice"));
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("PERMISSION_DENIED: User:alice may not create topic"),
        "{stderr}"
    );
    // ... and not the controller, which only cluster peers get into.
    let handshake = |identity: &str| {
        Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                "--http2",
                "--cacert",
            ])
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join(format!("{identity}.pem")))
            .arg("--key")
            .arg(certs.join(format!("{identity}-key.pem")))
            .arg(format!("https://{controller}/"))
            .status()
            .unwrap()
    };
    assert!(handshake("node").success());
    assert!(!handshake("client-alice").success());

    // Deleted through the finalizer, over TLS.
    env.kubectl(&[
        "delete",
        "streambustopic",
        "secured",
        "--wait",
        "--timeout",
        "30s",
    ]);
    let out = cli(&["topic", "describe", "secured"], Some("node"));
    assert!(
        !out.status.success() && text(&out.stderr).contains("UNKNOWN_TOPIC"),
        "{}",
        text(&out.stderr)
    );

    // Another Secret of another CA: the pods, rolled one at a time, would
    // not trust each other, so nothing changes.
    let other = work.join("secure-certs-other");
    let out = env.streambus(&[
        "tls",
        "generate",
        "--out",
        other.to_str().unwrap(),
        "--hosts",
        &peers,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    secret(
        "secure-tls-other",
        &[
            ("tls.crt", &other.join("node.pem")),
            ("tls.key", &other.join("node-key.pem")),
            ("ca.crt", &other.join("ca.pem")),
        ],
    );
    env.kubectl(&[
        "patch",
        "streambuscluster",
        "secure",
        "--type",
        "merge",
        "-p",
        "{\"spec\":{\"tls\":{\"secretName\":\"secure-tls-other\"}}}",
    ]);
    degraded("would not trust the others".into());
    let sts = env.get_json("statefulset/secure-controller").unwrap();
    assert_eq!(
        sts["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "tls")
            .unwrap()["secret"]["secretName"],
        "secure-tls"
    );
}

/// A `streambus dev` this test started, killed when dropped.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Dev {
    /// Starts `streambus dev` in `dir` with `settings` (`--set`) and
    /// environment `vars`, on loopback ports of its choosing unless
    /// `settings` say otherwise; returns it and its gateway's and
    /// controller's addresses.
    fn start(
        env: &Env,
        dir: &Path,
        settings: &[String],
        vars: &[(String, String)],
    ) -> (Dev, String, String) {
        let mut cmd = Command::new(&env.streambus);
        cmd.env("KUBECONFIG", &env.kubeconfig)
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .args(["dev", "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for s in [
            "gateway.listen_addr=127.0.0.1:0",
            "controller.listen_addr=127.0.0.1:0",
            "storage_node.listen_addr=127.0.0.1:0",
            "http.listen_addr=127.0.0.1:0",
            "log.level=warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(settings.iter().cloned())
        {
            cmd.args(["--set", &s]);
        }
        let mut dev = Dev(cmd.spawn().unwrap());
        let stdout = std::io::BufReader::new(dev.0.stdout.take().unwrap());
        let mut lines = std::io::BufRead::lines(stdout).map_while(Result::ok);
        let mut address = |of: &str| {
            lines
                .find_map(|l| l.trim().strip_prefix(of).map(|a| a.trim().to_string()))
                .unwrap_or_else(|| panic!("streambus dev prints its {of} address"))
        };
        let gateway = address("gateway (public gRPC)");
        let controller = address("controller (gRPC)");
        (dev, gateway, controller)
    }
}

fn service_account_tokens_authenticate_at_a_gateway(env: &Env, work: &Path) {
    let ns = &env.namespace;
    for sa in ["admin", "app", "gone"] {
        env.kubectl(&["create", "serviceaccount", sa]);
    }
    let token = |sa: &str| env.kubectl(&["create", "token", sa]).trim().to_string();
    let (admin, app, gone) = (token("admin"), token("app"), token("gone"));
    env.kubectl(&["delete", "serviceaccount", "gone"]);

    let settings = [
        "gateway.auth.kubernetes.enabled=true".to_string(),
        "gateway.auth.acls=true".into(),
        format!("gateway.auth.superusers=User:system:serviceaccount:{ns}:admin"),
    ];
    let (_dev, gateway, _) = Dev::start(env, &work.join("token-review-dev"), &settings, &[]);
    let cli = |token: &str, args: &[&str]| {
        Command::new(&env.streambus)
            .args(args)
            .args(["--gateway", &gateway, "--token", token])
            .env(
                "STREAMBUS_CLIENT_CONFIG",
                "/nonexistent/streambus-client.toml",
            )
            .output()
            .unwrap()
    };

    // The superuser's ServiceAccount creates a topic.
    let out = cli(&admin, &["topic", "create", "reviewed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Another ServiceAccount is authenticated (it lists, seeing nothing)
    // but may not create: the refusal names its principal.
    let out = cli(&app, &["topic", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("reviewed"));
    let out = cli(&app, &["topic", "create", "mine"]);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!(
                "PERMISSION_DENIED: User:system:serviceaccount:{ns}:app may not create topic"
            )),
        "{stderr}"
    );
    // A token with a forged signature, the token of a deleted
    // ServiceAccount, and an expired one (the app's, its times moved back
    // two hours and signed again with the API server's key): refused by
    // the API server, so by the gateway.
    // The signature's first character changed: its last one may carry
    // only padding bits, which decoders ignore.
    let dot = app.rfind('.').unwrap();
    let first = if app[dot + 1..].starts_with('A') {
        "B"
    } else {
        "A"
    };
    let forged = format!("{}{first}{}", &app[..=dot], &app[dot + 2..]);
    assert_ne!(forged, app);
    let expired = expired_token(&app, &var("STREAMBUS_K8S_SA_KEY"), work);
    for bad in [&forged, &gone, &expired] {
        let out = cli(bad, &["topic", "list"]);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success()
                && stderr.contains("UNAUTHENTICATED")
                && stderr.contains("the Kubernetes API server refused it"),
            "{stderr}"
        );
        if bad == &expired {
            assert!(stderr.contains("expired"), "{stderr}");
        }
    }
}

/// A StreamBusCluster: its children appear with owner references and the
/// right specs, kwok makes the pods ready, the status turns Ready with the
/// right counts; then gated rolling restarts and a scale-in, decided with
/// the real multi-node StreamBus cluster standing in for it.
/// A file of `deploy/observability/`, as text.
fn deploy_file(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/observability")
            .join(name),
    )
    .unwrap()
}

/// Renders the chart with all its monitoring objects: the PrometheusRule
/// holds exactly the groups of `deploy/observability/alerts.yml` and the
/// labels asked for, the dashboard ConfigMap exactly the dashboard's JSON,
/// and the PodMonitor scrapes the `http` port. Returns the PodMonitor's
/// selector as a `kubectl -l` argument.
fn monitoring_renders_the_deploy_files(env: &Env) -> String {
    let rendered = env.helm(&[
        "template",
        &env.release,
        chart().to_str().unwrap(),
        "--show-only",
        "templates/monitoring.yaml",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.podMonitor.enabled=true",
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
        "--set-string",
        "monitoring.prometheusRule.labels.release=prometheus",
    ]);
    let docs: Vec<Value> = rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str::<Option<Value>>(d).unwrap())
        .collect();
    let kind = |k: &str| -> &Value {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in {rendered}"))
    };
    let rule = kind("PrometheusRule");
    let alerts: Value = serde_yaml::from_str(&deploy_file("alerts.yml")).unwrap();
    assert_eq!(rule["spec"], alerts);
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        kind("ConfigMap")["data"]["streambus.json"],
        deploy_file("grafana-dashboard.json")
    );
    let monitor = kind("PodMonitor");
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "http");
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["path"],
        "/metrics"
    );
    assert!(monitor["spec"]["podMetricsEndpoints"][0]["scheme"].is_null());
    // For http.tls: HTTPS with the TLS Secret's CA and a name it covers.
    let https = env.helm(&[
        "template",
        &env.release,
        chart().to_str().unwrap(),
        "--show-only",
        "templates/monitoring.yaml",
        "--set",
        "monitoring.podMonitor.enabled=true",
        "--set",
        "monitoring.podMonitor.tls.secretName=streambus-tls",
        "--set",
        "monitoring.podMonitor.tls.serverName=streambus-gateway.data.svc",
    ]);
    let https: Value = serde_yaml::from_str(&https).unwrap();
    let endpoint = &https["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(
        endpoint["tlsConfig"],
        serde_json::json!({
            "ca": { "secret": { "name": "streambus-tls", "key": "ca.crt" } },
            "serverName": "streambus-gateway.data.svc",
        })
    );
    monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect::<Vec<_>>()
        .join(",")
}

fn cluster_objects_become_ready(env: &Env, pod_monitor_selector: &str) {
    // Static volumes for the claims (the test control plane has no
    // provisioner): 3 controllers + 3 storage nodes.
    for i in 0..6 {
        let pv = format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {ns}-pv-{i}\nspec:\n  capacity: {{storage: 10Gi}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: {ns}-local\n  hostPath: {{path: /tmp/{ns}-pv-{i}}}\n",
            ns = env.namespace
        );
        env.apply_ok(&pv);
    }
    // The fake node is in a zone; Kubernetes copies its zone label onto
    // the pods scheduled there, where the storage nodes read their rack.
    env.kubectl(&[
        "label",
        "node",
        "kwok-node-0",
        "topology.kubernetes.io/zone=zone-a",
        "--overwrite",
    ]);
    let bad_rack = env.apply(
        "apiVersion: streambus.io/v1alpha1\nkind: StreamBusCluster\nmetadata:\n  name: badrack\nspec:\n  image: x\n  storageNodes:\n    rack: {topologyKey: kubernetes.io/hostname}\n",
    );
    assert!(!bad_rack.status.success());
    assert!(
        text(&bad_rack.stderr).contains("topologyKey"),
        "{}",
        text(&bad_rack.stderr)
    );
    let cluster = format!(
        "apiVersion: streambus.io/v1alpha1\nkind: StreamBusCluster\nmetadata:\n  name: demo\nspec:\n  image: streambus:test\n  controllers:\n    replicas: 3\n    storage: {{size: 1Gi, storageClassName: {ns}-local}}\n  storageNodes:\n    replicas: 3\n    rack: {{topologyKey: topology.kubernetes.io/zone}}\n    storage: {{size: 5Gi, storageClassName: {ns}-local}}\n  gateways:\n    replicas: 2\n  config:\n    storage_node.max_fetch_bytes: \"1048576\"\n",
        ns = env.namespace
    );
    env.apply_ok(&cluster);
    let obj = env.wait("demo Ready", Duration::from_secs(120), || {
        let obj = env.get_json("streambuscluster/demo")?;
        let (s, _, _) = condition_of(&obj, "Ready")?;
        (s == "True").then_some(obj)
    });
    let uid = obj["metadata"]["uid"].as_str().unwrap();
    let status = &obj["status"];
    assert_eq!(status["controllers"]["summary"], "3/3");
    assert_eq!(status["storageNodes"]["summary"], "3/3");
    assert_eq!(status["gateways"]["summary"], "2/2");
    assert_eq!(
        status["gatewayEndpoint"],
        format!("demo-gateway.{}.svc:7400", env.namespace)
    );
    for child in [
        "statefulset/demo-controller",
        "statefulset/demo-storage",
        "deployment/demo-gateway",
        "service/demo-controller",
        "service/demo-storage",
        "service/demo-gateway",
        "configmap/demo-config",
        "poddisruptionbudget/demo-controller",
        "poddisruptionbudget/demo-storage",
    ] {
        let o = env
            .get_json(child)
            .unwrap_or_else(|| panic!("{child} missing"));
        let owners = o["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(owners.len(), 1, "{child}");
        assert_eq!(owners[0]["uid"], uid, "{child}");
        assert_eq!(owners[0]["kind"], "StreamBusCluster");
        assert_eq!(owners[0]["controller"], true);
    }
    let sts = env.get_json("statefulset/demo-storage").unwrap();
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "5Gi"
    );
    assert_eq!(sts["status"]["readyReplicas"], 3);
    let pdb = env.get_json("poddisruptionbudget/demo-controller").unwrap();
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    let cm = env.get_json("configmap/demo-config").unwrap();
    assert_eq!(
        cm["data"]["STREAMBUS_STORAGE_NODE__MAX_FETCH_BYTES"],
        "1048576"
    );
    let pods = env.kubectl(&[
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/instance=demo",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.spec.nodeName}{\"\\n\"}{end}",
    ]);
    assert_eq!(pods.lines().count(), 8, "{pods}");
    assert!(
        pods.lines().all(|l| l.ends_with(" Running kwok-node-0")),
        "{pods}"
    );

    let pod = env.get_json("pod/demo-storage-0").unwrap();
    assert_eq!(
        pod["metadata"]["labels"]["topology.kubernetes.io/zone"],
        "zone-a"
    );
    let rack = pod["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "STREAMBUS_STORAGE_NODE__RACK")
        .cloned()
        .unwrap();
    assert_eq!(
        rack["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['topology.kubernetes.io/zone']"
    );

    let table = env.kubectl(&["get", "streambusclusters"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "CONTROLLERS", "STORAGE", "GATEWAYS", "READY", "AGE"]
    );
    assert!(
        table.lines().any(|l| l
            .split_whitespace()
            .take(5)
            .eq(["demo", "3/3", "3/3", "2/2", "True"])),
        "{table}"
    );

    // The chart's PodMonitor selects every pod of the cluster.
    let pods = env.kubectl(&["get", "pods", "-l", pod_monitor_selector, "-o", "name"]);
    let mut roles: Vec<&str> = pods
        .lines()
        .map(|p| {
            let name = p.trim_start_matches("pod/");
            ["controller", "storage", "gateway"]
                .into_iter()
                .find(|r| name.starts_with(&format!("demo-{r}")))
                .unwrap_or(name)
        })
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        [
            "controller",
            "controller",
            "controller",
            "gateway",
            "gateway",
            "storage",
            "storage",
            "storage"
        ],
        "{pod_monitor_selector}: {pods}"
    );

    rolls_only_with_streambus_consent(env);
    scales_in_by_decommissioning(env);

    // Deleting the cluster deletes what it owns (garbage collection).
    env.kubectl(&[
        "delete",
        "streambuscluster",
        "demo",
        "--wait",
        "--timeout",
        "30s",
    ]);
    env.wait("owned objects collected", Duration::from_secs(60), || {
        env.get_json("statefulset/demo-storage")
            .is_none()
            .then_some(())
    });
    for i in 0..6 {
        let _ = env.tool(
            "kubectl",
            &[
                "delete",
                "pv",
                &format!("{}-pv-{i}", env.namespace),
                "--wait=false",
            ],
            None,
        );
    }
}

/// A configuration change restarts the controllers one at a time (the Raft
/// leader last), then the storage nodes one at a time, each only while the
/// real cluster reports it safe: with storage node 3 down, no storage pod
/// is deleted until it is back and its partitions are in sync again.
fn rolls_only_with_streambus_consent(env: &Env) {
    for sts in ["demo-controller", "demo-storage"] {
        let o = env.get_json(&format!("statefulset/{sts}")).unwrap();
        assert_eq!(o["spec"]["updateStrategy"]["type"], "OnDelete", "{sts}");
    }
    let _ = Command::new(&env.streambus)
        .args(["topic", "delete", "rolled"])
        .env("STREAMBUS_GATEWAY", &env.cluster_gateway)
        .output();
    env.on_cluster(&["topic", "create", "rolled", "-p", "3", "-r", "3"]);
    env.wait("rolled in sync", Duration::from_secs(60), || {
        let s = env.cluster_status();
        s["under_replicated"].as_array()?.is_empty().then_some(())
    });
    env.cluster_process("kill", "storage-node", "3");
    env.wait("node 3 seen down", Duration::from_secs(60), || {
        let s = env.cluster_status();
        let down = s["storage_nodes"]
            .as_array()?
            .iter()
            .any(|n| n["node_id"] == 3 && n["alive"] == false);
        let under = !s["under_replicated"].as_array()?.is_empty();
        (down || under).then_some(())
    });
    let controllers_before = env.pod_uids("controller");
    let storage_before = env.pod_uids("storage-node");
    assert_eq!(controllers_before.len(), 3);
    assert_eq!(storage_before.len(), 3);
    let leader = env.cluster_status()["controllers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["state"] == "leader")
        .map(|c| c["node_id"].as_u64().unwrap())
        .unwrap();

    env.kubectl(&[
        "patch",
        "streambuscluster",
        "demo",
        "--type",
        "merge",
        "-p",
        "{\"spec\":{\"config\":{\"storage_node.max_fetch_bytes\":\"2097152\"}}}",
    ]);
    // Every controller restarts; the storage nodes wait for node 3.
    env.wait("controllers restarted", Duration::from_secs(90), || {
        let now = env.pod_uids("controller");
        (now.len() == 3
            && now
                .iter()
                .all(|(n, u)| controllers_before.get(n) != Some(u)))
        .then_some(())
    });
    let (_, reason, message) = env.wait("storage roll held", Duration::from_secs(30), || {
        let c = env.condition("streambuscluster/demo", "Progressing")?;
        (c.1 == "WaitingForReplicas").then_some(c)
    });
    assert_eq!(reason, "WaitingForReplicas");
    assert!(
        message.contains("storage node 3 is not alive") || message.contains("under-replicated"),
        "{message}"
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        env.pod_uids("storage-node"),
        storage_before,
        "no storage pod restarted"
    );
    let restarts = env.events("RollingRestart");
    assert_eq!(restarts.len(), 3, "{restarts:?}");
    let leader_pod = format!("demo-controller-{}", leader - 1);
    assert!(
        restarts[2].contains(&leader_pod),
        "the leader {leader_pod} goes last: {restarts:?}"
    );

    // Node 3 back and in sync: the storage nodes restart, highest first.
    env.cluster_process("restart", "storage-node", "3");
    env.wait("storage nodes restarted", Duration::from_secs(120), || {
        let now = env.pod_uids("storage-node");
        (now.len() == 3 && now.iter().all(|(n, u)| storage_before.get(n) != Some(u))).then_some(())
    });
    let obj = env.wait_ready("streambuscluster/demo", "True", "AllReplicasReady");
    assert_eq!(condition_of(&obj, "Progressing").unwrap().0, "False");
    let restarts = env.events("RollingRestart");
    let storage: Vec<&String> = restarts
        .iter()
        .filter(|n| n.contains("storage node"))
        .collect();
    assert_eq!(storage.len(), 3, "{restarts:?}");
    for (note, pod) in storage
        .iter()
        .zip(["demo-storage-2", "demo-storage-1", "demo-storage-0"])
    {
        assert!(note.contains(pod), "{note} / {pod}");
    }
    env.on_cluster(&["topic", "delete", "rolled"]);
}

/// Scaling storage nodes in decommissions the highest node through
/// StreamBus and removes its pod only once it holds no replica; a topic
/// that needs every node makes StreamBus refuse, and the operator says so.
/// Scaling out again recommissions it.
fn scales_in_by_decommissioning(env: &Env) {
    let _ = Command::new(&env.streambus)
        .args(["topic", "delete", "wide"])
        .env("STREAMBUS_GATEWAY", &env.cluster_gateway)
        .output();
    env.on_cluster(&["topic", "create", "wide", "-p", "1", "-r", "3"]);
    let scale = |n: i32| {
        env.kubectl(&[
            "patch",
            "streambuscluster",
            "demo",
            "--type",
            "merge",
            "-p",
            &format!("{{\"spec\":{{\"storageNodes\":{{\"replicas\":{n}}}}}}}"),
        ]);
    };
    scale(2);
    let (_, _, message) = env.wait("scale-in refused", Duration::from_secs(30), || {
        let c = env.condition("streambuscluster/demo", "Degraded")?;
        (c.0 == "True" && c.1 == "ScaleInRefused").then_some(c)
    });
    assert!(message.contains("replication factor 3"), "{message}");
    assert_eq!(
        env.get_json("statefulset/demo-storage").unwrap()["spec"]["replicas"],
        3
    );

    env.on_cluster(&["topic", "delete", "wide"]);
    env.on_cluster(&["topic", "create", "moved", "-p", "4", "-r", "2"]);
    let input: String = (0..200).map(|i| format!("m{i}\n")).collect();
    let mut produce = Command::new(&env.streambus)
        .args(["produce", "moved"])
        .env("STREAMBUS_GATEWAY", &env.cluster_gateway)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    produce
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(produce.wait().unwrap().success());
    env.wait(
        "storage StatefulSet shrunk",
        Duration::from_secs(90),
        || {
            let sts = env.get_json("statefulset/demo-storage")?;
            (sts["spec"]["replicas"] == 2).then_some(())
        },
    );
    let node3 = |s: &Value| {
        s["storage_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == 3)
            .cloned()
            .unwrap()
    };
    let n = node3(&env.cluster_status());
    assert_eq!(n["decommissioning"], true, "{n}");
    assert_eq!(n["replicas"], 0, "{n}");
    let obj = env.get_json("streambuscluster/demo").unwrap();
    assert_eq!(
        obj["status"]["decommissionedStorageNodes"],
        serde_json::json!([3])
    );
    let decommissioning = env.events("Decommissioning");
    assert!(
        decommissioning.iter().any(|n| n.contains("storage node 3")),
        "{decommissioning:?}"
    );
    let read = env.on_cluster(&[
        "consume",
        "moved",
        "--from-beginning",
        "--max-messages",
        "200",
    ]);
    assert_eq!(read.lines().count(), 200, "{read}");

    scale(3);
    env.wait("node 3 recommissioned", Duration::from_secs(60), || {
        let n = node3(&env.cluster_status());
        (n["decommissioning"] == false).then_some(())
    });
    env.wait("storage StatefulSet grown", Duration::from_secs(60), || {
        let sts = env.get_json("statefulset/demo-storage")?;
        let obj = env.get_json("streambuscluster/demo")?;
        (sts["spec"]["replicas"] == 3
            && obj["status"]["decommissionedStorageNodes"] == serde_json::json!([]))
        .then_some(())
    });
    env.on_cluster(&["topic", "delete", "moved"]);
}
