//! `gateway proxy-config ...`, shaped as `istioctl proxy-config ...`
//! (istioctl/pkg/proxyconfig/proxyconfig.go): the same subcommands and aliases, the
//! same flags and filters, and the pod argument `[<type>/]<name>[.<namespace>]` and
//! `-n` accepted, so istioctl's command lines paste with only the binary renamed.
//! There is one proxy here, the gateway the admin API belongs to: the pod argument and
//! the namespace select nothing.
use std::{net::SocketAddr, path::PathBuf};

use clap::{ArgAction, Args, Subcommand};
use serde_json::Value;

use super::render::{self, AllFilters, ClusterFilter, EndpointFilter, ListenerFilter, RouteFilter};

#[derive(Args, Debug)]
pub struct ProxyConfigArgs {
    #[command(subcommand)]
    pub view: View,
    #[command(flatten)]
    pub common: Common,
}

/// Flags every subcommand takes (istioctl's persistent flags).
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Output format: one of json|yaml|short (default short; json for bootstrap, as
    /// istioctl).
    #[arg(short = 'o', long, global = true, value_parser = ["short", "json", "yaml"])]
    pub output: Option<String>,
    /// istioctl's namespace of the pod argument; accepted, selects nothing (one proxy).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The running gateway's admin API.
    #[arg(long, global = true, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// istioctl's Envoy admin port: the admin API at 127.0.0.1:<port> (overrides
    /// --admin-addr).
    #[arg(long, global = true, value_name = "PORT")]
    pub proxy_admin_port: Option<u16>,
    /// Read this config dump (JSON, `-` for stdin) instead of asking the gateway, as
    /// istioctl's --file does (`curl localhost:15000/config_dump > dump.json`).
    #[arg(short = 'f', long, global = true, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// istioctl's pod argument: accepted, selects nothing.
#[derive(Args, Debug, Clone, Default)]
pub struct Pod {
    /// `[<type>/]<name>[.<namespace>]` as for istioctl (e.g. deploy/istio-ingressgateway);
    /// optional, there is one proxy.
    #[arg(value_name = "POD")]
    pub pod: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum View {
    /// Listeners: ADDRESSES PORT MATCH DESTINATION (istioctl's table).
    #[command(visible_aliases = ["listeners", "l"])]
    Listener(ListenerArgs),
    /// Route configurations: NAME VHOST NAME DOMAINS MATCH VIRTUAL SERVICE.
    #[command(visible_aliases = ["routes", "r"])]
    Route(RouteArgs),
    /// Clusters: SERVICE FQDN PORT SUBSET DIRECTION TYPE DESTINATION RULE.
    #[command(visible_aliases = ["clusters", "c"])]
    Cluster(ClusterArgs),
    /// Endpoints: ENDPOINT STATUS OUTLIER CHECK CLUSTER.
    #[command(visible_aliases = ["endpoints", "ep"])]
    Endpoint(EndpointArgs),
    /// Certificates the gateway serves (SDS names kubernetes://<credentialName>).
    #[command(visible_aliases = ["secrets", "s"])]
    Secret(Pod),
    /// The node and version (`-o json`: the bootstrap section of the dump).
    #[command(visible_aliases = ["b"])]
    Bootstrap(BootstrapArgs),
    /// Every summary in turn (`-o json`: the whole /config_dump).
    #[command(visible_aliases = ["a"])]
    All(AllArgs),
    /// The gateway's log levels (Envoy's /logging). Read-only here: levels are set
    /// at start with RUST_LOG.
    #[command(visible_aliases = ["o"])]
    Log(LogArgs),
    /// The AuthorizationPolicy rules compiled for the XDP guard, and their counters
    /// (admin `/xdp`).
    Xdp(Pod),
    /// How L4 flows are moved: per path (kernel, splice, uring, copy) the flows and
    /// bytes, offloads, pauses, fallbacks and the kernel program's counters (admin
    /// `/debug/splice`).
    Splice(Pod),
}

#[derive(Args, Debug, Clone, Default)]
pub struct ListenerArgs {
    #[command(flatten)]
    pub pod: Pod,
    /// Filter listeners by address field.
    #[arg(long, default_value = "")]
    pub address: String,
    /// Filter listeners by type field (HTTP, TCP, HTTP+TCP).
    #[arg(long = "type", default_value = "")]
    pub r#type: String,
    /// Filter listeners by Port field.
    #[arg(long, default_value_t = 0)]
    pub port: u32,
    /// Output more information (`--verbose=false`: the short table), as istioctl's
    /// Go bool flag.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true")]
    pub verbose: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RouteArgs {
    #[command(flatten)]
    pub pod: Pod,
    /// Filter by route name (`http.8080` is taken as `http.80`, see the README).
    #[arg(long, default_value = "")]
    pub name: String,
    /// Output more information (`--verbose=false`: the short table), as istioctl's
    /// Go bool flag.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true")]
    pub verbose: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub pod: Pod,
    /// Filter clusters by substring of Service FQDN field.
    #[arg(long, default_value = "")]
    pub fqdn: String,
    /// Filter clusters by Direction field.
    #[arg(long, default_value = "")]
    pub direction: String,
    /// Filter clusters by substring of Subset field.
    #[arg(long, default_value = "")]
    pub subset: String,
    /// Filter clusters by Port field.
    #[arg(long, default_value_t = 0)]
    pub port: u32,
}

#[derive(Args, Debug, Clone, Default)]
pub struct EndpointArgs {
    #[command(flatten)]
    pub pod: Pod,
    /// Filter endpoints by address field.
    #[arg(long, default_value = "")]
    pub address: String,
    /// Filter endpoints by Port field.
    #[arg(long, default_value_t = 0)]
    pub port: u32,
    /// Filter endpoints by cluster name field.
    #[arg(long, default_value = "")]
    pub cluster: String,
    /// Filter endpoints by status field.
    #[arg(long, default_value = "")]
    pub status: String,
}

#[derive(Args, Debug, Clone, Default)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub pod: Pod,
}

#[derive(Args, Debug, Clone, Default)]
pub struct AllArgs {
    #[command(flatten)]
    pub pod: Pod,
    /// Print summary with headers.
    #[arg(long)]
    pub with_headers: bool,
    /// Filter clusters by substring of Service FQDN field.
    #[arg(long, default_value = "")]
    pub fqdn: String,
    /// Filter clusters by Direction field.
    #[arg(long, default_value = "")]
    pub direction: String,
    /// Filter clusters by substring of Subset field.
    #[arg(long, default_value = "")]
    pub subset: String,
    /// Filter clusters and listeners by Port field.
    #[arg(long, default_value_t = 0)]
    pub port: u32,
    /// Filter listeners by address field.
    #[arg(long, default_value = "")]
    pub address: String,
    /// Filter listeners by type field.
    #[arg(long = "type", default_value = "")]
    pub r#type: String,
    /// Filter routes by route name field.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Output more information (`--verbose=false`: the short table), as istioctl's
    /// Go bool flag.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true")]
    pub verbose: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct LogArgs {
    #[command(flatten)]
    pub pod: Pod,
    /// istioctl's `[<logger>:]<level>,...`: not supported at run time here (restart
    /// with RUST_LOG); an error, never ignored.
    #[arg(long)]
    pub level: Option<String>,
    /// Reset levels: not supported at run time here; an error.
    #[arg(short = 'r', long)]
    pub reset: bool,
    /// Label selector (accepted, selects nothing).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

impl Common {
    fn admin(&self) -> SocketAddr {
        match self.proxy_admin_port {
            Some(p) => SocketAddr::from(([127, 0, 0, 1], p)),
            None => self.admin_addr,
        }
    }

    /// The config dump: from --file, else the gateway's /config_dump.
    fn dump(&self) -> Result<Value, String> {
        let text = match &self.file {
            Some(p) if p.as_os_str() == "-" => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| format!("reading stdin: {e}"))?;
                s
            }
            Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
            None => super::fetch(self.admin(), "/config_dump")?,
        };
        let dump: Value = serde_json::from_str(&text)
            .map_err(|e| format!("error unmarshalling config dump response from Envoy: {e}"))?;
        // Not served, so not in the tables (stdout stays istioctl's): said on stderr.
        for s in dump["inactive_servers"].as_array().into_iter().flatten() {
            eprintln!(
                "INACTIVE: gateway {} server {} (port {}, hosts {}): credential Secret \"{}\" does not exist [GW2001]; its secret is listed WARMING",
                s["gateway"].as_str().unwrap_or_default(),
                s["name"]
                    .as_str()
                    .map_or_else(|| s["index"].to_string(), str::to_string),
                s["port"],
                s["hosts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                s["credential_name"].as_str().unwrap_or_default(),
            );
        }
        Ok(dump)
    }

    fn json(&self) -> bool {
        self.output.as_deref().is_some_and(|o| o != "short")
    }

    fn yaml(&self) -> bool {
        self.output.as_deref() == Some("yaml")
    }
}

/// Istio's route names for the ports of its default ingress gateway Service
/// (manifests/charts/gateways/istio-ingress/values.yaml): service port 80 is target
/// port 8080, 443 is 8443, and Istio names HTTP route configurations after the target
/// port (`http.8080`). This gateway listens on the Gateway's port itself (`http.80`):
/// the Istio name is taken for it when no route has that name.
pub fn istio_route_alias(dump: &Value, name: &str) -> Option<String> {
    let names: Vec<&str> = render::routes(dump)
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    if name.is_empty() || names.contains(&name) {
        return None;
    }
    let (proto, rest) = name.split_once('.')?;
    let (port, tail) = rest
        .split_once('.')
        .map_or((rest, None), |(p, t)| (p, Some(t)));
    let service_port = match port {
        "8080" => "80",
        "8443" => "443",
        _ => return None,
    };
    let candidate = match tail {
        Some(t) => format!("{proto}.{service_port}.{t}"),
        None => format!("{proto}.{service_port}"),
    };
    names.contains(&candidate.as_str()).then_some(candidate)
}

/// What `gateway proxy-config ...` prints, or the error (exit 1).
pub fn output(args: &ProxyConfigArgs) -> Result<String, String> {
    let c = &args.common;
    match &args.view {
        View::Xdp(_) | View::Splice(_) => {
            let (path, render): (&str, fn(&Value, bool) -> String) = match args.view {
                View::Xdp(_) => ("/xdp", super::render_xdp),
                _ => ("/debug/splice", super::render_splice),
            };
            let body = super::fetch(c.admin(), path)?;
            let v: Value =
                serde_json::from_str(&body).map_err(|e| format!("{path} is not JSON: {e}"))?;
            Ok(render(&v, c.json()))
        }
        View::Log(a) => {
            if a.level.is_some() || a.reset {
                return Err(
                    "changing log levels at run time is not supported by this gateway: restart it with RUST_LOG=<level> (e.g. RUST_LOG=debug or RUST_LOG=info,gateway::http=debug)"
                        .into(),
                );
            }
            if c.json() {
                return Err("--output is not applicable for this command".into());
            }
            let body = super::fetch(c.admin(), "/logging")?;
            // "%v.%v:\n%v" podName, podNamespace, Envoy's answer.
            let (pod, ns) = pod_name(&a.pod, c);
            Ok(format!("{pod}.{ns}:\n{body}"))
        }
        View::Listener(a) => {
            let dump = c.dump()?;
            let filter = ListenerFilter {
                address: a.address.clone(),
                port: a.port,
                r#type: a.r#type.clone(),
                verbose: a.verbose,
            };
            if c.json() {
                let ls: Vec<Value> = render::listeners(&dump)
                    .into_iter()
                    .filter(|l| filter.verify(l))
                    .map(render::unpacked)
                    .collect();
                return Ok(render::marshal(&Value::Array(ls), c.yaml()));
            }
            render::listener_summary(&dump, &filter, false)
        }
        View::Route(a) => {
            let dump = c.dump()?;
            let mut name = a.name.clone();
            if let Some(alias) = istio_route_alias(&dump, &name) {
                eprintln!(
                    "note: route {name} is Istio's name behind its default ingress Service (target port); this gateway listens on the Gateway port itself: showing {alias}"
                );
                name = alias;
            }
            let filter = RouteFilter {
                name,
                verbose: a.verbose,
            };
            if c.json() {
                let rs: Vec<Value> = render::filtered_routes(&dump, &filter)
                    .into_iter()
                    .map(render::unpacked)
                    .collect();
                return Ok(render::marshal(&Value::Array(rs), c.yaml()));
            }
            render::route_summary(&dump, &filter, false)
        }
        View::Cluster(a) => {
            let dump = c.dump()?;
            let filter = ClusterFilter {
                fqdn: a.fqdn.clone(),
                port: a.port,
                subset: a.subset.clone(),
                direction: a.direction.clone(),
            };
            if c.json() {
                let cs: Vec<Value> = render::filtered_clusters(&dump, &filter)
                    .into_iter()
                    .map(render::unpacked)
                    .collect();
                return Ok(render::marshal(&Value::Array(cs), c.yaml()));
            }
            render::cluster_summary(&dump, &filter, false)
        }
        View::Endpoint(a) => {
            let dump = c.dump()?;
            let filter = EndpointFilter {
                address: a.address.clone(),
                port: a.port,
                cluster: a.cluster.clone(),
                status: a.status.clone(),
            };
            if c.json() {
                let eps = render::endpoint_statuses(&dump, &filter);
                return Ok(render::marshal(&Value::Array(eps), c.yaml()));
            }
            Ok(render::endpoint_summary(&dump, &filter))
        }
        View::Secret(_) => {
            let dump = c.dump()?;
            if c.json() {
                let sec = dump["configs"]
                    .as_array()
                    .and_then(|cs| {
                        cs.iter().find(|s| {
                            s["@type"]
                                .as_str()
                                .is_some_and(|t| t.ends_with("SecretsConfigDump"))
                        })
                    })
                    .cloned()
                    .ok_or("sidecar doesn't support secrets: no secrets in the dump")?;
                return Ok(render::marshal(&sec, c.yaml()));
            }
            Ok(render::secret_summary(&dump, false))
        }
        View::Bootstrap(_) => {
            let dump = c.dump()?;
            // bootstrapConfigCmd's own -o defaults to json.
            if c.output.as_deref() == Some("short") {
                return render::bootstrap_summary(&dump);
            }
            let b = dump["configs"]
                .as_array()
                .and_then(|cs| {
                    cs.iter().find(|s| {
                        s["@type"]
                            .as_str()
                            .is_some_and(|t| t.ends_with("BootstrapConfigDump"))
                    })
                })
                .cloned()
                .ok_or("no bootstrap in the dump")?;
            Ok(render::marshal(&b, c.yaml()))
        }
        View::All(a) => {
            let dump = c.dump()?;
            if c.json() {
                if c.yaml() {
                    return Ok(serde_yaml::to_string(&dump).unwrap_or_default());
                }
                return Ok(format!("{dump:#}\n"));
            }
            let mut name = a.name.clone();
            if let Some(alias) = istio_route_alias(&dump, &name) {
                name = alias;
            }
            let verbose = a.verbose;
            render::full_summary(
                &dump,
                &AllFilters {
                    cluster: ClusterFilter {
                        fqdn: a.fqdn.clone(),
                        port: a.port,
                        subset: a.subset.clone(),
                        direction: a.direction.clone(),
                    },
                    listener: ListenerFilter {
                        address: a.address.clone(),
                        port: a.port,
                        r#type: a.r#type.clone(),
                        verbose,
                    },
                    route: RouteFilter { name, verbose },
                    endpoint: EndpointFilter {
                        address: a.address.clone(),
                        port: a.port,
                        ..Default::default()
                    },
                    with_headers: a.with_headers,
                },
            )
        }
    }
}

/// The pod istioctl would print: the argument's name (without `<type>/` and
/// `.<namespace>`) and its namespace (`.ns`, else -n, else istio-system).
fn pod_name(pod: &Pod, c: &Common) -> (String, String) {
    let arg = pod
        .pod
        .clone()
        .unwrap_or_else(|| "istio-ingressgateway".into());
    let name = arg.rsplit_once('/').map_or(arg.as_str(), |(_, n)| n);
    let (name, ns) = match name.split_once('.') {
        Some((n, ns)) => (n.to_string(), Some(ns.to_string())),
        None => (name.to_string(), None),
    };
    let ns = ns
        .or_else(|| c.namespace.clone())
        .unwrap_or_else(|| "istio-system".into());
    (name, ns)
}
