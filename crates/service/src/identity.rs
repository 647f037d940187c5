//! Who a certificate names, and what it is valid for: the gateway's
//! principal of a client certificate, and the operator's checks of the
//! certificates it mounts into a cluster's pods.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The name a certificate gives its holder (the gateway's principal
/// `User:<name>` for a verified client certificate): its subject's common
/// name, else its first URI subject alternative name (a SPIFFE id, say),
/// else its first DNS one.
pub fn certificate_name(der: &[u8]) -> Option<String> {
    let der = CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    if let Some(cn) = common_name(cert.subject()) {
        return Some(cn);
    }
    let name = cert
        .valid_uri_names()
        .next()
        .or_else(|| cert.valid_dns_names().next())?;
    Some(name.to_string())
}

/// The common name (OID 2.5.4.3) in a DER `Name`'s contents (a sequence of
/// sets of attribute type and value), if any.
fn common_name(name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut rdns = name;
    while !rdns.is_empty() {
        let (tag, set, rest) = tlv(rdns)?;
        rdns = rest;
        if tag != 0x31 {
            return None;
        }
        let mut atvs = set;
        while !atvs.is_empty() {
            let (tag, atv, rest) = tlv(atvs)?;
            atvs = rest;
            if tag != 0x30 {
                return None;
            }
            let (tag, oid, rest) = tlv(atv)?;
            if tag != 0x06 || oid != CN {
                continue;
            }
            let (tag, value, _) = tlv(rest)?;
            return match tag {
                // UTF8String, PrintableString, IA5String, T61String
                0x0c | 0x13 | 0x16 | 0x14 => String::from_utf8(value.to_vec()).ok(),
                // BMPString: UTF-16BE
                0x1e if value.len() % 2 == 0 => String::from_utf16(
                    &value
                        .chunks(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect::<Vec<_>>(),
                )
                .ok(),
                _ => None,
            };
        }
    }
    None
}

/// One DER element: (tag, contents, what follows). Single-byte tags and
/// definite lengths only, as DER has for these types.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Whether the certificate (DER) is valid for the DNS name `host`
/// (wildcards as TLS clients match them).
pub fn certificate_covers(der: &[u8], host: &str) -> bool {
    let der = CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(host) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Checks a cluster peer's TLS material as its processes will use it: the
/// certificate chain (`cert_pem`, leaf first) and its key match, it chains
/// to the cluster CA (`ca_pem`), is valid now, usable for both server and
/// client authentication, and valid for every name in `names`. Returns the
/// name the certificate gives its holder ([`certificate_name`]); `Err`
/// says what is wrong, naming `what` (where the files came from).
pub fn check_peer_certificate(
    what: &str,
    cert_pem: &[u8],
    key_pem: &[u8],
    ca_pem: &[u8],
    names: &[String],
) -> Result<String, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("{what}: the certificate file holds no PEM certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
        format!("{what}: the key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        let ca = ca.map_err(|e| format!("{what}: the CA file: {e}"))?;
        roots
            .add(ca)
            .map_err(|e| format!("{what}: the CA file: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{what}: the CA file holds no PEM certificate"));
    }
    let provider = crate::tls::provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{what}: the key: {e}"))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|_| format!("{what}: the key is not the certificate's"))?;
    let roots = Arc::new(roots);
    let now = UnixTime::now();
    let (leaf, intermediates) = (&chain[0], &chain[1..]);
    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("{what}: the CA: {e}"))?;
    client
        .verify_client_cert(leaf, intermediates, now)
        .map_err(|e| {
            format!(
                "{what}: the certificate does not verify as a client certificate against the CA (peers present it to each other): {e}"
            )
        })?;
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| format!("{what}: the CA: {e}"))?;
    let mut missing = Vec::new();
    for name in names {
        let server_name = ServerName::try_from(name.as_str())
            .map_err(|_| format!("{name:?} is not a DNS name"))?;
        match server.verify_server_cert(leaf, intermediates, &server_name, &[], now) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => missing.push(name.as_str()),
            Err(e) => {
                return Err(format!(
                    "{what}: the certificate does not verify as a server certificate against the CA: {e}"
                ));
            }
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "{what}: the certificate is not valid for {}",
            missing.join(", ")
        ));
    }
    certificate_name(leaf).ok_or_else(|| {
        format!("{what}: the certificate names no one (no common name, URI or DNS name)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{Ca, Usage, Validity};
    use rustls::pki_types::pem::PemObject;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn wildcards_cover_one_label_and_names_come_from_the_common_name() {
        let ca = Ca::new("test ca", Validity::days(1)).unwrap();
        let hosts = [
            "*.prod-controller.data.svc".to_string(),
            "prod-gateway.data.svc".to_string(),
        ];
        let cert = der(&ca
            .issue("prod", &hosts, Usage::Peer, Validity::days(1))
            .unwrap()
            .cert);
        assert_eq!(certificate_name(&cert).as_deref(), Some("prod"));
        assert!(certificate_covers(
            &cert,
            "prod-controller-0.prod-controller.data.svc"
        ));
        assert!(certificate_covers(&cert, "prod-gateway.data.svc"));
        assert!(!certificate_covers(
            &cert,
            "prod-storage-0.prod-storage.data.svc"
        ));
        assert!(!certificate_covers(&cert, "a.b.prod-controller.data.svc"));
        assert!(!certificate_covers(
            b"not a certificate",
            "prod-gateway.data.svc"
        ));
    }
}
