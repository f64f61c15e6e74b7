//! Goldens: `gateway proxy-config <view>` over the walkthrough config (config/*.yaml,
//! as `cargo xtask run` serves it, dual-stack), compared byte for byte with
//! `golden/<view>.txt`, the text istioctl prints for the same dump.
//!
//! Where the expected text comes from (istio/istio 86c9f01, istioctl/pkg/...):
//! - widths: Go's text/tabwriter with istioctl's settings — listener and bootstrap
//!   `Init(w, 0, 8, 1, ' ', 0)` (listener.go setupListenerConfigWriter,
//!   configdump.go PrintBootstrapSummary), route/cluster/endpoint `(0, 8, 5)`,
//!   secret `(0, 5, 5)` (compare/sds/writer.go); a row whose last cell is empty keeps
//!   the padding of the cell before it (cluster's blank DESTINATION RULE);
//! - each golden names its Go writer below, and the rows it prints.
//!
//! `UPDATE_GOLDEN=1 cargo test -p gateway-userspace proxyconfig` rewrites the files:
//! review every changed line against istioctl's writer before committing.
use std::path::{Path, PathBuf};

use clap::Parser as _;

use super::*;
use crate::{
    cli::{Cli, Command},
    config::{self, GatewayIdentity, Snapshot},
};

/// The Plan the gateway serves for `snap`: what the dump renders.
fn plan(snap: Snapshot) -> Plan {
    Plan::compile(snap, 1).expect("the config compiles")
}

fn walkthrough() -> Snapshot {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let files = [
        "coolstore-gateway.yaml",
        "secrets.yaml",
        "service-entries.yaml",
        "tcp-echo.yaml",
        "sni-passthrough.yaml",
    ];
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    config::load(&paths, &GatewayIdentity::default()).expect("walkthrough config loads")
}

/// The dump `gateway run` serves for the walkthrough by default (no `--bind`: dual
/// stack), written once per test binary.
fn dump_file() -> &'static Path {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dump = config_dump(
            &plan(walkthrough()),
            &["0.0.0.0".parse().unwrap(), "::".parse().unwrap()],
            &crate::server::IstioPorts::default(),
        );
        let p = std::env::temp_dir().join(format!("gateway-pc-dump-{}.json", std::process::id()));
        std::fs::write(&p, format!("{dump:#}")).expect("write dump");
        p
    })
}

/// `gateway <argv...> -f <dump>`, as the binary parses and prints it.
fn run(argv: &str) -> Result<String, String> {
    let mut args: Vec<String> = vec!["gateway".into()];
    args.extend(argv.split_whitespace().map(str::to_string));
    args.push("-f".into());
    args.push(dump_file().display().to_string());
    let cli = Cli::try_parse_from(&args).map_err(|e| e.to_string())?;
    match cli.command {
        Command::ProxyConfig(pc) => cli::output(&pc),
        other => panic!("not proxy-config: {other:?}"),
    }
}

fn golden(name: &str, argv: &str) {
    let got = run(argv).unwrap_or_else(|e| panic!("{argv}: {e}"));
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/proxyconfig/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if got != want {
        panic!(
            "`gateway {argv}` differs from {}:\n--- want\n{want}--- got\n{got}---",
            path.display()
        );
    }
}

#[test]
fn golden_listener() {
    // PrintListenerSummary, verbose (istioctl's default): header
    // "ADDRESSES\tPORT\tMATCH\tDESTINATION"; listeners by port, address, type; the
    // chains of one listener by DESTINATION descending (sort.Slice ... >), so on 31400
    // simple-sni-2 before simple-sni-1 before the match-all tcp-echo chain ("|80|" >
    // "|2701|"); ADDRESSES the address and additional_addresses joined by ","
    // ("0.0.0.0,::", dual stack); MATCH from getMatches: "SNI: <sorted names>" or
    // "ALL"; DESTINATION from getFilterType: "Route: <rds name>", "Cluster: <name>".
    // The 15021 and 15090 rows are Envoy's bootstrap listeners of Istio's proxy
    // (tools/packaging/common/envoy_bootstrap.json: "<wildcard>_<port>", additional
    // address "::" when dual stack, one chain without a match: "ALL"), which
    // retrieveSortedListenerSlice appends from static_listeners; their HCM has an
    // inline route_config, so getFilterType gives describeRouteConfig: one virtual host
    // for "*" (describeDomains "") whose one route is `prefix: /healthz/ready`
    // (describeMatch "/healthz/ready*"; not getMatchAllCluster, the prefix is not "/"):
    // "Inline Route: /healthz/ready*", as in istioctl's own testdata
    // (istioctl/pkg/proxyconfig/testdata/config_dump_summary.txt: "0.0.0.0   15021
    // ALL   Inline Route: /healthz/ready*"). Sorted by port among the Gateway ports.
    golden("listener", "proxy-config listener");
    // `--verbose=false`: "ADDRESSES\tPORT\tTYPE", retrieveListenerType HTTP/TCP (the
    // bootstrap listeners have an HTTP connection manager: HTTP).
    golden("listener-short", "proxy-config listener --verbose=false");
}

#[test]
fn golden_route() {
    // PrintRouteSummary, verbose: one row per route of each virtual host; VHOST NAME
    // util.DomainName(host, server port) "<host>:80"; DOMAINS describeRouteDomains of
    // the one domain (the VirtualService host ∩ server host); MATCH describeMatch
    // ("/*" for prefix "/"); VIRTUAL SERVICE renderConfig "<name>.<namespace>". Route
    // configurations in dump order (names not numeric: sort.Slice keeps them): the
    // dynamic ones, then retrieveSortedRouteSlice's StaticRouteConfigs, which Envoy
    // fills with the inline route configurations of the bootstrap listeners: no name
    // (blank NAME), virtual host "backend", domain "*", MATCH "/healthz/ready*" and
    // "/stats/prometheus*", VIRTUAL SERVICE blank (no istio config metadata; the last
    // cell empty, so the MATCH cell keeps its padding), as Istio in Action's
    // `istioctl proxy-config routes` of an ingress gateway lists them (healthz first).
    golden("route", "proxy-config route");
    // --verbose=false: "NAME\tVIRTUAL HOSTS" and the count (1 for each static one).
    golden("route-short", "proxy-config route --verbose=false");
}

#[test]
fn golden_cluster() {
    // PrintClusterSummary: "outbound|80||webapp.default.svc.cluster.local" split by
    // ParseSubsetKey into FQDN, PORT, SUBSET ("-" when empty), DIRECTION; TYPE
    // c.GetType() (STATIC ServiceEntries are EDS for a gateway, convertResolution);
    // DESTINATION RULE blank (describeManagement of metadata without "config"), the
    // TYPE cell still padded. Sorted by FQDN, subset, port, direction.
    golden("cluster", "proxy-config cluster");
}

#[test]
fn golden_endpoint() {
    // clusters.ConfigWriter.PrintEndpointsSummary: "ENDPOINT\tSTATUS\tOUTLIER
    // CHECK\tCLUSTER", "<ip>:<port>", HealthStatus name, "OK" (no failed outlier
    // check); sorted by address *string*, then port, then cluster: 127.0.0.1:2701
    // first (same address, port 2701 < 18080).
    golden("endpoint", "proxy-config endpoint");
}

#[test]
fn golden_secret() {
    // sds printSecretItemsTabular: RESOURCE NAME (kubernetes://<credentialName>),
    // TYPE "Cert Chain" (not a CA), STATUS ACTIVE, VALID CERT %t, SERIAL NUMBER %032x,
    // NOT AFTER / NOT BEFORE time.RFC3339; no TRUST DOMAIN column (no SPIFFE URI).
    // config/certs/* are valid until 2126.
    golden("secret", "proxy-config secret");
}

#[test]
fn golden_bootstrap_and_all() {
    // PrintBootstrapSummary: only "Envoy Version:\t<major>.<minor>.<patch>" (no
    // ISTIO_VERSION in the node metadata); the gateway's own version in that slot.
    golden("bootstrap", "proxy-config bootstrap -o short");
    // PrintFullSummary with SetPrintConfigTypeInSummary(true): bootstrap, cluster
    // ("cluster/<name>" first column), listener ("listener/<name>"), route
    // ("route/<name>"), secret ("secret/<name>") and the EDS endpoints of
    // configdump/endpoint.go ("NAME\tSTATUS\tLOCALITY\tCLUSTER", "endpoint/<ip:port>",
    // sorted by cluster like clusters), each followed by a blank line but the last.
    golden("all", "proxy-config all");
    golden("all-with-headers", "proxy-config all --with-headers");
}

/// Every istioctl command line of the seed walkthrough (istio-gateways.md lines 54
/// and 85), with `istioctl` replaced by the binary, parses and prints what istioctl
/// would; the file itself is read too when it is there (../shared/seed).
#[test]
fn seed_command_lines_paste_as_written() {
    let mut lines = vec![
        "istioctl -n istio-system proxy-config listener deploy/istio-ingressgateway".to_string(),
        "istioctl proxy-config route deploy/istio-ingressgateway -o json --name http.8080 -n istio-system".to_string(),
    ];
    let seed =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/seed/istio-gateways.md");
    if let Ok(text) = std::fs::read_to_string(&seed) {
        for l in text.lines().map(str::trim) {
            if l.starts_with("istioctl ")
                && l.contains("proxy-config")
                && !lines.iter().any(|x| x == l)
            {
                lines.push(l.to_string());
            }
        }
    }
    for line in &lines {
        let argv = line.strip_prefix("istioctl ").expect("an istioctl line");
        let out = run(argv).unwrap_or_else(|e| panic!("{line}: {e}"));
        if argv.contains(" listener") {
            assert_eq!(out, run("proxy-config listener").unwrap(), "{line}");
        }
        if argv.contains(" route") && argv.contains("-o json") {
            let v: Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{line}: {e}\n{out}"));
            assert_eq!(
                v[0]["name"], "http.80",
                "{line}: http.8080 is http.80 here\n{out}"
            );
            assert_eq!(v.as_array().unwrap().len(), 1, "{out}");
            let hosts: Vec<&str> = v[0]["virtualHosts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["name"].as_str().unwrap())
                .collect();
            assert!(hosts.contains(&"webapp.istioinaction.io:80"), "{out}");
            // json.MarshalIndent(..., "", "    ") and protojson's lowerCamelCase.
            assert!(out.starts_with("[\n    {\n        \""), "{out}");
            assert!(out.contains("\"virtualHosts\"") && !out.contains("virtual_hosts"));
        }
    }
}

#[test]
fn filters_as_istioctl_has_them() {
    let rows = |argv: &str| -> Vec<String> {
        run(argv)
            .unwrap()
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    // ListenerFilter.Verify: --port, --type (case-insensitive), --address (either one).
    assert_eq!(rows("proxy-config listener --port 443").len(), 2);
    assert_eq!(rows("proxy-config listener --type tcp").len(), 3);
    // HTTP: 80, the two chains of 443, and the 15021 / 15090 bootstrap listeners.
    assert_eq!(rows("proxy-config listener --type HTTP").len(), 5);
    assert_eq!(rows("proxy-config listener --port 15021").len(), 1);
    assert_eq!(rows("proxy-config listener --address ::").len(), 8);
    assert_eq!(rows("proxy-config listener --address 10.0.0.1").len(), 0);
    // ClusterFilter.Verify: substrings of the cluster name.
    assert_eq!(rows("proxy-config cluster --fqdn simple-tls").len(), 2);
    assert_eq!(rows("proxy-config cluster --port 2701").len(), 1);
    assert_eq!(rows("proxy-config cluster --direction inbound").len(), 0);
    assert_eq!(rows("proxy-config cluster --subset v1").len(), 0);
    // clusters.EndpointFilter: --address is the IP, --port, --cluster, --status.
    assert_eq!(rows("proxy-config endpoint --port 18080").len(), 1);
    assert_eq!(rows("proxy-config endpoint --address 127.0.0.1").len(), 5);
    assert_eq!(rows("proxy-config endpoint --status healthy").len(), 5);
    assert_eq!(
        rows("proxy-config endpoint --cluster outbound|80||webapp.default.svc.cluster.local"),
        [
            "127.0.0.1:18080     HEALTHY     OK                outbound|80||webapp.default.svc.cluster.local"
        ]
    );
    // Route --name, and Istio's http.8080 for this gateway's http.80.
    assert_eq!(rows("proxy-config route --name http.80").len(), 2);
    assert_eq!(rows("proxy-config route --name http.8080").len(), 2);
    assert_eq!(rows("proxy-config route --name http.9999").len(), 0);
    // Aliases, the pod argument forms and `pc`.
    for argv in [
        "pc l",
        "proxy-config listeners istio-ingressgateway-5d8f7b9c4-abcde.istio-system",
        "proxy-config listener deployment/istio-ingressgateway -n istio-system",
        "-n istio-system pc listener deploy/istio-ingressgateway",
    ] {
        assert_eq!(
            run(argv).unwrap(),
            run("proxy-config listener").unwrap(),
            "{argv}"
        );
    }
    // -o yaml.
    assert!(
        run("proxy-config cluster -o yaml")
            .unwrap()
            .contains("name: outbound|80||webapp")
    );
    // Errors, never silence: unknown flags, and log levels that can't be changed.
    assert!(run("proxy-config listener --bogus").is_err());
    assert!(run("proxy-config log deploy/istio-ingressgateway --level debug").is_err());
}

#[test]
fn regex_headers_and_blackhole_as_istioctl_prints_them() {
    use render::*;
    let rc = json!({ "configs": [{ "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
    "dynamic_route_configs": [{ "route_config": { "name": "http.8080", "virtual_hosts": [
        { "name": "a.example.com:80", "domains": ["a.example.com"], "routes": [
            { "match": { "safe_regex": { "regex": "/api/v[0-9]+" }, "headers": [{ "name": "x" }] },
              "metadata": { "filter_metadata": { "istio": { "config": "/apis/networking.istio.io/v1alpha3/namespaces/ns/virtual-service/vs" } } } },
            { "match": { "path": "/exact" } },
            { "match": { "prefix": "/" }, "route": { "cluster": "PassthroughCluster" } },
        ]},
        { "name": "blackhole:80", "domains": ["*"] },
    ]}}]}]});
    let out = route_summary(
        &rc,
        &RouteFilter {
            name: String::new(),
            verbose: true,
        },
        false,
    )
    .unwrap();
    // describeMatch: "regex <re>", headers ignored; isPassthrough rows skipped; an
    // empty virtual host is "/*" "404".
    assert_eq!(
        out,
        "NAME          VHOST NAME           DOMAINS           MATCH                  VIRTUAL SERVICE\n\
         http.8080     a.example.com:80     a.example.com     regex /api/v[0-9]+     vs.ns\n\
         http.8080     a.example.com:80     a.example.com     /exact                 \n\
         http.8080     blackhole:80         *                 /*                     404\n"
    );
}

/// The virtual host domains of `http.80` for one server's hosts and one
/// VirtualService's hosts.
fn domains(server: &[&str], vs: &[&str]) -> Vec<String> {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: {server:?}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs}}
spec:
  hosts: {vs:?}
  gateways: [gw]
  http: [{{directResponse: {{status: 200}}}}]
"
    );
    let snap = config::load_str("d.yaml", &yaml, &GatewayIdentity::default()).unwrap();
    let dump = config_dump(
        &plan(snap),
        &["0.0.0.0".parse().unwrap()],
        &crate::server::IstioPorts::default(),
    );
    let vhosts = &dump["configs"][2]["dynamic_route_configs"][0]["route_config"]["virtual_hosts"];
    vhosts
        .as_array()
        .unwrap()
        .iter()
        .filter(|vh| !vh["name"].as_str().unwrap().starts_with("blackhole:"))
        .map(|vh| vh["domains"][0].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn route_domains_are_the_host_intersection() {
    // VirtualService `*.istioinaction.io` on a server for `webapp.istioinaction.io`:
    // Istio's virtual host is webapp.istioinaction.io (host.Names.Intersection).
    assert_eq!(
        domains(&["webapp.istioinaction.io"], &["*.istioinaction.io"]),
        ["webapp.istioinaction.io"]
    );
    assert_eq!(domains(&["*"], &["a.com", "b.com"]), ["a.com", "b.com"]);
    assert_eq!(domains(&["*.a.com"], &["*.com"]), ["*.a.com"]);
    assert!(domains(&["a.com"], &["b.com"]).is_empty());
}

#[test]
fn log_levels_as_envoy_names_them() {
    // Not touching the environment (tests run in parallel): the default.
    if std::env::var_os("RUST_LOG").is_none() {
        assert_eq!(active_loggers(), "active loggers:\n  default: info\n");
    }
}

/// `-o json` prints Envoy's fields in protojson's order (declaration order,
/// `PROTOJSON_ORDER`), not alphabetically; `-o yaml` sorted, as istioctl's JSONToYAML.
/// Failed before: every object's keys were alphabetical (`ignorePortInHostMatching`
/// first, `virtualHosts` after `validateClusters`).
#[test]
fn json_keys_in_protojson_order() {
    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }
    let out = run("proxy-config route --name http.80 -o json").unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let rc = &v[0];
    // istioctl prints the unpacked message: no `@type`.
    assert_eq!(
        keys(rc),
        [
            "name",
            "virtualHosts",
            "validateClusters",
            "ignorePortInHostMatching"
        ],
        "{out}"
    );
    let vh = &rc["virtualHosts"][0];
    assert_eq!(
        keys(vh),
        ["name", "domains", "routes", "includeRequestAttemptCount"]
    );
    assert_eq!(keys(&vh["routes"][0]), ["match", "route", "metadata"]);
    let out = run("proxy-config listener --port 443 -o json").unwrap();
    let l: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        keys(&l[0]),
        ["name", "address", "additionalAddresses", "filterChains"]
    );
    assert_eq!(
        keys(&l[0]["address"]["socketAddress"]),
        ["address", "portValue"]
    );
    assert_eq!(
        keys(&l[0]["filterChains"][0]),
        ["filterChainMatch", "filters", "transportSocket"]
    );
    let hcm = &l[0]["filterChains"][0]["filters"][0];
    assert_eq!(keys(hcm), ["name", "typedConfig"]);
    assert_eq!(keys(&hcm["typedConfig"]), ["@type", "statPrefix", "rds"]);
    let out = run("proxy-config cluster -o json").unwrap();
    let c: Value = serde_json::from_str(&out).unwrap();
    // No DestinationRule: Istio's default LEAST_REQUEST, which Istio writes out.
    assert_eq!(
        keys(&c[0]),
        ["name", "type", "lbPolicy", "loadAssignment", "metadata"]
    );
    // Struct contents (filter_metadata) sorted, as protojson sorts map keys.
    let istio = keys(&c[0]["metadata"]["filterMetadata"]["istio"]);
    let mut sorted = istio.clone();
    sorted.sort();
    assert_eq!(istio, sorted);
    // YAML: sorted keys (serde_yaml's Mapping keeps the printed order).
    let y = run("proxy-config cluster -o yaml").unwrap();
    let parsed: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
    let names: Vec<&str> = parsed[0]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "{y}");
    assert_eq!(names[0], "lbPolicy");
}

/// Istio's route name (route.go): `<http[].name>.<match[].name>` when the match has a
/// name; the route's own name otherwise.
#[test]
fn a_named_match_is_appended_to_the_route_name() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
  - name: api
    match: [{name: v1, uri: {prefix: /v1}}, {uri: {prefix: /v2}}]
    directResponse: {status: 200}
";
    let snap = config::load_str("n.yaml", yaml, &GatewayIdentity::default()).unwrap();
    let dump = config_dump(
        &plan(snap),
        &["0.0.0.0".parse().unwrap()],
        &crate::server::IstioPorts::default(),
    );
    let routes = &dump["configs"][2]["dynamic_route_configs"][0]["route_config"]["virtual_hosts"]
        [0]["routes"];
    assert_eq!(routes[0]["name"], "api.v1", "{routes:#}");
    assert_eq!(routes[1]["name"], "api", "{routes:#}");
}

/// The routes shown are the compiled table's, the one requests are routed by: a match
/// block for another Gateway is not in this Gateway's routes (Istio's `sourceMatchHTTP`
/// in TranslateRoutes), and an `httpsRedirect` server's hosts are `require_tls: ALL`
/// (gateway.go), with or without a VirtualService. Failed before: the dump translated
/// the VirtualService again and showed every block on every host, and no redirect.
#[test]
fn routes_are_the_compiled_tables() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw-a}
spec:
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.com]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw-b}
spec:
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [b.com, r.com], tls: {httpsRedirect: true}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: [a.com, b.com]
  gateways: [gw-a, gw-b]
  http:
  - name: r
    match: [{name: only-a, gateways: [gw-a], uri: {prefix: /a}}, {name: any, uri: {regex: \"/v[0-9]+\"}}]
    directResponse: {status: 200}
";
    let snap = config::load_str("c.yaml", yaml, &GatewayIdentity::default()).unwrap();
    let dump = config_dump(
        &plan(snap),
        &["0.0.0.0".parse().unwrap()],
        &crate::server::IstioPorts::default(),
    );
    let vhosts = &dump["configs"][2]["dynamic_route_configs"][0]["route_config"]["virtual_hosts"];
    let summary: Vec<(String, Vec<String>, Value)> = vhosts
        .as_array()
        .unwrap()
        .iter()
        .map(|vh| {
            let names = vh["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["name"].as_str().unwrap().to_string())
                .collect();
            (
                vh["name"].as_str().unwrap().to_string(),
                names,
                vh["require_tls"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "a.com:80".into(),
                vec!["r.only-a".into(), "r.any".into()],
                Value::Null
            ),
            ("b.com:80".into(), vec!["r.any".into()], json!("ALL")),
            ("r.com:80".into(), vec![], json!("ALL")),
        ],
        "{vhosts:#}"
    );
    // The regex as written, not as compiled (anchored).
    assert_eq!(
        vhosts[0]["routes"][1]["match"]["safe_regex"]["regex"], "/v[0-9]+",
        "{vhosts:#}"
    );
}
