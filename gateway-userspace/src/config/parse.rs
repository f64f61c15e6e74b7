//! Document -> typed resource. One serde error at most per document (serde
//! stops at the first), but every document of every file is tried.

use std::collections::HashSet;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::ConfigError;
use super::destination_rule::DestinationRule;
use super::istio::{
    AuthorizationPolicy, Gateway, SecretResource, ServiceEntry, Telemetry, VirtualService,
};
use super::source::{DocText, Positions, Source, serde_error, split_documents};
use super::warnings::{self, Warning};

/// A parsed resource and the document it came from.
#[derive(Debug, Clone)]
pub(crate) struct Entry<T> {
    pub res: T,
    pub src: Source,
}

pub(crate) const KINDS: &str = "Gateway, VirtualService, ServiceEntry, DestinationRule, Secret, Telemetry, AuthorizationPolicy";

#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub gateways: Vec<Entry<Gateway>>,
    pub virtual_services: Vec<Entry<VirtualService>>,
    pub service_entries: Vec<Entry<ServiceEntry>>,
    pub destination_rules: Vec<Entry<DestinationRule>>,
    pub secrets: Vec<Entry<SecretResource>>,
    pub telemetry: Vec<Entry<Telemetry>>,
    pub authorization_policies: Vec<Entry<AuthorizationPolicy>>,
    /// `Kind ns/name` of documents whose kind and name were readable but
    /// whose body did not deserialize. Their error is already reported;
    /// references to them must not add "does not exist" noise.
    pub broken: HashSet<String>,
    /// Fields read and not acted on (config::warnings), in file order.
    pub warnings: Vec<Warning>,
}

impl Parsed {
    pub fn add_file(&mut self, file: &Path, text: &str, errors: &mut Vec<ConfigError>) {
        for doc in split_documents(text) {
            if let Err(e) = self.add_document(file, &doc) {
                errors.push(e);
            }
        }
    }

    fn add_document(&mut self, file: &Path, doc: &DocText) -> Result<(), ConfigError> {
        let value: Value =
            serde_yaml::from_str(&doc.text).map_err(|e| serde_error(file, doc, &e))?;
        if value.is_null() {
            return Ok(()); // e.g. a document holding only `~`
        }
        let mut src = Source {
            file: file.to_path_buf(),
            positions: Positions::build(doc),
            subject: "".into(),
        };
        let Some(map) = value.as_mapping() else {
            return Err(src.error(
                "",
                "expected a Kubernetes resource: a mapping with apiVersion and kind",
            ));
        };
        let field = |name: &str| -> Result<String, ConfigError> {
            match map.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(src.error(name, format!("`{name}` must be a string"))),
                None => Err(src.error("", format!("missing field `{name}`"))),
            }
        };
        let kind = field("kind")?;
        let api_version = field("apiVersion")?;
        let (group_ok, expected) = match kind.as_str() {
            "Gateway" | "VirtualService" | "ServiceEntry" | "DestinationRule" => (
                matches!(
                    api_version.as_str(),
                    "networking.istio.io/v1alpha3"
                        | "networking.istio.io/v1beta1"
                        | "networking.istio.io/v1"
                ),
                "networking.istio.io/v1alpha3, v1beta1 or v1",
            ),
            "Secret" => (api_version == "v1", "v1"),
            "Telemetry" => (
                api_version.starts_with("telemetry.istio.io/"),
                "telemetry.istio.io/*",
            ),
            "AuthorizationPolicy" => (
                api_version.starts_with("security.istio.io/"),
                "security.istio.io/*",
            ),
            other => {
                return Err(src.error(
                    "kind",
                    format!("unknown kind \"{other}\" (supported: {KINDS})"),
                ));
            }
        };
        if !group_ok {
            return Err(src.error(
                "apiVersion",
                format!("apiVersion \"{api_version}\" is not valid for kind {kind} (expected {expected})"),
            ));
        }

        let meta = map.get("metadata");
        if let Some(name) = meta.and_then(|m| m.get("name")).and_then(Value::as_str) {
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default");
            src.subject = format!("{kind} {ns}/{name}").into();
        }
        let mark_broken = |this: &mut Parsed| {
            // Remember the name so references to it are not reported twice.
            let meta = map.get("metadata");
            let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str);
            if let Some(name) = name {
                this.broken
                    .insert(format!("{kind} {}/{name}", ns.unwrap_or("default")));
            }
        };
        let result = match kind.as_str() {
            "Gateway" => de(doc, &value).map(|res| {
                self.gateways.push(Entry {
                    res,
                    src: src.clone(),
                })
            }),
            "VirtualService" => de(doc, &value).map(|res| {
                self.virtual_services.push(Entry {
                    res,
                    src: src.clone(),
                })
            }),
            "ServiceEntry" => de(doc, &value).map(|res| {
                self.service_entries.push(Entry {
                    res,
                    src: src.clone(),
                })
            }),
            "DestinationRule" => de(doc, &value).map(|res| {
                self.destination_rules.push(Entry {
                    res,
                    src: src.clone(),
                })
            }),
            "Secret" => de(doc, &value).map(|res| {
                self.secrets.push(Entry {
                    res,
                    src: src.clone(),
                })
            }),
            "Telemetry" => de(doc, &value).map(|res| {
                self.telemetry.push(Entry {
                    res,
                    src: src.clone(),
                })
            }),
            _ => de(doc, &value).map(|res| {
                self.authorization_policies.push(Entry {
                    res,
                    src: src.clone(),
                })
            }),
        };
        result.map_err(|e| {
            mark_broken(self);
            serde_error(file, doc, &e)
        })?;
        // Only a resource that deserialized: a broken one has its error already.
        warnings::scan(&kind, &value, &src, &mut self.warnings);
        let mut refused = Vec::new();
        warnings::refused(&kind, &value, &src, &mut refused);
        match refused.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The typed resource, from the value already parsed (one YAML parse per document);
/// only if that fails is the text parsed again, for serde_yaml's error and position.
fn de<T: DeserializeOwned>(doc: &DocText, value: &Value) -> Result<T, serde_yaml::Error> {
    T::deserialize(value).or_else(|_| serde_yaml::from_str(&doc.text))
}
