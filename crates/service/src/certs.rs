//! A small certificate authority for development and tests: a CA, and
//! certificates it signs for servers and clients (`streambus tls
//! generate`). Production clusters get theirs from their own PKI
//! (cert-manager, say); StreamBus only reads PEM files.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

/// A certificate authority that signs in memory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: Pem,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A StreamBus process: server, and client of its peers.
    Peer,
    /// A client only.
    Client,
}

/// How long certificates are valid, relative to now.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Seconds before now it starts (negative: in the future).
    pub started_secs_ago: i64,
    /// Seconds from now it ends (negative: already expired).
    pub ends_in_secs: i64,
}

impl Validity {
    /// Valid from an hour ago for `days` days.
    pub fn days(days: i64) -> Validity {
        Validity {
            started_secs_ago: 3600,
            ends_in_secs: days * 86_400,
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::seconds(self.started_secs_ago);
        params.not_after = now + time::Duration::seconds(self.ends_in_secs);
    }
}

fn error(e: rcgen::Error) -> String {
    format!("cannot generate a certificate: {e}")
}

impl Ca {
    /// A new CA named `name`, with a fresh key.
    pub fn new(name: &str, validity: Validity) -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(error)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity.apply(&mut params);
        let cert = params.self_signed(&key).map_err(error)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Ca {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA's own certificate and key.
    pub fn pem(&self) -> &Pem {
        &self.pem
    }

    /// A certificate for `common_name`, valid for `hosts` (DNS names or IP
    /// addresses), signed by this CA, with a fresh key.
    pub fn issue(
        &self,
        common_name: &str,
        hosts: &[String],
        usage: Usage,
        validity: Validity,
    ) -> Result<Pem, String> {
        let key = KeyPair::generate().map_err(error)?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Peer => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        validity.apply(&mut params);
        let cert = params.signed_by(&key, &self.issuer).map_err(error)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}
