//! The rustls config of each TLS-terminating Gateway server (HTTPS, and TLS servers
//! that terminate), built once from its `credentialName` Secret (or file paths), with
//! the server's client certificate policy (SIMPLE / MUTUAL / OPTIONAL_MUTUAL +
//! `subjectAltNames`), protocol versions and cipher suites.
//!
//! Nothing stops at the first problem: every certificate, key, CA and CRL of every
//! server is read, and each problem is reported where it is written: the Secret's data
//! key for its contents, the Gateway's `tls` field for a file path or a setting. A
//! Secret shared by several servers is reported once, naming them all.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig,
    client::VerifierBuilderError,
    pki_types::CertificateRevocationListDer,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::{CertifiedKey, SingleCertAndKey},
};

use super::tls::{
    SanVerifier, certs, crls_of, find_secret, key_of, protocol_versions, provider_for,
};
use crate::config::{
    ConfigError, Loc, Origin, Secret, ServerRef, TlsMode, istio::ServerTlsSettings,
};

/// The problems found while building the TLS configs: by where and what, with the
/// servers each one stops.
#[derive(Debug, Default)]
pub struct Problems {
    by: BTreeMap<(Loc, String), BTreeSet<String>>,
    /// Every push, a repeat too: whether one server had a problem is a change of it.
    pushed: usize,
}

impl Problems {
    /// `what` is wrong at `loc`, which leaves `server` (or cluster) without TLS.
    pub(crate) fn push(&mut self, loc: Loc, what: String, server: &str) {
        self.pushed += 1;
        self.by
            .entry((loc, what))
            .or_default()
            .insert(server.to_string());
    }

    /// How many problems were pushed so far (repeats included).
    pub(crate) fn pushed(&self) -> usize {
        self.pushed
    }

    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }

    /// One error per problem, sorted by file then position, saying which servers it
    /// leaves without TLS.
    pub fn into_errors(self) -> Vec<ConfigError> {
        self.by
            .into_iter()
            .map(|((loc, what), servers)| ConfigError {
                loc,
                message: format!(
                    "{what}; the TLS of {} cannot be set up",
                    servers.into_iter().collect::<Vec<_>>().join(", ")
                ),
            })
            .collect()
    }
}

/// Where a piece of material is written. Looked up only for an error: the first
/// position asked of a document indexes it, which costs a YAML parse of it.
#[derive(Clone, Copy)]
pub(crate) enum Where<'a> {
    /// A data key of a Secret.
    Key(&'a Secret, &'a str),
    /// A field below a part of the config (`tls.caCrl` of a Gateway server).
    Field(&'a Origin, &'static str),
}

impl Where<'_> {
    pub(crate) fn loc(&self) -> Loc {
        match self {
            Where::Key(s, k) => s.key_loc(k),
            Where::Field(o, f) => o.loc(f),
        }
    }
}

/// A piece of key material and where it is written.
struct Pem<'a> {
    bytes: &'a [u8],
    at: Where<'a>,
    /// How a message names it: `Secret istio-system/cred tls.crt`, `serverCertificate
    /// /etc/certs/a.pem`.
    what: String,
}

impl Pem<'_> {
    fn loc(&self) -> Loc {
        self.at.loc()
    }
}

/// The rustls config of one TLS-terminating server on `port`, or None with its
/// problems in `problems`. `secrets` are the snapshot's (`namespace/name` keys);
/// `namespace` is the gateway's own, where Istio looks `credentialName` up.
pub fn server_config(
    server: &ServerRef,
    port: u16,
    secrets: &BTreeMap<String, Secret>,
    namespace: &str,
    problems: &mut Problems,
) -> Option<Arc<ServerConfig>> {
    let who = match &server.name {
        Some(name) => format!("gateway {} server {name} (port {port})", server.gateway),
        None => format!(
            "gateway {} servers[{}] (port {port})",
            server.gateway, server.index
        ),
    };
    let at = |field: &str| server.origin.loc(field);
    let Some(tls) = server.tls.as_ref() else {
        problems.push(
            at(""),
            "TLS-terminating server without tls settings".into(),
            &who,
        );
        return None;
    };
    let before = problems.pushed();
    let mut fail = |loc: Loc, what: String| problems.push(loc, what, &who);
    let mode = tls.mode.unwrap_or_default();
    let mutual = matches!(mode, TlsMode::Mutual | TlsMode::OptionalMutual);

    // The settings (config validation reports them too, with the same check).
    let versions = protocol_versions(tls)
        .map_err(|e| {
            let field = if e.starts_with("maxProtocolVersion") {
                "tls.maxProtocolVersion"
            } else {
                "tls.minProtocolVersion"
            };
            fail(at(field), e)
        })
        .ok();
    let provider = provider_for(tls)
        .map_err(|e| fail(at("tls.cipherSuites"), e))
        .ok()
        .map(Arc::new);

    // The material, each piece read whatever became of the others.
    let from_secret = material(tls, secrets, namespace, mutual, &at, &mut fail);
    let files = FileMaterial::read(
        tls,
        mutual,
        from_secret.as_ref().map(|m| m.3.is_some()),
        &server.origin,
        &mut fail,
    );
    let (cert, key, ca, crl) = from_secret.unwrap_or_else(|| files.pems());
    let crl = crl.or_else(|| files.get("tls.caCrl"));
    // Each parsed piece with the Pem it came from, for the messages below.
    let chain = cert.as_ref().and_then(|p| {
        certs(p.bytes, &p.what)
            .map_err(|e| fail(p.loc(), e))
            .ok()
            .map(|c| (c, p))
    });
    let key_der = key.as_ref().and_then(|p| {
        key_of(p.bytes, &p.what)
            .map_err(|e| fail(p.loc(), e))
            .ok()
            .map(|k| (k, p))
    });
    let roots = ca.as_ref().and_then(|p| {
        let list = certs(p.bytes, &p.what).map_err(|e| fail(p.loc(), e)).ok()?;
        let mut roots = RootCertStore::empty();
        for c in list {
            if let Err(e) = roots.add(c) {
                fail(p.loc(), format!("{}: bad CA certificate: {e}", p.what));
                return None;
            }
        }
        Some((roots, p))
    });
    let crls: Option<Vec<CertificateRevocationListDer<'static>>> = match &crl {
        Some(p) => crls_of(p.bytes, &p.what).map_err(|e| fail(p.loc(), e)).ok(),
        None => Some(Vec::new()),
    };
    // The key, and that it is the certificate's.
    let signer = match (&provider, key_der) {
        (Some(provider), Some((k, p))) => provider
            .key_provider
            .load_private_key(k)
            .map_err(|e| fail(p.loc(), format!("{}: unusable private key: {e}", p.what)))
            .ok()
            .map(|s| (s, p)),
        _ => None,
    };
    let certified = match (chain, signer) {
        (Some((chain, c)), Some((signer, k))) => {
            let ck = CertifiedKey::new(chain, signer);
            match ck.keys_match() {
                // Unknown: the key type cannot say; rustls accepts that too.
                Ok(())
                | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                    Some(ck)
                }
                Err(rustls::Error::InconsistentKeys(_)) => {
                    fail(
                        k.loc(),
                        format!(
                            "{}: the private key is not the one of the certificate ({})",
                            k.what, c.what
                        ),
                    );
                    None
                }
                Err(e) => {
                    fail(c.loc(), format!("{}: bad certificate: {e}", c.what));
                    None
                }
            }
        }
        _ => None,
    };
    // The client-certificate verifier of MUTUAL / OPTIONAL_MUTUAL.
    let verifier: Option<Option<Arc<dyn ClientCertVerifier>>> = if !mutual {
        Some(None)
    } else if ca.is_none() {
        // A missing Secret is the one problem: no "needs a CA" after it.
        let no_secret = tls.credential_name.as_deref().is_some_and(|c| {
            find_secret(
                secrets,
                namespace,
                c.strip_prefix("kubernetes://").unwrap_or(c),
            )
            .is_none()
        });
        if no_secret {
            return None;
        }
        fail(
            at(if tls.credential_name.is_some() {
                "tls.credentialName"
            } else {
                "tls"
            }),
            format!(
                "{} TLS needs a CA: `ca.crt` or `cacert` in the credential Secret, a `<credentialName>-cacert` Secret, or caCertificates",
                mode_name(mode)
            ),
        );
        None
    } else {
        match (roots, crls, &provider) {
            (Some((roots, ca)), Some(crls), Some(provider)) => {
                // With CRLs, rustls checks every certificate of the chain and refuses
                // one whose issuer has no CRL, as Envoy's `crl`
                // (X509_V_FLAG_CRL_CHECK_ALL).
                let mut v =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .with_crls(crls);
                if mode == TlsMode::OptionalMutual {
                    v = v.allow_unauthenticated();
                }
                match v.build() {
                    Ok(inner) if tls.subject_alt_names.is_empty() => Some(Some(inner)),
                    Ok(inner) => Some(Some(Arc::new(SanVerifier {
                        inner,
                        allowed: tls.subject_alt_names.clone(),
                    }))),
                    Err(e) => {
                        let p = match (&e, &crl) {
                            (VerifierBuilderError::InvalidCrl(_), Some(p)) => p,
                            _ => ca,
                        };
                        fail(p.loc(), format!("{}: {e}", p.what));
                        None
                    }
                }
            }
            _ => None,
        }
    };
    if problems.pushed() > before {
        return None;
    }
    let (Some(provider), Some(versions), Some(certified), Some(verifier)) =
        (provider, versions, certified, verifier)
    else {
        return None;
    };
    let builder =
        match ServerConfig::builder_with_provider(provider).with_protocol_versions(&versions) {
            Ok(b) => b,
            Err(e) => {
                problems.push(at("tls"), e.to_string(), &who);
                return None;
            }
        };
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    // Istio's HTTPS servers offer h2 and http/1.1, and so do its TLS-terminating TCP
    // servers (listener.go `BuildListenerTLSContext`: `util.ALPNHttp` unless QUIC or
    // ISTIO_MUTUAL).
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(Arc::new(cfg))
}

type Pems<'a> = (
    Option<Pem<'a>>,
    Option<Pem<'a>>,
    Option<Pem<'a>>,
    Option<Pem<'a>>,
);

/// Certificate, key, CA (MUTUAL) and CRL (MUTUAL) from the `credentialName` Secret;
/// None when the server has no `credentialName`.
fn material<'a>(
    tls: &ServerTlsSettings,
    secrets: &'a BTreeMap<String, Secret>,
    namespace: &str,
    mutual: bool,
    at: &dyn Fn(&str) -> Loc,
    fail: &mut dyn FnMut(Loc, String),
) -> Option<Pems<'a>> {
    let cred = tls.credential_name.as_deref()?;
    let name = cred.strip_prefix("kubernetes://").unwrap_or(cred);
    let Some(secret) = find_secret(secrets, namespace, name) else {
        fail(
            at("tls.credentialName"),
            format!("credential {cred:?}: no Secret {name:?} in namespace {namespace:?}"),
        );
        return Some((None, None, None, None));
    };
    let pem = |s: &'a Secret, keys: &[&str]| {
        keys.iter().find_map(|k| {
            s.data.get_key_value(*k).map(|(k, v)| Pem {
                bytes: v,
                at: Where::Key(s, k),
                what: format!("Secret {} {k}", s.name),
            })
        })
    };
    let mut required = |keys: &[&str]| {
        let found = pem(secret, keys);
        if found.is_none() {
            fail(
                secret.origin.loc("data"),
                format!("Secret {} has no {} (or {})", secret.name, keys[0], keys[1]),
            );
        }
        found
    };
    let cert = required(&["tls.crt", "cert"]);
    let key = required(&["tls.key", "key"]);
    if !mutual {
        return Some((cert, key, None, None));
    }
    // Istio: `ca.crt`/`cacert` in the same Secret, else `<name>-cacert`.
    let ca = pem(secret, &["ca.crt", "cacert"]).or_else(|| {
        find_secret(secrets, namespace, &format!("{name}-cacert"))
            .and_then(|s| pem(s, &["ca.crt", "cacert"]))
    });
    // Istio's secret controller reads a CRL from `ca.crl` (kubernetes.io/tls) or `crl`
    // (generic) next to the CA (pilot/pkg/credentials/kube/secrets.go `TLSSecretCrl`,
    // `GenericScrtCRL`); `caCrl` (a file) when the Secret has none: read by the caller.
    let crl = pem(secret, &["ca.crl", "crl"]);
    Some((cert, key, ca, crl))
}

/// Istio's legacy file-mounted certificates (and `caCrl`, also read beside a Secret
/// without a CRL), read up front.
struct FileMaterial<'a> {
    /// (field, path, contents)
    files: Vec<(&'static str, String, Vec<u8>)>,
    /// The server, where the fields are written.
    server: &'a Origin,
}

impl<'a> FileMaterial<'a> {
    /// `secret`: None when the server names no `credentialName` (every file is read),
    /// else whether its Secret has a CRL (if not, `caCrl` is read).
    fn read(
        tls: &ServerTlsSettings,
        mutual: bool,
        secret: Option<bool>,
        server: &'a Origin,
        fail: &mut dyn FnMut(Loc, String),
    ) -> FileMaterial<'a> {
        let mut files = Vec::new();
        let files_only = secret.is_none();
        if files_only && (tls.server_certificate.is_none() || tls.private_key.is_none()) {
            fail(
                server.loc("tls"),
                "needs credentialName, or serverCertificate and privateKey".into(),
            );
        }
        let fields = [
            ("tls.serverCertificate", &tls.server_certificate, files_only),
            ("tls.privateKey", &tls.private_key, files_only),
            (
                "tls.caCertificates",
                &tls.ca_certificates,
                files_only && mutual,
            ),
            ("tls.caCrl", &tls.ca_crl, mutual && secret != Some(true)),
        ];
        for (field, path, wanted) in fields {
            let (Some(path), true) = (path, wanted) else {
                continue;
            };
            match std::fs::read(path) {
                Ok(bytes) => files.push((field, path.clone(), bytes)),
                Err(e) => fail(
                    server.loc(field),
                    format!("{}: cannot read {path}: {e}", &field[4..]),
                ),
            }
        }
        FileMaterial { files, server }
    }

    fn get(&self, field: &str) -> Option<Pem<'_>> {
        self.files
            .iter()
            .find(|(f, ..)| *f == field)
            .map(|(f, path, bytes)| Pem {
                bytes,
                at: Where::Field(self.server, f),
                what: format!("{} {path}", &f[4..]),
            })
    }

    fn pems(&self) -> Pems<'_> {
        (
            self.get("tls.serverCertificate"),
            self.get("tls.privateKey"),
            self.get("tls.caCertificates"),
            self.get("tls.caCrl"),
        )
    }
}

/// Istio's spelling of a mode, for messages.
fn mode_name(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Mutual => "MUTUAL",
        TlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
        _ => "SIMPLE",
    }
}

#[cfg(test)]
mod tests;
