//! A cluster's TLS Secret, checked before it is mounted into pods: the
//! three files are there and load, and the certificate is valid for every
//! name the cluster's processes dial each other by. What the operator
//! needs from it (the CA, the certificate it presents to the gateways,
//! and the principal that certificate names) comes out of the same check.

use std::collections::BTreeMap;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use streambus_service::identity::{certificate_covers, certificate_name};

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

/// The names the certificate must be valid for: a pod of each stateful
/// role (peers dial `<pod>.<headless service>.<namespace>.svc`) and the
/// gateways' client Service.
pub fn required_names(cluster: &str, namespace: &str) -> Vec<String> {
    let pod = |role: Role| {
        let set = name(cluster, role);
        format!("{set}-0.{set}.{namespace}.svc")
    };
    vec![
        pod(Role::Controller),
        pod(Role::StorageNode),
        gateway_host(cluster, namespace),
    ]
}

/// Checks Secret `secret`'s `data` for cluster `cluster` in `namespace`.
/// `Err` says what is wrong, for the cluster's status.
pub fn check(
    secret: &str,
    data: &BTreeMap<String, Vec<u8>>,
    cluster: &str,
    namespace: &str,
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
    let leaf = CertificateDer::pem_slice_iter(&cert_pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| format!("Secret {secret:?}: tls.crt holds no PEM certificate"))?;
    if CertificateDer::pem_slice_iter(&ca_pem)
        .next()
        .and_then(Result::ok)
        .is_none()
    {
        return Err(format!(
            "Secret {secret:?}: ca.crt holds no PEM certificate"
        ));
    }
    if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
        return Err(format!(
            "Secret {secret:?}: tls.key holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"
        ));
    }
    let missing: Vec<String> = required_names(cluster, namespace)
        .into_iter()
        .filter(|host| !certificate_covers(&leaf, host))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the certificate in Secret {secret:?} is not valid for {}: its DNS names must include *.{c}-controller.{namespace}.svc, *.{c}-storage.{namespace}.svc and {}",
            missing.join(", "),
            gateway_host(cluster, namespace),
            c = cluster,
        ));
    }
    let identity = certificate_name(&leaf).ok_or_else(|| {
        format!(
            "the certificate in Secret {secret:?} names no one: give it a common name (the gateways' principal for the operator is User:<common name>)"
        )
    })?;
    Ok(ClusterTls {
        ca_pem,
        cert_pem,
        key_pem,
        identity,
        server_name: gateway_host(cluster, namespace),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use streambus_service::certs::{Ca, Usage, Validity};

    fn secret(hosts: &[&str], cn: &str) -> BTreeMap<String, Vec<u8>> {
        let ca = Ca::new("prod ca", Validity::days(1)).unwrap();
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let pem = ca
            .issue(cn, &hosts, Usage::Peer, Validity::days(1))
            .unwrap();
        BTreeMap::from([
            (CERT_KEY.to_string(), pem.cert.into_bytes()),
            (KEY_KEY.to_string(), pem.key.into_bytes()),
            (CA_KEY.to_string(), ca.pem().cert.clone().into_bytes()),
        ])
    }

    const GOOD: &[&str] = &[
        "*.prod-controller.data.svc",
        "*.prod-storage.data.svc",
        "prod-gateway.data.svc",
    ];

    #[test]
    fn a_cert_manager_secret_gives_the_operator_its_identity() {
        let tls = check("prod-tls", &secret(GOOD, "prod-cluster"), "prod", "data").unwrap();
        assert_eq!(tls.identity, "prod-cluster");
        assert_eq!(tls.server_name, "prod-gateway.data.svc");
    }

    #[test]
    fn a_missing_file_or_name_is_reported_precisely() {
        let mut data = secret(GOOD, "prod");
        data.remove(CA_KEY);
        let e = check("prod-tls", &data, "prod", "data").unwrap_err();
        assert!(e.contains("has no \"ca.crt\""), "{e}");

        let mut data = secret(GOOD, "prod");
        data.insert(KEY_KEY.into(), b"garbage".to_vec());
        let e = check("prod-tls", &data, "prod", "data").unwrap_err();
        assert!(e.contains("tls.key holds no PEM private key"), "{e}");

        let e = check(
            "prod-tls",
            &secret(
                &["*.prod-controller.data.svc", "prod-gateway.data.svc"],
                "p",
            ),
            "prod",
            "data",
        )
        .unwrap_err();
        assert!(
            e.contains("not valid for prod-storage-0.prod-storage.data.svc:"),
            "{e}"
        );
        // Issued for another namespace.
        let e = check("prod-tls", &secret(GOOD, "prod"), "prod", "other").unwrap_err();
        assert!(e.contains("prod-gateway.other.svc"), "{e}");
    }
}
