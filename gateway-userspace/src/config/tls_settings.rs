//! A Gateway server's `tls` protocol versions and cipher suites as this gateway can
//! serve them (rustls: TLS 1.2 and 1.3, the ECDHE AEAD suites). Validation refuses what
//! rustls cannot do, with the field, rather than silently narrowing it; the server
//! configs are built from the same functions ([`crate::plan::tls_server`]).
use rustls::{
    SupportedCipherSuite, SupportedProtocolVersion,
    crypto::{CryptoProvider, ring},
};

use super::istio::ServerTlsSettings;

fn version_rank(field: &str, v: &str) -> Result<Option<u8>, String> {
    Ok(match v {
        "TLS_AUTO" => None,
        "TLSV1_0" => Some(0),
        "TLSV1_1" => Some(1),
        "TLSV1_2" => Some(2),
        "TLSV1_3" => Some(3),
        other => {
            return Err(format!(
                "{field}: unknown TLS protocol version {other:?} (expected TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2 or TLSV1_3)"
            ));
        }
    })
}

/// `minProtocolVersion` (default TLSV1_2, as Istio's gateways) and
/// `maxProtocolVersion` (default TLSV1_3). rustls speaks only TLS 1.2 and 1.3, so
/// asking for 1.0 or 1.1 is refused rather than silently narrowed.
pub fn protocol_versions(
    tls: &ServerTlsSettings,
) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let min = match tls.min_protocol_version.as_deref() {
        Some(v) => version_rank("minProtocolVersion", v)?.unwrap_or(2),
        None => 2,
    };
    let max = match tls.max_protocol_version.as_deref() {
        Some(v) => version_rank("maxProtocolVersion", v)?.unwrap_or(3),
        None => 3,
    };
    for (field, v) in [("minProtocolVersion", min), ("maxProtocolVersion", max)] {
        if v < 2 {
            return Err(format!(
                "{field} TLSV1_{v} is not supported: this gateway's TLS (rustls) offers only TLSV1_2 and TLSV1_3"
            ));
        }
    }
    if min > max {
        return Err(format!(
            "minProtocolVersion TLSV1_{min} is above maxProtocolVersion TLSV1_{max}"
        ));
    }
    let mut out = Vec::new();
    if max >= 3 {
        out.push(&rustls::version::TLS13);
    }
    if min <= 2 {
        out.push(&rustls::version::TLS12);
    }
    Ok(out)
}

/// TLS 1.2 suites rustls (ring) can offer, by their OpenSSL/Envoy and IANA names.
fn tls12_suite(name: &str) -> Option<SupportedCipherSuite> {
    use ring::cipher_suite as cs;
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" | "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        }
        "ECDHE-ECDSA-AES256-GCM-SHA384" | "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        }
        "ECDHE-ECDSA-CHACHA20-POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "ECDHE-RSA-AES128-GCM-SHA256" | "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        }
        "ECDHE-RSA-AES256-GCM-SHA384" | "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => {
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        }
        "ECDHE-RSA-CHACHA20-POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// TLS 1.3 suite names: Envoy (BoringSSL) does not let `cipherSuites` restrict TLS 1.3,
/// so they are accepted and all TLS 1.3 suites stay on.
fn is_tls13_suite(name: &str) -> bool {
    matches!(
        name,
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256"
    )
}

/// The crypto provider for a server: ring, with `cipherSuites` (Envoy's syntax,
/// including `[A|B]` equal-preference groups) restricting the TLS 1.2 suites.
pub fn provider_for(tls: &ServerTlsSettings) -> Result<CryptoProvider, String> {
    let mut provider = ring::default_provider();
    if tls.cipher_suites.is_empty() {
        return Ok(provider);
    }
    let mut tls12 = Vec::new();
    let mut unsupported = Vec::new();
    for written in &tls.cipher_suites {
        for name in written
            .trim_matches(|c| c == '[' || c == ']')
            .split('|')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            match tls12_suite(name) {
                Some(s) => {
                    if !tls12.contains(&s) {
                        tls12.push(s)
                    }
                }
                None if is_tls13_suite(name) => {}
                None => unsupported.push(name.to_string()),
            }
        }
    }
    if !unsupported.is_empty() {
        return Err(format!(
            "cipherSuites {unsupported:?} cannot be offered by this gateway's TLS (rustls); supported TLS 1.2 suites: ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-ECDSA-CHACHA20-POLY1305, ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-AES256-GCM-SHA384, ECDHE-RSA-CHACHA20-POLY1305 (TLS 1.3 suites are always on)"
        ));
    }
    let mut suites: Vec<SupportedCipherSuite> = provider
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .collect();
    suites.extend(tls12);
    provider.cipher_suites = suites;
    Ok(provider)
}

/// Checks the TLS settings of a terminating server that the config loader can reject
/// up front: returns the offending field (`minProtocolVersion`, `maxProtocolVersion`,
/// `cipherSuites`) and the message.
pub fn check_settings(tls: &ServerTlsSettings) -> Result<(), (&'static str, String)> {
    protocol_versions(tls).map_err(|e| {
        let field = if e.starts_with("maxProtocolVersion") {
            "maxProtocolVersion"
        } else {
            "minProtocolVersion"
        };
        (field, e)
    })?;
    provider_for(tls).map_err(|e| ("cipherSuites", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: Option<&str>, max: Option<&str>, suites: &[&str]) -> ServerTlsSettings {
        ServerTlsSettings {
            min_protocol_version: min.map(str::to_string),
            max_protocol_version: max.map(str::to_string),
            cipher_suites: suites.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn versions_default_to_tls12_and_13() {
        let v = protocol_versions(&settings(None, None, &[])).unwrap();
        assert_eq!(v.len(), 2);
        let v = protocol_versions(&settings(Some("TLSV1_3"), None, &[])).unwrap();
        assert_eq!(v, vec![&rustls::version::TLS13]);
        let v = protocol_versions(&settings(None, Some("TLSV1_2"), &[])).unwrap();
        assert_eq!(v, vec![&rustls::version::TLS12]);
        let v = protocol_versions(&settings(Some("TLS_AUTO"), Some("TLS_AUTO"), &[])).unwrap();
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn versions_rustls_cannot_offer_are_refused() {
        let e = protocol_versions(&settings(Some("TLSV1_0"), None, &[])).unwrap_err();
        assert!(e.contains("TLSV1_0 is not supported"), "{e}");
        let e = protocol_versions(&settings(None, Some("TLSV1_1"), &[])).unwrap_err();
        assert!(e.contains("maxProtocolVersion TLSV1_1"), "{e}");
        let e = protocol_versions(&settings(Some("TLSV1_3"), Some("TLSV1_2"), &[])).unwrap_err();
        assert!(e.contains("above"), "{e}");
        let e = protocol_versions(&settings(Some("SSLV3"), None, &[])).unwrap_err();
        assert!(e.starts_with("minProtocolVersion: unknown"), "{e}");
        let (field, _) = check_settings(&settings(None, Some("TLSV1_0"), &[])).unwrap_err();
        assert_eq!(field, "maxProtocolVersion");
        let (field, _) = check_settings(&settings(None, None, &["DES-CBC3-SHA"])).unwrap_err();
        assert_eq!(field, "cipherSuites");
        assert!(
            check_settings(&settings(
                Some("TLSV1_2"),
                None,
                &["ECDHE-RSA-AES128-GCM-SHA256"]
            ))
            .is_ok()
        );
    }

    #[test]
    fn cipher_suites_restrict_tls12_and_refuse_unknown() {
        let p = provider_for(&settings(
            None,
            None,
            &[
                "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
                "TLS_AES_128_GCM_SHA256",
            ],
        ))
        .unwrap();
        let tls12: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            tls12,
            [
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert_eq!(
            p.cipher_suites
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS13)
                .count(),
            3
        );
        let e = provider_for(&settings(
            None,
            None,
            &["AES128-SHA", "ECDHE-RSA-AES128-GCM-SHA256"],
        ))
        .unwrap_err();
        assert!(
            e.contains("[\"AES128-SHA\"]") && e.contains("supported"),
            "{e}"
        );
    }
}
