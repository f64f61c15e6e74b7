//! TLS pieces of the HTTPS-terminating Gateway servers: the `subjectAltNames` client
//! verifier, `x-forwarded-client-cert` (PEM reading and versions/suites are the config's:
//! [`crate::config::pem`], [`crate::config::tls_settings`]).
//! Each server gets its own rustls config (http::tls_server); the SNI picks the server
//! (routing::tls_server_for), and the connection is then handshaken with that server's
//! config, so each server keeps its own certificate *and* its own client-auth policy on
//! a shared port.
use std::{collections::BTreeMap, fmt, sync::Arc};

use rustls::{
    DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::ring,
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

use crate::config::Secret;
pub use crate::config::pem::{certs, crls_of, key_of};
pub use crate::config::tls_settings::{check_settings, protocol_versions, provider_for};

/// The Secret `name` in the gateway's namespace. Falls back to a unique Secret of
/// that name in any namespace (config validation already checked the namespace).
pub(crate) fn find_secret<'a>(
    secrets: &'a BTreeMap<String, Secret>,
    namespace: &str,
    name: &str,
) -> Option<&'a Secret> {
    if let Some(s) = secrets.get(&format!("{namespace}/{name}")) {
        return Some(s);
    }
    let mut same_name = secrets
        .values()
        .filter(|s| s.name.rsplit('/').next() == Some(name));
    match (same_name.next(), same_name.next()) {
        (Some(s), None) => Some(s),
        _ => None,
    }
}

// === client certificates ===

/// Enforces `subjectAltNames` (Envoy's `match_subject_alt_names`, exact) after the
/// chain has been verified by webpki.
pub(crate) struct SanVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) allowed: Vec<String>,
}

impl fmt::Debug for SanVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SanVerifier")
            .field("allowed", &self.allowed)
            .finish()
    }
}

/// DNS, URI, email and IP subject alternative names of a DER certificate.
pub fn subject_alt_names(der: &[u8]) -> Vec<String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                Some(s.to_string())
            }
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Envoy's `x-forwarded-client-cert` for a verified client certificate, as Istio's
/// gateways set it (SANITIZE_SET): `Hash=<sha256 hex>;Subject="...";URI=...;DNS=...`.
pub fn xfcc(der: &[u8]) -> Option<hyper::header::HeaderValue> {
    let hash = ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()?
        .common
        .hash_provider
        .hash(der);
    let mut v = format!(
        "Hash={}",
        hash.as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if let Some(s) = subject(der) {
        v.push_str(&format!(";Subject=\"{}\"", s.replace('"', "\\\"")));
    }
    for san in subject_alt_names(der) {
        let kind = if san.contains("://") { "URI" } else { "DNS" };
        v.push_str(&format!(";{kind}={san}"));
    }
    hyper::header::HeaderValue::from_str(&v).ok()
}

/// The subject DN of a DER certificate (`CN=..., O=...`), for logs.
pub fn subject(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.subject().to_string())
}

impl ClientCertVerifier for SanVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let sans = subject_alt_names(end_entity);
        if sans.iter().any(|s| self.allowed.contains(s)) {
            Ok(ok)
        } else {
            tracing::info!(target: "gateway::http", ?sans, allowed = ?self.allowed, "client certificate refused: no allowed subjectAltName");
            Err(TlsError::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
