//! `proxy-config secret` (istioctl/pkg/writer/compare/sds/{writer,util}.go).
use serde_json::Value;

use super::*;

/// `PrintSecretSummary` + `printSecretItemsTabular` (tabwriter 0, 5, 5). The dump's
/// certificate facts stand in for the PEM istioctl parses (`secretMetaFromCert`): TYPE
/// "CA" when the certificate is a CA, else "Cert Chain"; serial as `%032x`; times RFC
/// 3339 in UTC.
pub fn secret_summary(dump: &Value, include_type: bool) -> String {
    let Some(sec) = section(dump, "SecretsConfigDump") else {
        return "No active or warming secrets found.\n".into();
    };
    let warming: Vec<&Value> = list(&sec["dynamic_warming_secrets"]).collect();
    let active: Vec<&Value> = list(&sec["dynamic_active_secrets"]).collect();
    if warming.is_empty() && active.is_empty() {
        return "No active or warming secrets found.\n".into();
    }
    let items: Vec<(&Value, &str)> = warming
        .iter()
        .map(|w| (*w, "WARMING"))
        .chain(active.iter().map(|a| (*a, "ACTIVE")))
        .collect();
    let facts = |secret: &Value| -> Value {
        let t = &secret["secret"];
        let chain = &t["tls_certificate"]["certificate_chain"];
        if chain.is_object() {
            chain.clone()
        } else {
            t["validation_context"]["trusted_ca"].clone()
        }
    };
    let all_have_trust_domain = items
        .iter()
        .all(|(i, _)| !s(&facts(i)["trust_domain"]).is_empty());
    let mut cols = vec![
        "RESOURCE NAME",
        "TYPE",
        "STATUS",
        "VALID CERT",
        "SERIAL NUMBER",
        "NOT AFTER",
        "NOT BEFORE",
    ];
    if all_have_trust_domain {
        cols.push("TRUST DOMAIN");
    }
    let mut t = cols.join("\t") + "\n";
    for (item, state) in items {
        let f = facts(item);
        let name = if include_type {
            format!("secret/{}", s(&item["name"]))
        } else {
            s(&item["name"]).to_string()
        };
        let parsed = f["serial_number"].is_string();
        // A secret whose certificate does not parse: Valid false, the rest empty.
        let ty = if !parsed {
            ""
        } else if f["is_ca"].as_bool() == Some(true) {
            "CA"
        } else {
            "Cert Chain"
        };
        let state = if s(&item["version_info"]) == "uninitialized" {
            "UNINITIALIZED"
        } else {
            state
        };
        t += &format!(
            "{name}\t{ty}\t{state}\t{}\t{}\t{}\t{}",
            f["valid"].as_bool() == Some(true),
            s(&f["serial_number"]),
            s(&f["not_after"]),
            s(&f["not_before"]),
        );
        if all_have_trust_domain {
            t += &format!("\t{}", s(&f["trust_domain"]));
        }
        t += "\n";
    }
    tabwriter::format(&t, 0, 5)
}
