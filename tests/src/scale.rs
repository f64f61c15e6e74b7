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
