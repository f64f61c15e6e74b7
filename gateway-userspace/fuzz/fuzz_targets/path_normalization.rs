//! Request path normalization (`http::normalize`, issue 15) on arbitrary request
//! targets, in every MeshConfig `pathNormalization` mode, judged by the
//! AuthorizationPolicies of tests/fixtures/http/normalize.yaml (built once).
//!
//! Input: a request target (what hyper would refuse as a URI is skipped).
//! - nothing panics; a normalized target is a valid URI with the input's query;
//! - normalization is idempotent: the path the backend receives normalizes to itself,
//!   so the authorization decision on the request equals the decision on the request
//!   as the backend received it (checked for every host the policies name);
//! - every mode but NONE leaves no `.`/`..` segment, no `\` and no `%2e`;
//!   MERGE_SLASHES and DECODE_AND_MERGE_SLASHES leave no `//` (but in `//` itself);
//!   DECODE_AND_MERGE_SLASHES leaves no `%2F`/`%5C`;
//! - `%00` is refused in every mode.
#![no_main]

use std::{net::SocketAddr, sync::OnceLock};

use gateway::{
    authz::{Cidr, Decision, HttpAttrs, L7, Policies, PortKind, Request},
    config::{GatewayIdentity, load, mesh::PathNormalization},
    plan::normalize::{PathError, normalize_uri},
};
use hyper::{HeaderMap, Uri};
use libfuzzer_sys::fuzz_target;

const MODES: [PathNormalization; 4] = [
    PathNormalization::None,
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

const HOSTS: [&str; 3] = ["norm.test", "notpaths.test", "audit.test"];

fn policies() -> &'static Policies {
    static P: OnceLock<Policies> = OnceLock::new();
    P.get_or_init(|| {
        let f = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/http/normalize.yaml"
        );
        let snap = load(&[f.into()], &GatewayIdentity::default())
            .unwrap_or_else(|e| panic!("fixture {f} does not load:\n{e}"));
        let policies = Policies::build(&snap.resources.authorization_policies, &snap.identity);
        assert!(!policies.is_empty(), "{f}: no policies");
        policies
    })
}

fn decide(host: &str, path: &str, headers: &HeaderMap) -> Decision {
    let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    policies().decide(
        PortKind::Http,
        &Request {
            source: Cidr::host(peer.ip()),
            port: 80,
            l7: L7::Http(HttpAttrs {
                host,
                path,
                method: "GET",
                headers,
                sni: None,
            }),
        },
    )
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

fuzz_target!(
    init: {
        policies();
    },
    |data: &[u8]| {
        let Ok(uri) = Uri::try_from(data) else {
            return;
        };
        let headers = HeaderMap::new();
        for mode in MODES {
            let normalized = match normalize_uri(mode, &uri) {
                Ok(n) => n.unwrap_or_else(|| uri.clone()),
                Err(PathError::Nul) => {
                    assert!(
                        lower(uri.path()).contains("%00"),
                        "{mode:?}: {uri} refused for a NUL it doesn't have"
                    );
                    continue;
                }
                Err(e) => panic!("{mode:?}: {uri}: {e}"),
            };
            assert!(
                !lower(uri.path()).contains("%00"),
                "{mode:?}: {uri} has %00 and was accepted as {normalized}"
            );
            assert_eq!(normalized.query(), uri.query(), "{mode:?}: query changed");
            assert_eq!(normalized.authority(), uri.authority());
            // What the proxy sends upstream (path, then the query) must make a valid URI
            // with the endpoint as its authority, as `upstream::forward` builds it.
            let fwd = match normalized.query() {
                Some(q) => format!("{}?{q}", normalized.path()),
                None => normalized.path().to_string(),
            };
            assert!(
                format!("http://127.0.0.1:18080{fwd}").parse::<Uri>().is_ok(),
                "{mode:?}: {uri} -> {fwd:?} makes no upstream URI"
            );

            let again = normalize_uri(mode, &normalized)
                .unwrap_or_else(|e| panic!("{mode:?}: {uri} -> {normalized} -> {e}"));
            assert!(
                again.is_none(),
                "{mode:?}: not idempotent: {uri} -> {normalized} -> {}",
                again.unwrap()
            );
            for host in HOSTS {
                assert_eq!(
                    decide(host, normalized.path(), &headers),
                    decide(host, again.as_ref().unwrap_or(&normalized).path(), &headers),
                );
            }

            let p = normalized.path();
            // NONE, `OPTIONS *` and authority-form (CONNECT) targets are left alone.
            if mode == PathNormalization::None || p == "*" || uri.path_and_query().is_none() {
                assert_eq!(normalized, uri);
                continue;
            }
            assert!(p.starts_with('/'), "{mode:?}: {uri} -> {p}");
            assert!(!p.contains('\\'), "{mode:?}: {uri} -> {p}");
            assert!(!lower(p).contains("%2e"), "{mode:?}: {uri} -> {p}");
            assert!(
                !p.split('/').any(|s| s == "." || s == ".."),
                "{mode:?}: {uri} -> {p} keeps a dot segment"
            );
            if mode != PathNormalization::Base {
                assert!(
                    !p.contains("//") || p.bytes().all(|b| b == b'/'),
                    "{mode:?}: {uri} -> {p}"
                );
            }
            if mode == PathNormalization::DecodeAndMergeSlashes {
                let l = lower(p);
                assert!(!l.contains("%2f") && !l.contains("%5c"), "{mode:?}: {uri} -> {p}");
            }
        }
    }
);
