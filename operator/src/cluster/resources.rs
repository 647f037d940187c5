//! The objects a `StreamBusCluster` owns, as pure functions of its spec
//! (and of the few observed facts that limit what may change).
//!
//! - controllers: a StatefulSet (stable identities; node id = pod index +
//!   1, set explicitly) with a PersistentVolumeClaim each, a headless
//!   Service for peer discovery (`publishNotReadyAddresses`, so the Raft
//!   group can form before anyone is ready), a PodDisruptionBudget keeping
//!   a quorum;
//! - storage nodes: the same, with at most one node disrupted at a time;
//! - gateways: a Deployment and the client Service;
//! - a ConfigMap with the StreamBus settings from `spec.config`, whose hash
//!   is stamped on every pod template (a change restarts the pods);
//! - with `spec.tls`, the Secret mounted into every pod and the `tls.*`
//!   settings pointing at it (a renewed certificate is read in place, no
//!   restart); when the gateways authenticate, the operator's own
//!   principal (the certificate's) is made a superuser.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};

use super::tls;
use crate::context::GATEWAY_PORT;
use crate::crd::{ClientAuthMode, Resources, StorageSpec, StreamBusClusterSpec};

/// Controller gRPC port.
pub const CONTROLLER_PORT: i32 = 7401;
/// Storage node gRPC port.
pub const STORAGE_PORT: i32 = 7402;
/// HTTP `/healthz` `/readyz` `/metrics` port of every role.
pub const HTTP_PORT: i32 = 7480;
/// Where the persistent volume is mounted.
const DATA_MOUNT: &str = "/var/lib/streambus";
/// The annotation carrying the configuration's hash on pod templates.
pub const CONFIG_HASH_ANNOTATION: &str = "streambus.io/config-hash";
/// The user and group the containers run as.
const RUN_AS: i64 = 10001;
/// Where the TLS Secret is mounted (the whole Secret, not files of it: a
/// `subPath` mount would never see a renewed certificate).
const TLS_MOUNT: &str = "/etc/streambus/tls";
/// Where the client CA Secret is mounted.
const CLIENT_CA_MOUNT: &str = "/etc/streambus/client-ca";

/// Settings the operator sets itself; `spec.config` may not.
const MANAGED_KEYS: &[&str] = &[
    "http.listen_addr",
    "controller.node_id",
    "controller.listen_addr",
    "controller.advertised_addr",
    "controller.data_dir",
    "controller.peers",
    "controller.join",
    "gateway.listen_addr",
    "gateway.controllers",
    "storage_node.node_id",
    "storage_node.listen_addr",
    "storage_node.advertised_addr",
    "storage_node.data_dir",
    "storage_node.controllers",
    "storage_node.rack",
];
const SECTIONS: &[&str] = &["log", "http", "controller", "gateway", "storage_node"];
/// Settings whose value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "gateway.auth.superusers",
    "gateway.auth.kubernetes.audiences",
];
/// Settings that name files: nothing but the TLS Secret is mounted.
const FILE_KEYS: &[&str] = &["gateway.auth.token_file"];

/// One role of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Controller,
    StorageNode,
    Gateway,
}

impl Role {
    /// `app.kubernetes.io/component`.
    pub fn component(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::StorageNode => "storage-node",
            Role::Gateway => "gateway",
        }
    }

    /// The suffix of the role's object names.
    fn suffix(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::StorageNode => "storage",
            Role::Gateway => "gateway",
        }
    }

    /// The `streambus` subcommand.
    fn command(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::StorageNode => "storage-node",
            Role::Gateway => "gateway",
        }
    }
}

/// The name of the cluster's object for `role` (StatefulSet or Deployment,
/// and its Service).
pub fn name(cluster: &str, role: Role) -> String {
    format!("{cluster}-{}", role.suffix())
}

/// The ConfigMap's name.
pub fn config_map_name(cluster: &str) -> String {
    format!("{cluster}-config")
}

/// The cluster being built: its name, namespace, spec and owner reference.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub spec: &'a StreamBusClusterSpec,
    pub owner: OwnerReference,
    /// The controllers' StatefulSet size now (`None` before it exists): a
    /// change of the Raft voters is held back.
    pub current_controllers: Option<i32>,
    /// The storage nodes' StatefulSet size to apply, as planned by
    /// [`super::roll::plan_scale`] (scale-in waits for decommissioning).
    pub storage_nodes: i32,
    /// The name the certificate of `spec.tls`'s Secret gives its holder
    /// (read and checked by [`super::tls::check`]); `None` without
    /// `spec.tls`.
    pub tls_identity: Option<&'a str>,
    /// Whether the running cluster uses TLS (`None` before it exists):
    /// turning it on or off cannot be rolled pod by pod.
    pub current_tls: Option<bool>,
}

/// A spec problem: reported in the status, the rest still applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// Everything the cluster owns.
#[derive(Debug, Clone)]
pub struct Desired {
    pub config_map: ConfigMap,
    pub services: Vec<Service>,
    pub stateful_sets: Vec<StatefulSet>,
    pub deployment: Deployment,
    pub pdbs: Vec<PodDisruptionBudget>,
    /// The replicas applied per role (may differ from the spec, see
    /// `problems`).
    pub controllers: i32,
    pub storage_nodes: i32,
    pub gateways: i32,
    pub problems: Vec<Problem>,
}

/// `spec.config` as environment variables, or why not. Nested keys
/// (`gateway.auth.acls`) nest their variables
/// (`STREAMBUS_GATEWAY__AUTH__ACLS`).
pub fn config_env(config: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for (key, value) in config {
        if key.starts_with("tls.") {
            return Err(format!(
                "spec.config key {key:?}: TLS is set with spec.tls (secretName, clientAuth)"
            ));
        }
        let Some((section, field)) = key.split_once('.') else {
            return Err(format!(
                "spec.config key {key:?} is not section.key (e.g. storage_node.max_fetch_bytes)"
            ));
        };
        // `__` separates nesting levels in the variables: a part holding
        // it (or starting or ending with `_`) would name another key.
        let part_ok = |p: &str| {
            !p.is_empty()
                && !p.contains("__")
                && !p.starts_with('_')
                && !p.ends_with('_')
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !SECTIONS.contains(&section) || !field.split('.').all(part_ok) {
            return Err(format!(
                "spec.config key {key:?}: the section must be one of {} and each part of the key lowercase letters, digits and single _ between them",
                SECTIONS.join(", ")
            ));
        }
        if MANAGED_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "spec.config key {key:?} is set by the operator and cannot be overridden"
            ));
        }
        if FILE_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "spec.config key {key:?} names a file, and the operator mounts none but the TLS Secret: authenticate clients with certificates (gateway.auth.mtls) or Kubernetes tokens (gateway.auth.kubernetes.enabled)"
            ));
        }
        // Lists are comma-separated; the process does not trim items.
        let value = if LIST_KEYS.contains(&key.as_str()) {
            list(value).join(",")
        } else {
            value.clone()
        };
        env.insert(
            format!(
                "STREAMBUS_{}__{}",
                section.to_ascii_uppercase(),
                field.replace('.', "__").to_ascii_uppercase()
            ),
            value,
        );
    }
    Ok(env)
}

/// The items of a comma-separated list value, trimmed, empty ones dropped.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A boolean of `spec.config` (absent = false).
fn flag(config: &BTreeMap<String, String>, key: &str) -> Result<bool, String> {
    match config.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!(
            "spec.config key {key:?} is {other:?}: expected \"true\" or \"false\""
        )),
    }
}

/// The TLS and authentication settings the operator adds to `spec.config`:
/// the mounted Secret's files, and when the gateways let only
/// authenticated or authorized principals in, the operator's own principal
/// (the certificate's name, `identity`) among the superusers, since it
/// creates topics and decommissions nodes through them.
fn security_env(
    spec: &StreamBusClusterSpec,
    identity: Option<&str>,
) -> Result<BTreeMap<String, String>, String> {
    let config = &spec.config;
    let mut env = BTreeMap::new();
    let http_tls = flag(config, "http.tls")?;
    let mtls = flag(config, "gateway.auth.mtls")?;
    let kubernetes = flag(config, "gateway.auth.kubernetes.enabled")?;
    let anonymous = flag(config, "gateway.auth.allow_anonymous")?;
    let acls = flag(config, "gateway.auth.acls")?;
    let Some(tls) = &spec.tls else {
        if http_tls || mtls {
            return Err(
                "spec.config http.tls and gateway.auth.mtls need spec.tls (the certificate)".into(),
            );
        }
        if acls || kubernetes && !anonymous {
            return Err("gateways that authenticate or enforce ACLs need spec.tls: the operator calls them as the principal of the cluster's certificate (and credentials must not cross the network in plaintext)".into());
        }
        return Ok(env);
    };
    let Some(identity) = identity else {
        return Err(format!(
            "the TLS Secret {:?} has not been read",
            tls.secret_name
        ));
    };
    let cert_auth = tls.client_auth != ClientAuthMode::None;
    if cert_auth && tls.client_ca_secret_name.is_none() {
        return Err("spec.tls.clientAuth optional or required needs spec.tls.clientCaSecretName: client certificates must come from a CA of their own, since a certificate of the cluster CA also opens the controllers and storage nodes".into());
    }
    if mtls && !cert_auth {
        return Err("spec.config gateway.auth.mtls needs spec.tls.clientAuth optional or required: gateways ask for no certificate otherwise".into());
    }
    if (acls || kubernetes && !anonymous) && !mtls {
        return Err(format!(
            "gateways that authenticate or enforce ACLs must accept certificates (spec.config gateway.auth.mtls \"true\", spec.tls.clientAuth optional or required): the operator calls them as User:{identity}, the principal of the cluster's certificate"
        ));
    }
    let file = |key: &str| format!("{TLS_MOUNT}/{key}");
    env.insert("STREAMBUS_TLS__CERT_FILE".into(), file(tls::CERT_KEY));
    env.insert("STREAMBUS_TLS__KEY_FILE".into(), file(tls::KEY_KEY));
    env.insert("STREAMBUS_TLS__CA_FILE".into(), file(tls::CA_KEY));
    env.insert(
        "STREAMBUS_TLS__CLIENT_AUTH".into(),
        tls.client_auth.setting().into(),
    );
    if tls.client_ca_secret_name.is_some() {
        env.insert(
            "STREAMBUS_TLS__CLIENT_CA_FILE".into(),
            format!("{CLIENT_CA_MOUNT}/{}", tls::CA_KEY),
        );
    }
    if acls {
        let operator = format!("User:{identity}");
        let mut superusers: Vec<String> = config
            .get("gateway.auth.superusers")
            .map(|v| list(v))
            .unwrap_or_default();
        if !superusers.contains(&operator) {
            superusers.push(operator);
        }
        env.insert(
            "STREAMBUS_GATEWAY__AUTH__SUPERUSERS".into(),
            superusers.join(","),
        );
    }
    Ok(env)
}

/// FNV-1a of the configuration: stable across operator builds, so an
/// operator upgrade alone restarts nothing.
fn config_hash(data: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in data {
        for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn labels(cluster: &str, role: Option<Role>) -> Value {
    let mut l = json!({
        "app.kubernetes.io/name": "streambus",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/managed-by": "streambus-operator",
    });
    if let Some(role) = role {
        l["app.kubernetes.io/component"] = json!(role.component());
    }
    l
}

fn selector(cluster: &str, role: Role) -> Value {
    json!({
        "app.kubernetes.io/name": "streambus",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/component": role.component(),
    })
}

fn metadata(input: &Input, name: String, role: Option<Role>) -> Value {
    json!({
        "name": name,
        "namespace": input.namespace,
        "labels": labels(input.name, role),
        "ownerReferences": [input.owner],
    })
}

/// `host:port` of every pod of a StatefulSet behind its headless Service.
fn pod_addresses(input: &Input, role: Role, replicas: i32, port: i32) -> Vec<String> {
    let set = name(input.name, role);
    (0..replicas)
        .map(|i| format!("{set}-{i}.{set}.{}.svc:{port}", input.namespace))
        .collect()
}

fn resources(r: Option<&Resources>) -> Value {
    match r {
        Some(r) => json!({ "requests": r.requests, "limits": r.limits }),
        None => json!({}),
    }
}

fn env(pairs: &[(&str, String)]) -> Vec<Value> {
    pairs
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .collect()
}

/// Environment variables from the downward API: the pod's name and its
/// StatefulSet index.
fn identity_env() -> Vec<Value> {
    vec![
        json!({ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }),
        json!({ "name": "POD_INDEX", "valueFrom": { "fieldRef": {
            "fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']" } } }),
    ]
}

struct PodParts<'a> {
    role: Role,
    grpc_port: i32,
    env: Vec<Value>,
    resources: Option<&'a Resources>,
    /// Set as `STREAMBUS_<SECTION>__NODE_ID` = pod index + 1 before exec.
    node_id_var: Option<&'a str>,
    grace_seconds: i64,
    data_volume: bool,
    /// `HTTP`, or `HTTPS` when `http.tls` is on.
    http_scheme: &'static str,
    service_account: Option<&'a str>,
}

fn pod_template(input: &Input, hash: &str, p: PodParts) -> Value {
    // The process gives up draining before the kubelet's SIGKILL, so its
    // exit status says whether the drain finished.
    let mut env = p.env.clone();
    env.push(json!({
        "name": "STREAMBUS_SHUTDOWN__GRACE_MS",
        "value": ((p.grace_seconds - 5).max(1) * 1000).to_string(),
    }));
    let (command, args) = match p.node_id_var {
        // The node id is explicit config; the pod index comes from the
        // downward API and the shell adds one (ids start at 1).
        Some(var) => (
            json!(["/bin/sh", "-c"]),
            json!([format!(
                "export {var}=$((POD_INDEX + 1)) && exec streambus {}",
                p.role.command()
            )]),
        ),
        None => (json!(["streambus"]), json!([p.role.command()])),
    };
    let mut container = json!({
        "name": p.role.component(),
        "image": input.spec.image,
        "command": command,
        "args": args,
        "envFrom": [{ "configMapRef": { "name": config_map_name(input.name) } }],
        "env": env,
        "ports": [
            { "name": "grpc", "containerPort": p.grpc_port, "protocol": "TCP" },
            { "name": "http", "containerPort": HTTP_PORT, "protocol": "TCP" },
        ],
        "readinessProbe": {
            "httpGet": { "path": "/readyz", "port": "http", "scheme": p.http_scheme },
            "periodSeconds": 5, "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": { "path": "/healthz", "port": "http", "scheme": p.http_scheme },
            "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 6,
        },
        "resources": resources(p.resources),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
    });
    if let Some(policy) = &input.spec.image_pull_policy {
        container["imagePullPolicy"] = json!(policy);
    }
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    if p.data_volume {
        mounts.push(json!({ "name": "data", "mountPath": DATA_MOUNT }));
    }
    if let Some(tls) = &input.spec.tls {
        mounts.push(json!({ "name": "tls", "mountPath": TLS_MOUNT, "readOnly": true }));
        // Readable by the containers' group (fsGroup) only.
        volumes.push(json!({ "name": "tls", "secret": {
            "secretName": tls.secret_name, "defaultMode": 0o440 } }));
        if let Some(client_ca) = &tls.client_ca_secret_name {
            mounts.push(
                json!({ "name": "client-ca", "mountPath": CLIENT_CA_MOUNT, "readOnly": true }),
            );
            volumes.push(json!({ "name": "client-ca", "secret": {
                "secretName": client_ca, "defaultMode": 0o440,
                "items": [{ "key": tls::CA_KEY, "path": tls::CA_KEY }] } }));
        }
    }
    if !mounts.is_empty() {
        container["volumeMounts"] = json!(mounts);
    }
    let mut template = json!({
        "metadata": {
            "labels": labels(input.name, Some(p.role)),
            "annotations": { CONFIG_HASH_ANNOTATION: hash },
        },
        "spec": {
            "terminationGracePeriodSeconds": p.grace_seconds,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": RUN_AS,
                "runAsGroup": RUN_AS,
                "fsGroup": RUN_AS,
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "containers": [container],
        },
    });
    if !volumes.is_empty() {
        template["spec"]["volumes"] = json!(volumes);
    }
    if let Some(account) = p.service_account {
        template["spec"]["serviceAccountName"] = json!(account);
    }
    template
}

/// The TLS Secret a StatefulSet's pods mount, if any (the cluster runs
/// TLS with it).
pub fn mounted_tls_secret(set: &StatefulSet) -> Option<String> {
    set.spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.volumes.as_ref())?
        .iter()
        .find(|v| v.name == "tls")
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone())
}

/// Why `spec.tls` cannot be applied to a cluster whose pods run with TLS
/// or without (`current_tls`; `None` before it exists), if it cannot.
pub fn tls_switch_problem(
    spec: &StreamBusClusterSpec,
    current_tls: Option<bool>,
) -> Option<String> {
    let current = current_tls?;
    (current != spec.tls.is_some()).then(|| format!(
        "spec.tls cannot be {} a running cluster: its processes would stop understanding each other while pods restart one by one. Delete and recreate the cluster (its volumes are kept), or restore spec.tls",
        if current { "removed from" } else { "added to" }
    ))
}

fn volume_claim(storage: &StorageSpec) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": { "requests": { "storage": storage.size } },
    });
    if let Some(class) = &storage.storage_class_name {
        spec["storageClassName"] = json!(class);
    }
    json!({ "metadata": { "name": "data" }, "spec": spec })
}

fn stateful_set(
    input: &Input,
    role: Role,
    replicas: i32,
    template: Value,
    storage: &StorageSpec,
) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(input, name(input.name, role), Some(role)),
        "spec": {
            "replicas": replicas,
            "serviceName": name(input.name, role),
            // Every member starts at once: controllers must all be up to
            // form their Raft group.
            "podManagementPolicy": "Parallel",
            // The operator deletes outdated pods itself, one at a time and
            // only when StreamBus says it is safe (`roll.rs`).
            "updateStrategy": { "type": "OnDelete" },
            "selector": { "matchLabels": selector(input.name, role) },
            "template": template,
            "volumeClaimTemplates": [volume_claim(storage)],
            "persistentVolumeClaimRetentionPolicy": { "whenDeleted": "Retain", "whenScaled": "Retain" },
        },
    })
}

fn headless_service(input: &Input, role: Role, grpc_port: i32) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(input, name(input.name, role), Some(role)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector(input.name, role),
            "ports": [
                { "name": "grpc", "port": grpc_port, "targetPort": "grpc" },
                { "name": "http", "port": HTTP_PORT, "targetPort": "http" },
            ],
        },
    })
}

fn pdb(input: &Input, role: Role, budget: (&str, i32)) -> Value {
    let mut spec = json!({ "selector": { "matchLabels": selector(input.name, role) } });
    spec[budget.0] = json!(budget.1);
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(input, name(input.name, role), Some(role)),
        "spec": spec,
    })
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("the operator builds well-formed objects")
}

/// Everything the cluster should own. A spec error (bad `config`) is the
/// `Err`; changes StreamBus cannot make safely yet are held back and listed
/// in [`Desired::problems`].
pub fn desired(input: &Input) -> Result<Desired, String> {
    let spec = input.spec;
    let mut problems = Vec::new();
    let mut data = BTreeMap::from([("STREAMBUS_LOG__FORMAT".to_string(), "json".to_string())]);
    if let Some(problem) = tls_switch_problem(spec, input.current_tls) {
        return Err(problem);
    }
    data.extend(config_env(&spec.config)?);
    data.extend(security_env(spec, input.tls_identity)?);
    let hash = config_hash(&data);
    let http_scheme = if flag(&spec.config, "http.tls")? {
        "HTTPS"
    } else {
        "HTTP"
    };

    let controllers = match input.current_controllers {
        Some(current) if current != spec.controllers.replicas => {
            problems.push(Problem {
                reason: "ControllerCountChangeUnsupported",
                message: format!(
                    "the cluster has {current} controllers and spec.controllers.replicas is {}: changing the Raft voters needs add-controller/remove-controller, which this operator does not do yet",
                    spec.controllers.replicas
                ),
            });
            current
        }
        _ => spec.controllers.replicas,
    };
    let storage_nodes = input.storage_nodes;
    let gateways = spec.gateways.replicas;
    let controller_addrs = pod_addresses(input, Role::Controller, controllers, CONTROLLER_PORT);
    let peers: Vec<String> = controller_addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let http = (
        "STREAMBUS_HTTP__LISTEN_ADDR",
        format!("0.0.0.0:{HTTP_PORT}"),
    );
    let advertised = |role: Role, port: i32| {
        format!(
            "$(POD_NAME).{}.{}.svc:{port}",
            name(input.name, role),
            input.namespace
        )
    };

    let mut controller_env = identity_env();
    controller_env.extend(env(&[
        http.clone(),
        (
            "STREAMBUS_CONTROLLER__LISTEN_ADDR",
            format!("0.0.0.0:{CONTROLLER_PORT}"),
        ),
        (
            "STREAMBUS_CONTROLLER__ADVERTISED_ADDR",
            advertised(Role::Controller, CONTROLLER_PORT),
        ),
        (
            "STREAMBUS_CONTROLLER__DATA_DIR",
            format!("{DATA_MOUNT}/controller"),
        ),
        ("STREAMBUS_CONTROLLER__PEERS", peers.join(",")),
    ]));
    let controller_template = pod_template(
        input,
        &hash,
        PodParts {
            role: Role::Controller,
            grpc_port: CONTROLLER_PORT,
            env: controller_env,
            resources: spec.controllers.resources.as_ref(),
            node_id_var: Some("STREAMBUS_CONTROLLER__NODE_ID"),
            grace_seconds: 30,
            data_volume: true,
            http_scheme,
            service_account: None,
        },
    );

    let mut storage_env = identity_env();
    storage_env.extend(env(&[
        http.clone(),
        (
            "STREAMBUS_STORAGE_NODE__LISTEN_ADDR",
            format!("0.0.0.0:{STORAGE_PORT}"),
        ),
        (
            "STREAMBUS_STORAGE_NODE__ADVERTISED_ADDR",
            advertised(Role::StorageNode, STORAGE_PORT),
        ),
        (
            "STREAMBUS_STORAGE_NODE__DATA_DIR",
            format!("{DATA_MOUNT}/storage"),
        ),
        (
            "STREAMBUS_STORAGE_NODE__CONTROLLERS",
            controller_addrs.join(","),
        ),
    ]));
    if let Some(rack) = &spec.storage_nodes.rack {
        // Kubernetes copies the node's zone and region labels onto the pod
        // when it is scheduled; empty (no rack) where the node has none.
        storage_env.push(
            json!({ "name": "STREAMBUS_STORAGE_NODE__RACK", "valueFrom": { "fieldRef": {
            "fieldPath": format!("metadata.labels['{}']", rack.topology_key) } } }),
        );
    }
    let mut storage_template = pod_template(
        input,
        &hash,
        PodParts {
            role: Role::StorageNode,
            grpc_port: STORAGE_PORT,
            env: storage_env,
            resources: spec.storage_nodes.resources.as_ref(),
            node_id_var: Some("STREAMBUS_STORAGE_NODE__NODE_ID"),
            // Flushing and fsyncing every log on SIGTERM.
            grace_seconds: 120,
            data_volume: true,
            http_scheme,
            service_account: None,
        },
    );

    if let Some(rack) = &spec.storage_nodes.rack {
        storage_template["spec"]["topologySpreadConstraints"] = json!([{
            "maxSkew": 1,
            "topologyKey": rack.topology_key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": { "matchLabels": selector(input.name, Role::StorageNode) },
        }]);
    }
    let gateway_template = pod_template(
        input,
        &hash,
        PodParts {
            role: Role::Gateway,
            grpc_port: GATEWAY_PORT,
            env: env(&[
                http,
                (
                    "STREAMBUS_GATEWAY__LISTEN_ADDR",
                    format!("0.0.0.0:{GATEWAY_PORT}"),
                ),
                ("STREAMBUS_GATEWAY__CONTROLLERS", controller_addrs.join(",")),
            ]),
            resources: spec.gateways.resources.as_ref(),
            node_id_var: None,
            // In-flight requests finish (request_timeout_ms is 30 s).
            grace_seconds: 60,
            data_volume: false,
            http_scheme,
            service_account: spec.gateways.service_account_name.as_deref(),
        },
    );

    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(input, config_map_name(input.name), None),
        "data": data,
    });
    let gateway_name = name(input.name, Role::Gateway);
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(input, gateway_name.clone(), Some(Role::Gateway)),
        "spec": {
            "replicas": gateways,
            "selector": { "matchLabels": selector(input.name, Role::Gateway) },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } },
            "template": gateway_template,
        },
    });
    let client_service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(input, gateway_name, Some(Role::Gateway)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(input.name, Role::Gateway),
            "ports": [{ "name": "grpc", "port": GATEWAY_PORT, "targetPort": "grpc" }],
        },
    });
    Ok(Desired {
        config_map: typed(config_map),
        services: vec![
            typed(headless_service(input, Role::Controller, CONTROLLER_PORT)),
            typed(headless_service(input, Role::StorageNode, STORAGE_PORT)),
            typed(client_service),
        ],
        stateful_sets: vec![
            typed(stateful_set(
                input,
                Role::Controller,
                controllers,
                controller_template,
                &spec.controllers.storage,
            )),
            typed(stateful_set(
                input,
                Role::StorageNode,
                storage_nodes,
                storage_template,
                &spec.storage_nodes.storage,
            )),
        ],
        deployment: typed(deployment),
        pdbs: vec![
            // A quorum of voters always stays.
            typed(pdb(
                input,
                Role::Controller,
                ("minAvailable", controllers / 2 + 1),
            )),
            typed(pdb(input, Role::StorageNode, ("maxUnavailable", 1))),
        ],
        controllers,
        storage_nodes,
        gateways,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::StreamBusClusterSpec;

    fn spec() -> StreamBusClusterSpec {
        serde_json::from_value(json!({
            "image": "streambus:0.1.0",
            "storageNodes": { "replicas": 4, "storage": { "size": "20Gi", "storageClassName": "fast" } },
            "config": { "storage_node.max_fetch_bytes": "1048576" },
        }))
        .unwrap()
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "streambus.io/v1alpha1".into(),
            kind: "StreamBusCluster".into(),
            name: "prod".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn input(spec: &StreamBusClusterSpec) -> Input<'_> {
        Input {
            name: "prod",
            namespace: "data",
            spec,
            owner: owner(),
            current_controllers: None,
            storage_nodes: spec.storage_nodes.replicas,
            tls_identity: None,
            current_tls: None,
        }
    }

    fn env_of(sts: &StatefulSet) -> BTreeMap<String, String> {
        sts.spec.template.spec.as_ref().unwrap().containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
            .collect()
    }

    #[test]
    fn every_object_is_owned_by_the_cluster() {
        let s = spec();
        let d = desired(&input(&s)).unwrap();
        let mut metas = vec![&d.config_map.metadata, &d.deployment.metadata];
        metas.extend(d.services.iter().map(|o| &o.metadata));
        metas.extend(d.stateful_sets.iter().map(|o| &o.metadata));
        metas.extend(d.pdbs.iter().map(|o| &o.metadata));
        assert_eq!(metas.len(), 9);
        for m in metas {
            assert_eq!(
                m.owner_references.as_deref(),
                Some(&[owner()][..]),
                "{:?}",
                m.name
            );
            assert_eq!(m.namespace.as_deref(), Some("data"));
        }
    }

    #[test]
    fn controllers_get_explicit_ids_and_the_full_peer_list() {
        let s = spec();
        let d = desired(&input(&s)).unwrap();
        let sts = &d.stateful_sets[0];
        assert_eq!(sts.metadata.name.as_deref(), Some("prod-controller"));
        let spec = &sts.spec;
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("prod-controller"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let env = env_of(sts);
        assert_eq!(
            env["STREAMBUS_CONTROLLER__PEERS"],
            "1=prod-controller-0.prod-controller.data.svc:7401,\
             2=prod-controller-1.prod-controller.data.svc:7401,\
             3=prod-controller-2.prod-controller.data.svc:7401"
        );
        assert_eq!(
            env["STREAMBUS_CONTROLLER__ADVERTISED_ADDR"],
            "$(POD_NAME).prod-controller.data.svc:7401"
        );
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            c.args.as_ref().unwrap()[0],
            "export STREAMBUS_CONTROLLER__NODE_ID=$((POD_INDEX + 1)) && exec streambus controller"
        );
        let probe = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn storage_nodes_get_volumes_of_the_requested_size_and_class() {
        let s = spec();
        let d = desired(&input(&s)).unwrap();
        let sts = &d.stateful_sets[1];
        let spec = &sts.spec;
        assert_eq!(spec.replicas, Some(4));
        let pvc = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let pvc_spec = pvc.spec.as_ref().unwrap();
        assert_eq!(pvc_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            pvc_spec
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"]
                .0,
            "20Gi"
        );
        assert_eq!(
            spec.template
                .spec
                .as_ref()
                .unwrap()
                .termination_grace_period_seconds,
            Some(120)
        );
        let env = env_of(sts);
        assert!(
            env["STREAMBUS_STORAGE_NODE__CONTROLLERS"]
                .starts_with("prod-controller-0.prod-controller.data.svc:7401,")
        );
    }

    #[test]
    fn budgets_keep_a_quorum_and_one_storage_node_down_at_most() {
        let mut s = spec();
        s.controllers.replicas = 5;
        let d = desired(&input(&s)).unwrap();
        let c = d.pdbs[0].spec.as_ref().unwrap();
        assert_eq!(
            c.min_available,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(3))
        );
        let st = d.pdbs[1].spec.as_ref().unwrap();
        assert_eq!(
            st.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
        );
    }

    #[test]
    fn config_becomes_environment_and_its_hash_restarts_pods() {
        let s = spec();
        let d = desired(&input(&s)).unwrap();
        let data = d.config_map.data.as_ref().unwrap();
        assert_eq!(data["STREAMBUS_STORAGE_NODE__MAX_FETCH_BYTES"], "1048576");
        assert_eq!(data["STREAMBUS_LOG__FORMAT"], "json");
        let hash = |d: &Desired| {
            d.deployment
                .spec
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        let mut changed = spec();
        changed
            .config
            .insert("gateway.subscribe_buffer".into(), "8".into());
        let d2 = desired(&input(&changed)).unwrap();
        assert_ne!(hash(&d), hash(&d2));
        assert_eq!(hash(&d), hash(&desired(&input(&spec())).unwrap()));
    }

    #[test]
    fn operator_managed_and_malformed_config_keys_are_refused() {
        let bad = |k: &str| config_env(&[(k.to_string(), "x".to_string())].into()).unwrap_err();
        assert!(bad("controller.peers").contains("set by the operator"));
        assert!(bad("retention").contains("section.key"));
        assert!(bad("kafka.x").contains("section must be one of"));
    }

    #[test]
    fn voter_changes_are_held_back_and_the_planned_storage_count_applied() {
        let mut s = spec();
        s.storage_nodes.replicas = 2;
        s.controllers.replicas = 5;
        let mut i = input(&s);
        i.storage_nodes = 4;
        i.current_controllers = Some(3);
        let d = desired(&i).unwrap();
        assert_eq!(d.storage_nodes, 4);
        assert_eq!(d.controllers, 3);
        assert_eq!(d.stateful_sets[1].spec.replicas, Some(4));
        let reasons: Vec<&str> = d.problems.iter().map(|p| p.reason).collect();
        assert_eq!(reasons, ["ControllerCountChangeUnsupported"]);
        for sts in &d.stateful_sets {
            let strategy = sts.spec.update_strategy.as_ref().unwrap();
            assert_eq!(strategy.type_.as_deref(), Some("OnDelete"));
        }
    }

    #[test]
    fn racks_come_from_the_zone_label_kubernetes_copies_onto_pods() {
        let mut s = spec();
        let d = desired(&input(&s)).unwrap();
        let pod = d.stateful_sets[1].spec.template.spec.clone().unwrap();
        assert!(pod.topology_spread_constraints.is_none());
        s.storage_nodes.rack = Some(crate::crd::RackSpec {
            topology_key: "topology.kubernetes.io/zone".into(),
        });
        let d = desired(&input(&s)).unwrap();
        let pod = d.stateful_sets[1].spec.template.spec.clone().unwrap();
        let rack = pod.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "STREAMBUS_STORAGE_NODE__RACK")
            .unwrap();
        assert_eq!(
            rack.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.labels['topology.kubernetes.io/zone']"
        );
        let spread = &pod.topology_spread_constraints.unwrap()[0];
        assert_eq!(spread.topology_key, "topology.kubernetes.io/zone");
        assert_eq!(spread.when_unsatisfiable, "ScheduleAnyway");
        assert!(config_env(&[("storage_node.rack".to_string(), "a".to_string())].into()).is_err());
    }

    #[test]
    fn gateways_are_a_deployment_behind_a_client_service() {
        let s = spec();
        let d = desired(&input(&s)).unwrap();
        assert_eq!(d.deployment.spec.replicas, Some(2));
        let svc = &d.services[2];
        assert_eq!(svc.metadata.name.as_deref(), Some("prod-gateway"));
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.ports.as_ref().unwrap()[0].port, 7400);
        for headless in &d.services[..2] {
            let spec = headless.spec.as_ref().unwrap();
            assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
            assert_eq!(spec.publish_not_ready_addresses, Some(true));
        }
    }

    fn secure_spec() -> StreamBusClusterSpec {
        serde_json::from_value(json!({
            "image": "streambus:0.1.0",
            "tls": { "secretName": "prod-tls", "clientAuth": "required",
                     "clientCaSecretName": "prod-clients" },
            "gateways": { "serviceAccountName": "streambus-gateway" },
            "config": {
                "http.tls": "true",
                "gateway.auth.mtls": "true",
                "gateway.auth.acls": "true",
                "gateway.auth.superusers": "User:admin, User:ops",
            },
        }))
        .unwrap()
    }

    fn pod_specs(d: &Desired) -> Vec<k8s_openapi::api::core::v1::PodSpec> {
        let mut pods: Vec<_> = d
            .stateful_sets
            .iter()
            .map(|s| s.spec.template.spec.clone().unwrap())
            .collect();
        pods.push(d.deployment.spec.template.spec.clone().unwrap());
        pods
    }

    #[test]
    fn tls_mounts_the_secret_everywhere_and_makes_the_operator_a_superuser() {
        let s = secure_spec();
        let mut i = input(&s);
        i.tls_identity = Some("prod-cluster");
        let d = desired(&i).unwrap();
        let data = d.config_map.data.as_ref().unwrap();
        assert_eq!(
            data["STREAMBUS_TLS__CERT_FILE"],
            "/etc/streambus/tls/tls.crt"
        );
        assert_eq!(
            data["STREAMBUS_TLS__KEY_FILE"],
            "/etc/streambus/tls/tls.key"
        );
        assert_eq!(data["STREAMBUS_TLS__CA_FILE"], "/etc/streambus/tls/ca.crt");
        assert_eq!(data["STREAMBUS_TLS__CLIENT_AUTH"], "required");
        assert_eq!(
            data["STREAMBUS_TLS__CLIENT_CA_FILE"],
            "/etc/streambus/client-ca/ca.crt"
        );
        assert_eq!(data["STREAMBUS_GATEWAY__AUTH__MTLS"], "true");
        assert_eq!(data["STREAMBUS_HTTP__TLS"], "true");
        assert_eq!(
            data["STREAMBUS_GATEWAY__AUTH__SUPERUSERS"],
            "User:admin,User:ops,User:prod-cluster"
        );
        for pod in pod_specs(&d) {
            let volume = pod
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.name == "tls")
                .unwrap();
            let secret = volume.secret.as_ref().unwrap();
            assert_eq!(secret.secret_name.as_deref(), Some("prod-tls"));
            assert_eq!(secret.default_mode, Some(0o440));
            let clients = pod
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.name == "client-ca")
                .and_then(|v| v.secret.clone())
                .unwrap();
            assert_eq!(clients.secret_name.as_deref(), Some("prod-clients"));
            let c = &pod.containers[0];
            let mount = c
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.name == "tls")
                .unwrap();
            assert_eq!(mount.mount_path, "/etc/streambus/tls");
            assert!(mount.sub_path.is_none());
            for probe in [&c.readiness_probe, &c.liveness_probe] {
                let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
                assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
            }
        }
        assert!(
            d.stateful_sets
                .iter()
                .all(|s| mounted_tls_secret(s).as_deref() == Some("prod-tls"))
        );
        let gateway = d.deployment.spec.template.spec.as_ref().unwrap();
        assert_eq!(
            gateway.service_account_name.as_deref(),
            Some("streambus-gateway")
        );
        // The operator is already listed: not twice.
        let mut again = secure_spec();
        again
            .config
            .insert("gateway.auth.superusers".into(), "User:prod-cluster".into());
        let mut i = input(&again);
        i.tls_identity = Some("prod-cluster");
        let d = desired(&i).unwrap();
        assert_eq!(
            d.config_map.data.as_ref().unwrap()["STREAMBUS_GATEWAY__AUTH__SUPERUSERS"],
            "User:prod-cluster"
        );
    }

    #[test]
    fn without_tls_nothing_is_mounted_and_probes_are_plain_http() {
        let s = spec();
        let d = desired(&input(&s)).unwrap();
        assert!(
            !d.config_map
                .data
                .as_ref()
                .unwrap()
                .contains_key("STREAMBUS_TLS__CERT_FILE")
        );
        for pod in pod_specs(&d) {
            assert!(pod.volumes.is_none());
            let get = pod.containers[0]
                .readiness_probe
                .clone()
                .unwrap()
                .http_get
                .unwrap();
            assert_eq!(get.scheme.as_deref(), Some("HTTP"));
            assert!(pod.service_account_name.is_none());
        }
        assert!(
            d.stateful_sets
                .iter()
                .all(|s| mounted_tls_secret(s).is_none())
        );
    }

    #[test]
    fn security_settings_the_operator_could_not_live_with_are_refused() {
        let refused = |tls: Value, config: Value| {
            let s: StreamBusClusterSpec =
                serde_json::from_value(json!({ "image": "x", "tls": tls, "config": config }))
                    .unwrap();
            let mut i = input(&s);
            i.tls_identity = s.tls.as_ref().map(|_| "prod");
            desired(&i).unwrap_err()
        };
        let e = refused(Value::Null, json!({ "gateway.auth.acls": "true" }));
        assert!(e.contains("need spec.tls"), "{e}");
        let e = refused(Value::Null, json!({ "http.tls": "true" }));
        assert!(e.contains("need spec.tls"), "{e}");
        let e = refused(
            json!({ "secretName": "t" }),
            json!({ "gateway.auth.mtls": "true" }),
        );
        assert!(e.contains("clientAuth optional or required"), "{e}");
        let e = refused(
            json!({ "secretName": "t", "clientAuth": "required" }),
            json!({}),
        );
        assert!(e.contains("needs spec.tls.clientCaSecretName"), "{e}");
        let e = refused(
            json!({ "secretName": "t", "clientAuth": "optional", "clientCaSecretName": "c" }),
            json!({ "gateway.auth.kubernetes.enabled": "true" }),
        );
        assert!(e.contains("the operator calls them as User:prod"), "{e}");
        let e = refused(
            json!({ "secretName": "t" }),
            json!({ "gateway.auth.acls": "yes" }),
        );
        assert!(e.contains("expected \"true\" or \"false\""), "{e}");
        let e = refused(
            json!({ "secretName": "t" }),
            json!({ "gateway.auth.acls": " true" }),
        );
        assert!(e.contains("expected"), "{e}");
        // `__` would nest: gateway.auth__acls is gateway.auth.acls to the
        // process, past the operator's checks.
        for key in ["gateway.auth__acls", "gateway._auth", "gateway.auth_.acls"] {
            let e = refused(Value::Null, json!({ key: "true" }));
            assert!(e.contains("single _"), "{key}: {e}");
        }
        let e = refused(
            json!({ "secretName": "t" }),
            json!({ "tls.client_auth": "none" }),
        );
        assert!(e.contains("spec.tls"), "{e}");
        let e = refused(Value::Null, json!({ "gateway.auth.token_file": "/tokens" }));
        assert!(e.contains("names a file"), "{e}");
        // Kubernetes tokens next to anonymous access: the operator comes
        // in anonymously, no TLS needed.
        let s: StreamBusClusterSpec = serde_json::from_value(json!({ "image": "x", "config": {
            "gateway.auth.kubernetes.enabled": "true", "gateway.auth.allow_anonymous": "true" } }))
        .unwrap();
        let d = desired(&input(&s)).unwrap();
        assert_eq!(
            d.config_map.data.as_ref().unwrap()["STREAMBUS_GATEWAY__AUTH__KUBERNETES__ENABLED"],
            "true"
        );
        // Lists reach the process trimmed (it does not trim them).
        let lists = config_env(
            &[
                (
                    "gateway.auth.kubernetes.audiences".to_string(),
                    " a, b ,".to_string(),
                ),
                (
                    "gateway.auth.superusers".to_string(),
                    "User:x , User:y".to_string(),
                ),
            ]
            .into(),
        )
        .unwrap();
        assert_eq!(
            lists["STREAMBUS_GATEWAY__AUTH__KUBERNETES__AUDIENCES"],
            "a,b"
        );
        assert_eq!(
            lists["STREAMBUS_GATEWAY__AUTH__SUPERUSERS"],
            "User:x,User:y"
        );
    }

    #[test]
    fn tls_is_not_switched_on_or_off_under_a_running_cluster() {
        let s = secure_spec();
        let mut i = input(&s);
        i.tls_identity = Some("prod");
        i.current_tls = Some(false);
        assert!(
            desired(&i)
                .unwrap_err()
                .contains("cannot be added to a running cluster")
        );
        i.current_tls = Some(true);
        assert!(desired(&i).is_ok());
        let plain = spec();
        let mut i = input(&plain);
        i.current_tls = Some(true);
        assert!(desired(&i).unwrap_err().contains("cannot be removed from"));
    }
}
