//! Who a certificate names, and what it is valid for: the gateway's
//! principal of a client certificate, and the operator's checks of the
//! certificates it mounts into a cluster's pods.

use rustls::pki_types::{CertificateDer, ServerName};

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
