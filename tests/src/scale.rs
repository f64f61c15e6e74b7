//! Configurations for the routing-scale benchmark and tests (issue 17): one Gateway
//! with `*.scale.test` on port 80 and N VirtualServices, VS `i` for host
//! `h<i>.scale.test` with two routes (a `/v2/` prefix with a rewrite, then a catch-all),
//! both to one ServiceEntry upstream. Requests for `h<i>.scale.test/hello.txt` miss the
//! first route and take the second, so every request walks the whole route list of its
//! virtual host.
use std::{fmt::Write as _, net::SocketAddr, path::Path};

/// The host of VirtualService `i`.
pub fn host(i: usize) -> String {
    format!("h{i}.scale.test")
}

/// A host the Gateway accepts (`*.scale.test`) that no VirtualService names: a 404.
pub const UNKNOWN_HOST: &str = "unknown.scale.test";

/// The whole configuration (Gateway, ServiceEntry, N VirtualServices) as one
/// multi-document YAML text.
pub fn config(n: usize, upstream: SocketAddr) -> String {
    let mut s = String::with_capacity(400 + n * 420);
    write!(
        s,
        "\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: scale-gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [\"*.scale.test\"]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: scale-upstream}}
spec:
  hosts: [upstream.scale.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  endpoints: [{{address: \"{ip}\"}}]
",
        port = upstream.port(),
        ip = upstream.ip(),
    )
    .expect("write to String");
    for i in 0..n {
        write!(
            s,
            "\
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: vs-{i}}}
spec:
  hosts: [{host}]
  gateways: [scale-gw]
  http:
  - name: v2-{i}
    match: [{{uri: {{prefix: /v2/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: upstream.scale.internal, port: {{number: {port}}}}}}}]
  - name: default-{i}
    route: [{{destination: {{host: upstream.scale.internal, port: {{number: {port}}}}}}}]
",
            host = host(i),
            port = upstream.port(),
        )
        .expect("write to String");
    }
    s
}

/// Writes [`config`] to `dir/scale-<n>.yaml` and returns the file's path.
pub fn write_config(
    dir: &Path,
    n: usize,
    upstream: SocketAddr,
) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("scale-{n}.yaml"));
    std::fs::write(&path, config(n, upstream))?;
    Ok(path)
}

/// The gateway's namespace, where `credentialName` Secrets are looked up.
const GATEWAY_NS: &str = "istio-system";

/// One CA and `n` leaf certificates (ECDSA P-256), leaf `i` for [`host`]`(i)` only: the
/// material of the HTTPS row. Made with rcgen in a few milliseconds per hundred, and
/// cached as PEM under `cache_dir` (`certs-<n>.json`) so repeated runs reuse them.
pub struct Certs {
    pub ca_pem: String,
    /// (certificate PEM, private key PEM) per host.
    pub leaves: Vec<(String, String)>,
}

impl Certs {
    pub fn make(n: usize) -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "scale-bench CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let leaves = (0..n)
            .map(|i| {
                let key = KeyPair::generate().expect("leaf key");
                let params = CertificateParams::new(vec![host(i)]).expect("leaf params");
                let cert = params
                    .signed_by(&key, &ca_cert, &ca_key)
                    .expect("leaf cert");
                (cert.pem(), key.serialize_pem())
            })
            .collect();
        Certs {
            ca_pem: ca_cert.pem(),
            leaves,
        }
    }

    /// [`Certs::make`], or the same read back from `cache_dir/certs-<n>.json`.
    pub fn cached(cache_dir: &Path, n: usize) -> Certs {
        let path = cache_dir.join(format!("certs-{n}.json"));
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let (Some(ca), Some(leaves)) = (v["ca"].as_str(), v["leaves"].as_array())
            && leaves.len() == n
        {
            let leaves: Vec<(String, String)> = leaves
                .iter()
                .filter_map(|l| Some((l[0].as_str()?.to_string(), l[1].as_str()?.to_string())))
                .collect();
            if leaves.len() == n {
                return Certs {
                    ca_pem: ca.to_string(),
                    leaves,
                };
            }
        }
        let certs = Certs::make(n);
        let v = serde_json::json!({"ca": certs.ca_pem, "leaves": certs.leaves});
        let _ = std::fs::create_dir_all(cache_dir);
        let _ = std::fs::write(&path, v.to_string());
        certs
    }
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

/// The HTTPS row's configuration: one Gateway with `n` HTTPS servers on port 443, server
/// `i` for [`host`]`(i)` alone with its own certificate (Secret `cert-<i>`), and `n`
/// VirtualServices as in [`config`] (VS `i` bound to host `i`), all to one HTTP upstream.
/// A new TLS connection is served by the server its SNI selects.
pub fn config_https(certs: &Certs, upstream: SocketAddr) -> String {
    let n = certs.leaves.len();
    let mut s = String::with_capacity(800 + n * 1700);
    s.push_str(
        "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: scale-gw}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n",
    );
    for i in 0..n {
        write!(
            s,
            "  - port: {{number: 443, name: https-{i}, protocol: HTTPS}}\n    hosts: [\"{h}\"]\n    tls: {{mode: SIMPLE, credentialName: cert-{i}}}\n",
            h = host(i)
        )
        .expect("write to String");
    }
    write!(
        s,
        "---\napiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: scale-upstream}}\nspec:\n  hosts: [upstream.scale.internal]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports: [{{number: {port}, name: http, protocol: HTTP}}]\n  endpoints: [{{address: \"{ip}\"}}]\n",
        port = upstream.port(),
        ip = upstream.ip(),
    )
    .expect("write to String");
    for (i, (cert, key)) in certs.leaves.iter().enumerate() {
        write!(
            s,
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: cert-{i}, namespace: {GATEWAY_NS}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(cert),
            indent(key)
        )
        .expect("write to String");
        write!(
            s,
            "---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: vs-{i}}}\nspec:\n  hosts: [{host}]\n  gateways: [scale-gw]\n  http:\n  - name: default-{i}\n    route: [{{destination: {{host: upstream.scale.internal, port: {{number: {port}}}}}}}]\n",
            host = host(i),
            port = upstream.port(),
        )
        .expect("write to String");
    }
    s
}

/// The passthrough row's configuration: one Gateway with a TLS PASSTHROUGH server for
/// `*.scale.test` on port 443 and `n` VirtualServices, VS `i` with one `tls` route for
/// SNI [`host`]`(i)` to a TLS upstream (which terminates TLS itself).
pub fn config_passthrough(n: usize, tls_upstream: SocketAddr) -> String {
    let mut s = String::with_capacity(800 + n * 420);
    write!(
        s,
        "\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: scale-gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: [\"*.scale.test\"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: scale-tls-upstream}}
spec:
  hosts: [tls-upstream.scale.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: tls, protocol: TLS}}]
  endpoints: [{{address: \"{ip}\"}}]
",
        port = tls_upstream.port(),
        ip = tls_upstream.ip(),
    )
    .expect("write to String");
    for i in 0..n {
        write!(
            s,
            "\
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: vs-{i}}}
spec:
  hosts: [{host}]
  gateways: [scale-gw]
  tls:
  - match: [{{port: 443, sniHosts: [{host}]}}]
    route: [{{destination: {{host: tls-upstream.scale.internal, port: {{number: {port}}}}}}}]
",
            host = host(i),
            port = tls_upstream.port(),
        )
        .expect("write to String");
    }
    s
}

/// The name of AuthorizationPolicy `i` of [`config_authz`] (zero-padded: the gateway
/// evaluates policies in name order, so policy `i` is the `i`-th).
fn policy_name(action: &str, i: usize) -> String {
    format!("{action}-{i:06}")
}

/// The AuthorizationPolicy row's configuration: [`config`]`(n)` (N VirtualServices) and
/// 2N policies on the gateway: per host `i`, an ALLOW policy for `GET` on
/// [`host`]`(i)` and a DENY policy for `/admin/*` on the same host. A request for host
/// `i` is allowed by the `i`-th ALLOW policy after no DENY policy matched; a host no
/// policy names is denied (403).
pub fn config_authz(n: usize, upstream: SocketAddr) -> String {
    let mut s = config(n, upstream);
    s.reserve(n * 600);
    for i in 0..n {
        write!(
            s,
            "\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {allow}, namespace: {GATEWAY_NS}}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: ALLOW
  rules:
  - to: [{{operation: {{hosts: [\"{host}\"], methods: [GET]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {deny}, namespace: {GATEWAY_NS}}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - to: [{{operation: {{hosts: [\"{host}\"], paths: [\"/admin/*\"]}}}}]
",
            allow = policy_name("allow", i),
            deny = policy_name("deny", i),
            host = host(i),
        )
        .expect("write to String");
    }
    s
}
