//! `gateway proxy-config` and the admin `/config_dump` behind it.
//!
//! As with Istio, the gateway serves an Envoy-shaped config dump ([`config_dump`]:
//! listeners with their filter chains, route configurations, clusters with their
//! endpoints, secrets) and the CLI renders it client-side into the tables
//! `istioctl proxy-config` prints ([`render`]), or prints its JSON with `-o json`.
//! Secrets show certificate facts (subject, SANs, serial, validity), never key material.
//!
//! The dump renders the [`Plan`] itself, the compiled config the data plane serves
//! with, never a second translation of the resources: the route tables requests are
//! routed by, the listeners the accept loops serve, the clusters' balancers. One file
//! per section: [`listeners`], [`routes`], [`clusters`] (with [`cluster_policy`]),
//! [`secrets`], [`bootstrap`]; [`envoy`] the shapes they share and protojson's key
//! order.
//!
//! [`render`] holds istioctl's writers (and Go's text/tabwriter they print through);
//! [`cli`] the `proxy-config` command line, shaped as istioctl's, [`client`] its admin
//! API client, [`tables`] the `xdp` and `splice` views.
mod bootstrap;
pub mod cli;
mod client;
mod cluster_policy;
mod clusters;
mod envoy;
mod listeners;
pub mod render;
mod routes;
mod secrets;
mod tables;

use std::net::IpAddr;

use serde_json::{Value, json};

pub use client::{active_loggers, fetch};
pub use envoy::{protojson_order, sorted_keys};
pub use routes::https_route_name;
pub use tables::{render_splice, render_xdp};

use crate::plan::Plan;

/// The Envoy-shaped dump `/config_dump` serves, rendered from `plan`, plus the
/// resources as loaded, the inactive servers and the warnings (kept as written: they
/// have no compiled form). `addrs`: the addresses every Gateway port listens on
/// (`0.0.0.0` and `::` when dual-stack); `ports`: Istio's status and Prometheus ports,
/// shown as Envoy's static listeners.
pub fn config_dump(plan: &Plan, addrs: &[IpAddr], ports: &crate::server::IstioPorts) -> Value {
    let snap = &*plan.snapshot;
    let (static_listeners, static_routes) = bootstrap::istio_port_listeners(addrs, ports);
    let mut secrets_dump = json!({
        "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        "dynamic_active_secrets": secrets::secrets_json(snap),
    });
    let warming = secrets::warming_secrets_json(snap);
    if !warming.is_empty() {
        secrets_dump["dynamic_warming_secrets"] = warming.into();
    }
    let mut configs = json!([
            { "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": bootstrap::bootstrap_json(snap, addrs) },
            { "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "static_listeners": static_listeners, "dynamic_listeners": listeners::listeners(plan, addrs) },
            { "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "static_route_configs": static_routes, "dynamic_route_configs": routes::route_configs(plan) },
            { "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": clusters::clusters(plan) },
            secrets_dump,
    ]);
    // Envoy's messages in protojson's field order (the resources as loaded keep theirs).
    protojson_order(&mut configs);
    json!({
        "configs": configs,
        "resources": snap.resources,
        "inactive_servers": snap.inactive,
        "warnings": snap.warnings.iter().map(|w| json!({
            "code": w.code,
            "location": w.loc.to_string(),
            "resource": w.subject,
            "path": w.path,
            "message": w.message,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests;
