//! A cluster's TLS Secret, checked before it is mounted into pods: the
//! three files are there and load, the key is the certificate's, the
//! certificate chains to the CA, is valid now for server and client
//! authentication and for every name the cluster's processes dial each
//! other by. What the operator
//! needs from it (the CA, the certificate it presents to the gateways,
//! and the principal that certificate names) comes out of the same check.

use std::collections::BTreeMap;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use streambus_service::identity::check_peer_certificate;

use super::resources::{Role, name};

/// The keys of a `kubernetes.io/tls` Secret cert-manager writes.
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const CA_KEY: &str = "ca.crt";

/// A usable TLS Secret of a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// The cluster CA (PEM).
    pub ca_pem: Vec<u8>,
    /// The cluster's certificate and key (PEM): what its processes serve
    /// and present to each other, and what the operator presents to the
    /// gateways.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The name the certificate gives its holder: the gateways'
    /// principal `User:<identity>` for the operator.
    pub identity: String,
    /// The name the gateways' certificate is checked against.
    pub server_name: String,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("identity", &self.identity)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The client Service name of cluster `cluster`'s gateways, which their
/// certificate must be valid for.
pub fn gateway_host(cluster: &str, namespace: &str) -> String {
    format!("{}.{namespace}.svc", name(cluster, Role::Gateway))
}

/// The names the certificate must be valid for: every pod of the stateful
/// roles (peers dial `<pod>.<headless service>.<namespace>.svc`), as many
/// as `pods` says per role, and the gateways' client Service.
pub fn required_names(cluster: &str, namespace: &str, pods: Pods) -> Vec<String> {
    let mut names = Vec::new();
    for (role, count) in [
        (Role::Controller, pods.controllers),
        (Role::StorageNode, pods.storage_nodes),
    ] {
        let set = name(cluster, role);
        names.extend((0..count.max(1)).map(|i| format!("{set}-{i}.{set}.{namespace}.svc")));
    }
    names.push(gateway_host(cluster, namespace));
    names
}

/// How many pods of each stateful role the certificate must cover (the
/// larger of the spec's and the running count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pods {
    pub controllers: i32,
    pub storage_nodes: i32,
}

/// Checks Secret `secret`'s `data` for cluster `cluster` in `namespace`:
/// the three keys, a key matching the certificate, a certificate that
/// chains to `ca.crt`, is valid now for server and client authentication
/// and for every name of [`required_names`], and names its holder (a
/// name usable as a principal). `Err` says what is wrong, for the
/// cluster's status.
pub fn check(
    secret: &str,
    data: &BTreeMap<String, Vec<u8>>,
    cluster: &str,
    namespace: &str,
    pods: Pods,
) -> Result<ClusterTls, String> {
    let get = |key: &str| {
        data.get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                format!(
                    "Secret {secret:?} has no {key:?}: it needs tls.crt, tls.key and ca.crt (a cert-manager Certificate's secret has them)"
                )
            })
    };
    let (cert_pem, key_pem, ca_pem) = (get(CERT_KEY)?, get(KEY_KEY)?, get(CA_KEY)?);
    let names = required_names(cluster, namespace, pods);
    let identity = check_peer_certificate(
        &format!("Secret {secret:?}"),
        &cert_pem,
        &key_pem,
        &ca_pem,
        &names,
    )
    .map_err(|e| {
        if e.contains("not valid for") {
            format!(
                "{e}: its DNS names must include *.{c}-controller.{namespace}.svc, *.{c}-storage.{namespace}.svc and {}",
                gateway_host(cluster, namespace),
                c = cluster,
            )
        } else {
            e
        }
    })?;
    // The identity becomes a superuser in a comma-separated list.
    if identity.is_empty()
        || identity == "*"
        || identity.contains(',')
        || identity.chars().any(char::is_whitespace)
    {
        return Err(format!(
            "the certificate in Secret {secret:?} names {identity:?}, which cannot be a principal: give it a common name without commas or spaces"
        ));
    }
    Ok(ClusterTls {
        ca_pem,
        cert_pem,
        key_pem,
        identity,
        server_name: gateway_host(cluster, namespace),
    })
}

/// Checks the client CA Secret `secret`'s `data`: a `ca.crt` of PEM
/// certificates.
pub fn check_client_ca(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    let ca = data.get(CA_KEY).filter(|v| !v.is_empty()).ok_or_else(|| {
        format!("Secret {secret:?} (spec.tls.clientCaSecretName) has no \"ca.crt\"")
    })?;
    let certs = CertificateDer::pem_slice_iter(ca)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("Secret {secret:?}: ca.crt: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "Secret {secret:?}: ca.crt holds no PEM certificate"
        ));
    }
    Ok(())
}

/// Why pods moving from Secret `old_name` (its `old` data) to the checked
/// Secret `new_name` one at a time would not trust each other, if so: old
/// and new pods run side by side during the roll, so each side's
/// certificate must verify against the other's `ca.crt`. An old
/// certificate that no longer verifies against its own CA (expired,
/// say) is no reason to hold the change: the running pods are failing
/// already, and a new Secret is the way out.
pub fn roll_trust_problem(
    old_name: &str,
    old: &BTreeMap<String, Vec<u8>>,
    new_name: &str,
    new: &ClusterTls,
) -> Option<String> {
    let file = |key: &str| old.get(key).map(Vec::as_slice).unwrap_or_default();
    let (cert, key, ca) = (file(CERT_KEY), file(KEY_KEY), file(CA_KEY));
    check_peer_certificate("", cert, key, ca, &[]).ok()?;
    let trusted = check_peer_certificate("", &new.cert_pem, &new.key_pem, ca, &[])
        .and_then(|_| check_peer_certificate("", cert, key, &new.ca_pem, &[]));
    trusted.err().map(|_| format!(
        "the pods run with Secret {old_name:?}, and its certificate and that of Secret {new_name:?} do not both verify against the other's ca.crt: pods restarted one at a time would not trust the others. Use a certificate of the same CA, or put both CAs in both ca.crt first"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use streambus_service::certs::{Ca, Usage, Validity};

    const PODS: Pods = Pods {
        controllers: 3,
        storage_nodes: 2,
    };

    fn issue(
        ca: &Ca,
        hosts: &[&str],
        cn: &str,
        usage: Usage,
        validity: Validity,
    ) -> BTreeMap<String, Vec<u8>> {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let pem = ca.issue(cn, &hosts, usage, validity).unwrap();
        BTreeMap::from([
            (CERT_KEY.to_string(), pem.cert.into_bytes()),
            (KEY_KEY.to_string(), pem.key.into_bytes()),
            (CA_KEY.to_string(), ca.pem().cert.clone().into_bytes()),
        ])
    }

    fn secret(hosts: &[&str], cn: &str) -> BTreeMap<String, Vec<u8>> {
        let ca = Ca::new("prod ca", Validity::days(1)).unwrap();
        issue(&ca, hosts, cn, Usage::Peer, Validity::days(1))
    }

    const GOOD: &[&str] = &[
        "*.prod-controller.data.svc",
        "*.prod-storage.data.svc",
        "prod-gateway.data.svc",
    ];

    fn check_prod(data: &BTreeMap<String, Vec<u8>>) -> Result<ClusterTls, String> {
        check("prod-tls", data, "prod", "data", PODS)
    }

    #[test]
    fn a_cert_manager_secret_gives_the_operator_its_identity() {
        let tls = check_prod(&secret(GOOD, "prod-cluster")).unwrap();
        assert_eq!(tls.identity, "prod-cluster");
        assert_eq!(tls.server_name, "prod-gateway.data.svc");
        assert!(!format!("{tls:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn a_missing_file_or_name_is_reported_precisely() {
        let mut data = secret(GOOD, "prod");
        data.remove(CA_KEY);
        let e = check_prod(&data).unwrap_err();
        assert!(e.contains("has no \"ca.crt\""), "{e}");

        let mut data = secret(GOOD, "prod");
        data.insert(KEY_KEY.into(), b"garbage".to_vec());
        let e = check_prod(&data).unwrap_err();
        assert!(e.contains("no PEM private key"), "{e}");

        let e = check_prod(&secret(
            &["*.prod-controller.data.svc", "prod-gateway.data.svc"],
            "p",
        ))
        .unwrap_err();
        assert!(
            e.contains("not valid for prod-storage-0.prod-storage.data.svc, prod-storage-1.prod-storage.data.svc:"),
            "{e}"
        );
        // Issued for another namespace.
        let e = check("prod-tls", &secret(GOOD, "prod"), "prod", "other", PODS).unwrap_err();
        assert!(e.contains("prod-gateway.other.svc"), "{e}");
    }

    #[test]
    fn every_pod_must_be_covered_not_only_the_first() {
        let only_first = [
            "prod-controller-0.prod-controller.data.svc",
            "prod-storage-0.prod-storage.data.svc",
            "prod-gateway.data.svc",
        ];
        let e = check_prod(&secret(&only_first, "p")).unwrap_err();
        assert!(
            e.contains("prod-controller-1.prod-controller.data.svc, prod-controller-2.prod-controller.data.svc, prod-storage-1"),
            "{e}"
        );
        let single = Pods {
            controllers: 1,
            storage_nodes: 1,
        };
        assert!(
            check(
                "prod-tls",
                &secret(&only_first, "p"),
                "prod",
                "data",
                single
            )
            .is_ok()
        );
    }

    #[test]
    fn what_would_fail_at_run_time_is_refused_up_front() {
        let ca = Ca::new("prod ca", Validity::days(1)).unwrap();
        // Another CA's certificate.
        let mut data = issue(&ca, GOOD, "p", Usage::Peer, Validity::days(1));
        let other = Ca::new("other ca", Validity::days(1)).unwrap();
        data.insert(CA_KEY.into(), other.pem().cert.clone().into_bytes());
        let e = check_prod(&data).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        // A key of another certificate.
        let mut data = issue(&ca, GOOD, "p", Usage::Peer, Validity::days(1));
        let stranger = issue(&ca, GOOD, "q", Usage::Peer, Validity::days(1));
        data.insert(KEY_KEY.into(), stranger[KEY_KEY].clone());
        let e = check_prod(&data).unwrap_err();
        assert!(e.contains("the key is not the certificate's"), "{e}");
        // Expired.
        let expired = Validity {
            started_secs_ago: 7200,
            ends_in_secs: -3600,
        };
        let e = check_prod(&issue(&ca, GOOD, "p", Usage::Peer, expired)).unwrap_err();
        assert!(e.contains("does not verify") && e.contains("xpired"), "{e}");
        // Client authentication only: peers could not serve it.
        let e = check_prod(&issue(&ca, GOOD, "p", Usage::Client, Validity::days(1))).unwrap_err();
        assert!(e.contains("server certificate"), "{e}");
        // A client CA Secret without a CA.
        let e = check_client_ca("clients", &BTreeMap::new()).unwrap_err();
        assert!(e.contains("has no \"ca.crt\""), "{e}");
        let e = check_client_ca("clients", &BTreeMap::from([(CA_KEY.into(), b"x".to_vec())]))
            .unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        assert!(
            check_client_ca(
                "clients",
                &issue(&ca, GOOD, "p", Usage::Peer, Validity::days(1))
            )
            .is_ok()
        );
        // Moving to another Secret: same CA fine, another CA refused, an
        // expired running certificate no reason to hold the way out.
        let now = issue(&ca, GOOD, "p", Usage::Peer, Validity::days(1));
        let new = check_prod(&issue(&ca, GOOD, "p", Usage::Peer, Validity::days(1))).unwrap();
        assert_eq!(roll_trust_problem("old", &now, "new", &new), None);
        let other = Ca::new("other ca", Validity::days(1)).unwrap();
        let foreign =
            check_prod(&issue(&other, GOOD, "p", Usage::Peer, Validity::days(1))).unwrap();
        let e = roll_trust_problem("old", &now, "new", &foreign).unwrap();
        assert!(e.contains("would not trust the others"), "{e}");
        let stale = issue(&ca, GOOD, "p", Usage::Peer, expired);
        assert_eq!(roll_trust_problem("old", &stale, "new", &foreign), None);
        // A name no principal list can carry.
        let e = check_prod(&issue(&ca, GOOD, "a,b", Usage::Peer, Validity::days(1))).unwrap_err();
        assert!(e.contains("cannot be a principal"), "{e}");
    }
}
