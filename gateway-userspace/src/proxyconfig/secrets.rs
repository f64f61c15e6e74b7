//! The dump's secrets: the SDS names `kubernetes://<credentialName>` of the Plan's
//! HTTPS-terminating servers with the facts of their certificates (subject, SANs,
//! serial, validity), never key material. The certificates are read from the Secrets
//! as loaded (`Snapshot::secrets`, the bytes the servers' rustls configs were built
//! from): a built rustls `ServerConfig` does not hand its chain back.
use std::time::Duration;

use serde_json::{Value, json};

use super::envoy::T_SECRET;
use crate::config::{ServerKind, Snapshot};

fn cert_info(pem: &[u8]) -> Value {
    use x509_parser::prelude::*;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pem) else {
        return json!({ "error": "not a PEM certificate" });
    };
    let Ok((_, cert)) = X509Certificate::from_der(&pem.contents) else {
        return json!({ "error": "not an X.509 certificate" });
    };
    let v = cert.validity();
    let rfc = |t: &ASN1Time| {
        std::time::UNIX_EPOCH
            .checked_add(Duration::from_secs(t.timestamp().max(0) as u64))
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default()
    };
    json!({
        "subject": cert.subject().to_string(),
        "issuer": cert.issuer().to_string(),
        "subject_alt_names": crate::plan::tls::subject_alt_names(&pem.contents),
        // secretMetaFromCert (istioctl/pkg/writer/compare/sds/util.go): the serial as
        // fmt.Sprintf("%032x", cert.SerialNumber), CA or not, the SPIFFE trust domain.
        "serial_number": format!("{:0>32}", cert.tbs_certificate.serial.to_str_radix(16)),
        "is_ca": cert.is_ca(),
        "trust_domain": crate::plan::tls::subject_alt_names(&pem.contents)
            .iter()
            .filter_map(|u| u.strip_prefix("spiffe://"))
            .map(|u| u.split('/').next().unwrap_or_default().to_string())
            .next_back()
            .unwrap_or_default(),
        "not_before": rfc(&v.not_before),
        "not_after": rfc(&v.not_after),
        "valid": v.is_valid(),
    })
}

pub(super) fn secrets_json(snap: &Snapshot) -> Vec<Value> {
    let mut names: Vec<String> = snap
        .listeners
        .iter()
        .flat_map(|l| &l.servers)
        .filter(|s| s.kind == ServerKind::HttpsTerminate)
        .filter_map(|s| s.tls.as_ref()?.credential_name.clone())
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for n in names {
        let Some(sec) = snap.secrets.get(&format!("{}/{n}", snap.namespace)) else {
            continue;
        };
        let get = |keys: &[&str]| keys.iter().find_map(|k| sec.data.get(*k));
        if let Some(crt) = get(&["tls.crt", "cert"]) {
            let name = format!("kubernetes://{n}");
            out.push(json!({
                "name": name,
                "secret": {
                    "@type": T_SECRET,
                    "name": name,
                    "tls_certificate": {
                        "certificate_chain": cert_info(crt),
                        "private_key": { "inline_string": "[redacted]" },
                    }
                }
            }));
        }
        let ca = get(&["ca.crt", "cacert"]).or_else(|| {
            snap.secrets
                .get(&format!("{}/{n}-cacert", snap.namespace))
                .and_then(|s| s.data.get("ca.crt").or_else(|| s.data.get("cacert")))
        });
        if let Some(ca) = ca {
            let name = format!("kubernetes://{n}-cacert");
            out.push(json!({
                "name": name,
                "secret": {
                    "@type": T_SECRET,
                    "name": name,
                    "validation_context": { "trusted_ca": cert_info(ca) },
                }
            }));
        }
    }
    out
}

/// The credentials of inactive servers (their Secret does not exist), as Envoy lists an
/// SDS secret that never arrived: warming, uninitialized, no certificate (istioctl's
/// secret table shows them `WARMING`, VALID CERT false, the rest blank).
pub(super) fn warming_secrets_json(snap: &Snapshot) -> Vec<Value> {
    let mut names: Vec<&str> = snap
        .inactive
        .iter()
        .map(|s| s.credential_name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let name = format!("kubernetes://{n}");
            json!({
                "name": name,
                "secret": { "@type": T_SECRET, "name": name },
            })
        })
        .collect()
}
