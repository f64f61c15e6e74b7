//! Validation of a DestinationRule's `tls` (Istio `ClientTLSSettings`): what Istio
//! rejects is an error here too, plus what this gateway cannot do (ISTIO_MUTUAL, no
//! trust store). The TLS client itself is built per cluster in `http::upstream_tls`.

use super::ConfigError;
use super::destination_rule::{ClientTlsMode, ClientTlsSettings, DestinationRule};
use super::parse::Entry;

pub(crate) fn check(
    tls: &ClientTlsSettings,
    at: &str,
    e: &Entry<DestinationRule>,
    errors: &mut Vec<ConfigError>,
) {
    let mut err = |field: &str, msg: String| {
        let path = if field.is_empty() {
            at.to_string()
        } else {
            format!("{at}.{field}")
        };
        errors.push(e.src.error(&path, msg));
    };
    match tls.mode {
        ClientTlsMode::Disable => return,
        ClientTlsMode::IstioMutual => {
            return err(
                "mode",
                "ISTIO_MUTUAL needs the mesh's workload certificates (issued by istiod); this gateway has none: use MUTUAL with credentialName, or clientCertificate and privateKey".into(),
            );
        }
        ClientTlsMode::Simple | ClientTlsMode::Mutual => {}
    }
    if tls.credential_name.is_some() {
        // Istio's validateTLS: "cannot specify client certificates or CA certificate
        // If credentialName is set".
        for (field, set) in [
            ("clientCertificate", tls.client_certificate.is_some()),
            ("privateKey", tls.private_key.is_some()),
            ("caCertificates", tls.ca_certificates.is_some()),
        ] {
            if set {
                err(
                    field,
                    format!("{field} cannot be set with credentialName (the Secret supplies it)"),
                );
            }
        }
    } else if tls.mode == ClientTlsMode::Mutual {
        if tls.client_certificate.is_none() {
            err(
                "",
                "MUTUAL needs credentialName, or clientCertificate and privateKey (client certificate required for mutual tls)".into(),
            );
        }
        if tls.private_key.is_none() {
            err(
                "",
                "MUTUAL needs credentialName, or clientCertificate and privateKey (private key required for mutual tls)".into(),
            );
        }
    }
    let read = |path: &str| std::fs::read(path).map_err(|x| format!("cannot read {path}: {x}"));
    if let Some(p) = &tls.client_certificate
        && let Err(m) = read(p).and_then(|b| super::pem::certs(&b, p).map(drop))
    {
        err("clientCertificate", m);
    }
    if let Some(p) = &tls.private_key
        && let Err(m) = read(p).and_then(|b| super::pem::key_of(&b, p).map(drop))
    {
        err("privateKey", m);
    }
    if let Some(p) = &tls.ca_certificates
        && let Err(m) = read(p).and_then(|b| super::pem::certs(&b, p).map(drop))
    {
        err("caCertificates", m);
    }
    let insecure = tls.insecure_skip_verify == Some(true);
    if !insecure && tls.ca_certificates.is_none() && tls.credential_name.is_none() {
        // Istio (Envoy) would verify against the system's roots; this gateway has no
        // trust store of its own.
        err(
            "",
            "the server certificate cannot be verified: set caCertificates (or a credentialName Secret with ca.crt), or insecureSkipVerify: true; this gateway does not use the system's root certificates".into(),
        );
    }
    if let Some(sni) = &tls.sni
        && rustls::pki_types::ServerName::try_from(sni.as_str()).is_err()
    {
        err("sni", format!("invalid sni \"{sni}\""));
    }
}

#[cfg(test)]
mod tests;
