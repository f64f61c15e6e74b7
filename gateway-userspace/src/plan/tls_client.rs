//! The rustls client config of each cluster that originates TLS (DestinationRule `tls`
//! SIMPLE or MUTUAL), for HTTP routes (http::upstream_tls) and TCP routes
//! (proxy::tls_origin), built once per config as Envoy's `UpstreamTlsContext` from
//! Istio (pilot/pkg/networking/core/cluster_tls.go); see http::upstream_tls for what
//! is verified. Every problem is collected with where it is written: the Secret's data
//! key for its contents, the DestinationRule's `tls` field for a file or a setting.
use std::{borrow::Cow, sync::Arc};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
};

use super::tls_server::{Problems, Where};
use crate::config::{
    Loc, Secret, Snapshot,
    destination_rule::{ClientTlsMode, ClientTlsSettings},
    snapshot::Cluster,
};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A config whose verifier refuses every certificate.
pub(crate) fn reject_all() -> rustls::ClientConfig {
    config(Verifier::reject_all(), None).expect("no client certificate to refuse")
}

fn config(
    verifier: Verifier,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, String> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    match client {
        Some((chain, key)) => b
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate/key: {e}")),
        None => Ok(b.with_no_client_auth()),
    }
}

/// The rustls client config and SNI of a cluster that originates TLS (HTTP routes
/// here, TCP routes in proxy::tls_origin), or why not: every problem with where it is
/// written, in one line (for the log and the `UF` access-log reason).
pub(crate) fn client_config(
    t: &ClientTlsSettings,
    c: &Cluster,
    snap: &Snapshot,
) -> Result<(rustls::ClientConfig, ServerName<'static>), String> {
    let mut problems = Problems::default();
    client_config_into(t, c, snap, &mut problems).ok_or_else(|| {
        problems
            .into_errors()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Every problem of the TLS origination of every cluster, with where it is written
/// (the Secret's data key, the DestinationRule's `tls` field), sorted. `gateway run`
/// serves without such a cluster (its requests fail closed, 503 `UF`, as Envoy's
/// cluster waits for a secret that does not load); `gateway validate` reports them.
pub fn problems(snap: &Snapshot) -> Vec<crate::config::ConfigError> {
    let mut problems = Problems::default();
    for c in snap.clusters.values() {
        if let Some(t) = &c.tls {
            client_config_into(t, c, snap, &mut problems);
        }
    }
    problems.into_errors()
}

/// [`client_config`], its problems added to `problems`.
fn client_config_into(
    t: &ClientTlsSettings,
    c: &Cluster,
    snap: &Snapshot,
    problems: &mut Problems,
) -> Option<(rustls::ClientConfig, ServerName<'static>)> {
    use crate::plan::tls::{certs, crls_of, find_secret, key_of};
    let who = format!("cluster {}", c.name);
    let before = problems.pushed();
    let mut fail = |loc: Loc, what: String| problems.push(loc, what, &who);
    let at = |field: &str| c.tls_at.loc(field);
    let sni_name = t.sni.clone().unwrap_or_else(|| c.host.clone());
    let sni = ServerName::try_from(sni_name.clone())
        .map_err(|_| {
            fail(
                at("sni"),
                format!("SNI \"{sni_name}\" is not a valid server name"),
            )
        })
        .ok();
    // (bytes, where, how a message names it) of each piece of material.
    // Where is looked up only for an error (indexing a document costs a YAML parse).
    type Pem<'a> = (Cow<'a, [u8]>, Where<'a>, String);
    let read = |field: &'static str, p: &str, fail: &mut dyn FnMut(Loc, String)| {
        std::fs::read(p)
            .map_err(|e| fail(at(field), format!("{field}: cannot read {p}: {e}")))
            .ok()
            .map(|b| -> Pem<'_> {
                (
                    Cow::Owned(b),
                    Where::Field(&c.tls_at, field),
                    format!("{field} {p}"),
                )
            })
    };
    let (mut ca, mut crl, mut cert, mut key): (Option<Pem>, Option<Pem>, Option<Pem>, Option<Pem>) =
        (None, None, None, None);
    // A missing Secret is the one problem: no "no CA" after it.
    let mut no_secret = t.credential_name.is_some();
    if let Some(cred) = &t.credential_name {
        let name = cred.strip_prefix("kubernetes://").unwrap_or(cred);
        match find_secret(&snap.secrets, &snap.namespace, name) {
            None => fail(
                at("credentialName"),
                format!(
                    "credentialName \"{cred}\": no Secret \"{name}\" in namespace \"{}\"",
                    snap.namespace
                ),
            ),
            Some(secret) => {
                no_secret = false;
                fn pem<'a>(s: &'a Secret, keys: &[&str]) -> Option<Pem<'a>> {
                    keys.iter().find_map(|k| {
                        s.data.get_key_value(*k).map(|(k, v)| {
                            let what = format!("Secret {} {k}", s.name);
                            (Cow::Borrowed(v.as_slice()), Where::Key(s, k), what)
                        })
                    })
                }
                // Istio: `ca.crt`/`cacert` in the Secret, else a `<name>-cacert` Secret.
                ca = pem(secret, &["ca.crt", "cacert"]).or_else(|| {
                    find_secret(&snap.secrets, &snap.namespace, &format!("{name}-cacert"))
                        .and_then(|s| pem(s, &["ca.crt", "cacert"]))
                });
                // The Secret's CRL (Istio's `ca.crl` / `crl` keys, as for Gateway servers).
                crl = pem(secret, &["ca.crl", "crl"]);
                if t.mode == ClientTlsMode::Mutual {
                    for (slot, keys) in [
                        (&mut cert, ["tls.crt", "cert"]),
                        (&mut key, ["tls.key", "key"]),
                    ] {
                        *slot = pem(secret, &keys);
                        if slot.is_none() {
                            fail(
                                secret.origin.loc("data"),
                                format!(
                                    "Secret {} has no {} (or {})",
                                    secret.name, keys[0], keys[1]
                                ),
                            );
                        }
                    }
                }
            }
        }
    } else {
        if let Some(p) = &t.ca_certificates {
            ca = read("caCertificates", p, &mut fail);
        }
        if t.mode == ClientTlsMode::Mutual
            && let (Some(crt), Some(k)) = (&t.client_certificate, &t.private_key)
        {
            cert = read("clientCertificate", crt, &mut fail);
            key = read("privateKey", k, &mut fail);
        }
    }
    // `caCrl` (a PEM file) when no Secret gave one: Envoy's `crl` in the validation
    // context; the whole chain is checked, an issuer without a CRL refused.
    if crl.is_none()
        && let Some(p) = &t.ca_crl
    {
        crl = read("caCrl", p, &mut fail);
    }
    let parsed = |pem: &Option<Pem>, fail: &mut dyn FnMut(Loc, String)| {
        pem.as_ref()
            .and_then(|(b, at, what)| certs(b, what).map_err(|e| fail(at.loc(), e)).ok())
    };
    let chain = parsed(&cert, &mut fail);
    let key_der = key
        .as_ref()
        .and_then(|(b, at, what)| key_of(b, what).map_err(|e| fail(at.loc(), e)).ok());
    let client = chain.zip(key_der);
    let crls = match &crl {
        Some((b, at, what)) => crls_of(b, what).map_err(|e| fail(at.loc(), e)).ok(),
        None => Some(Vec::new()),
    };
    let verifier = if t.insecure_skip_verify == Some(true) {
        Some(Verifier::insecure())
    } else if no_secret {
        None
    } else if let Some((_, ca_loc, ca_what)) = &ca {
        let roots = parsed(&ca, &mut fail).and_then(|list| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in list {
                if let Err(e) = roots.add(cert) {
                    fail(ca_loc.loc(), format!("{ca_what}: bad CA certificate: {e}"));
                    return None;
                }
            }
            Some(roots)
        });
        let sans = t
            .subject_alt_names
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                ServerName::try_from(s.clone())
                    .map_err(|_| {
                        fail(
                            at(&format!("subjectAltNames[{i}]")),
                            format!("subjectAltNames \"{s}\" is not a DNS name or IP address"),
                        )
                    })
                    .ok()
            })
            .collect::<Vec<_>>();
        match (roots, crls) {
            (Some(roots), Some(crls)) => {
                match rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .with_crls(crls)
                .build()
                {
                    Ok(inner) => Some(Verifier {
                        inner: Some(inner),
                        sans,
                        insecure: false,
                    }),
                    Err(e) => {
                        let (loc, what) = match (&e, &crl) {
                            (
                                rustls::client::VerifierBuilderError::InvalidCrl(_),
                                Some((_, l, w)),
                            ) => (l, w),
                            _ => (ca_loc, ca_what),
                        };
                        fail(loc.loc(), format!("{what}: {e}"));
                        None
                    }
                }
            }
            _ => None,
        }
    } else {
        fail(
            at(if t.credential_name.is_some() { "credentialName" } else { "" }),
            "no CA to verify the server certificate with (caCertificates, or ca.crt in the credentialName Secret)".into(),
        );
        None
    };
    let needs_client = t.mode == ClientTlsMode::Mutual;
    if problems.pushed() > before {
        return None;
    }
    let (Some(sni), Some(verifier)) = (sni, verifier) else {
        return None;
    };
    if needs_client && client.is_none() {
        // Config validation requires the client certificate of MUTUAL.
        problems.push(
            at(""),
            "MUTUAL needs a client certificate and key".into(),
            &who,
        );
        return None;
    }
    // ALPN is set by the connector (`http/1.1`).
    match config(verifier, client) {
        Ok(cfg) => Some((cfg, sni)),
        Err(e) => {
            let (loc, what) = key.as_ref().map_or((at(""), String::new()), |(_, l, w)| {
                (l.loc(), format!("{w}: "))
            });
            problems.push(loc, format!("{what}{e}"), &who);
            None
        }
    }
}

/// Verifies the server's certificate: the chain by `inner`, the name against the SANs
/// (any of them) if given, else against the SNI.
#[derive(Debug)]
struct Verifier {
    /// None and not insecure: refuses every certificate.
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    sans: Vec<ServerName<'static>>,
    insecure: bool,
}

impl Verifier {
    fn reject_all() -> Verifier {
        Verifier {
            inner: None,
            sans: Vec::new(),
            insecure: false,
        }
    }

    fn insecure() -> Verifier {
        Verifier {
            inner: None,
            sans: Vec::new(),
            insecure: true,
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(inner) = &self.inner else {
            return Err(rustls::Error::General(
                "no TLS origination configured".into(),
            ));
        };
        if self.sans.is_empty() {
            return inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        }
        // Envoy's `match_typed_subject_alt_names`: any of the names. The chain is checked
        // with each; a failure other than the name ends the check.
        for san in &self.sans {
            match inner.verify_server_cert(end_entity, intermediates, san, ocsp, now) {
                Ok(v) => return Ok(v),
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
        Err(rustls::Error::General(format!(
            "the server certificate matches none of subjectAltNames {:?}",
            self.sans
                .iter()
                .map(|s| s.to_str().into_owned())
                .collect::<Vec<_>>()
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
