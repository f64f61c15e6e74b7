//! istioctl's writers, read from the Envoy-shaped dump: what `istioctl proxy-config`
//! prints for the same config dump, byte for byte.
//!
//! Each function names the Go it mirrors (istio/istio at 86c9f01, 2026-08):
//! `istioctl/pkg/writer/envoy/configdump/{listener,route,cluster,endpoint,configdump}.go`,
//! `istioctl/pkg/writer/envoy/clusters/clusters.go` (`proxy-config endpoint`) and
//! `istioctl/pkg/writer/compare/sds/{writer,util}.go` (`proxy-config secret`).
mod clusters;
mod endpoints;
mod listeners;
mod routes;
mod secrets;
mod summary;
pub mod tabwriter;

use serde_json::Value;

pub use clusters::*;
pub use endpoints::*;
pub use listeners::*;
pub use routes::*;
pub use secrets::*;
pub use summary::*;

// === reading the dump ===

fn section<'a>(dump: &'a Value, kind: &str) -> Option<&'a Value> {
    dump["configs"]
        .as_array()?
        .iter()
        .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(kind)))
}

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// `retrieveSortedListenerSlice`: dynamic (active) listeners, then static ones.
pub fn listeners(dump: &Value) -> Vec<&Value> {
    let Some(sec) = section(dump, "ListenersConfigDump") else {
        return Vec::new();
    };
    list(&sec["dynamic_listeners"])
        .map(|l| &l["active_state"]["listener"])
        .filter(|l| l.is_object())
        .chain(list(&sec["static_listeners"]).map(|l| &l["listener"]))
        .collect()
}

/// `retrieveSortedRouteSlice`: dynamic route configurations, then static ones.
pub fn routes(dump: &Value) -> Vec<&Value> {
    let Some(sec) = section(dump, "RoutesConfigDump") else {
        return Vec::new();
    };
    list(&sec["dynamic_route_configs"])
        .chain(list(&sec["static_route_configs"]))
        .map(|r| &r["route_config"])
        .filter(|r| r.is_object())
        .collect()
}

/// `retrieveSortedClusterSlice` (before sorting): dynamic active clusters, then static.
pub fn clusters(dump: &Value) -> Vec<&Value> {
    let Some(sec) = section(dump, "ClustersConfigDump") else {
        return Vec::new();
    };
    list(&sec["dynamic_active_clusters"])
        .chain(list(&sec["static_clusters"]))
        .map(|c| &c["cluster"])
        .filter(|c| c.is_object())
        .collect()
}

/// Go's `sort.Slice` runs an insertion sort (stable) below 13 elements; beyond that
/// its order among equal keys is unspecified, and we keep it stable.
fn sort_like_go<T>(v: &mut [T], less: impl Fn(&T, &T) -> bool) {
    v.sort_by(|a, b| {
        if less(a, b) {
            std::cmp::Ordering::Less
        } else if less(b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
}

// === -o json / yaml ===

/// A listener, route configuration or cluster of the dump as istioctl's `-o json`
/// prints it: the message unpacked from its `Any` (`UnmarshalTo` into the typed
/// message, then protojson), so without the `@type` the dump carries.
pub fn unpacked(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.shift_remove("@type");
    }
    v
}

/// protojson's field names: `virtual_hosts` is `virtualHosts` (keys without `_`, and
/// `@type`, are unchanged; the keys of `filter_metadata` structs have none).
pub fn camel_case(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let mut key = String::with_capacity(k.len());
                    let mut up = false;
                    for c in k.chars() {
                        if c == '_' && !key.is_empty() {
                            up = true;
                        } else if up {
                            key.extend(c.to_uppercase());
                            up = false;
                        } else {
                            key.push(c);
                        }
                    }
                    (key, camel_case(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(camel_case).collect()),
        other => other.clone(),
    }
}

/// `json.MarshalIndent(x, "", "    ")` + newline (`fmt.Fprintln`), or YAML.
/// Keys keep the dump's order (protojson's, `super::protojson_order`) in JSON; YAML
/// has them sorted, as sigs.k8s.io/yaml's JSONToYAML writes them.
pub fn marshal(v: &Value, yaml: bool) -> String {
    let mut v = camel_case(v);
    if yaml {
        super::sorted_keys(&mut v);
        return serde_yaml::to_string(&v).unwrap_or_default();
    }
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(&v, &mut ser).expect("JSON values serialize");
    String::from_utf8(buf).expect("serde_json writes UTF-8") + "\n"
}
