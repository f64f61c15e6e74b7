//! MeshConfig (`gateway run --mesh-config FILE`): the mesh-wide defaults Istio keeps in
//! the `istio` ConfigMap (`meshConfig` in IstioOperator / Helm values). The access log
//! fields and `pathNormalization` are used; the rest of a full MeshConfig is accepted
//! (Istio reads MeshConfig leniently too) with a warning each (GW1070, `warnings`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ConfigError, ConfigErrors, Loc};

/// Istio's root namespace when MeshConfig does not say otherwise.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// Empty: access logs off unless a Telemetry turns them on (Istio's default profile).
    #[serde(default)]
    pub access_log_file: String,
    #[serde(default)]
    pub access_log_encoding: AccessLogEncoding,
    /// Empty: Istio's default format for the encoding. For JSON, a JSON object whose
    /// values are format strings.
    #[serde(default)]
    pub access_log_format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    #[serde(default)]
    pub default_providers: DefaultProviders,
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    /// How request paths are normalized before routing and authorization.
    #[serde(default)]
    pub path_normalization: ProxyPathNormalization,
    /// How often DNS clusters are re-resolved (a protobuf Duration, `"60s"`; Istio's
    /// default 60 s); `--dns-refresh-rate` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh_rate: Option<String>,
    /// Every other MeshConfig field, accepted as written.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
    /// Where the file's fields are written: for the errors found when the access-log
    /// formats are compiled (`telemetry::access_log::compile`).
    #[serde(skip)]
    pub origin: super::Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    #[default]
    Text,
    Json,
}

/// MeshConfig `pathNormalization` (Istio's `MeshConfig.ProxyPathNormalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyPathNormalization {
    #[serde(default)]
    pub normalization: PathNormalization,
}

/// `pathNormalization.normalization`. What each mode turns on, as Istio configures
/// Envoy's HTTP connection manager (pilot/pkg/networking/core/listener_builder.go):
/// NONE: `normalize_path: false`; BASE (and DEFAULT): `normalize_path: true`;
/// MERGE_SLASHES: + `merge_slashes`; DECODE_AND_MERGE_SLASHES: + `merge_slashes` and
/// `path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`. Escaped slashes are
/// otherwise `KEEP_UNCHANGED`. The rules themselves are in `http::normalize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// Istio's enum value 0: the same as BASE.
    Default,
    None,
    #[default]
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// DEFAULT means BASE.
    pub fn effective(self) -> PathNormalization {
        match self {
            PathNormalization::Default => PathNormalization::Base,
            m => m,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PathNormalization::Default => "DEFAULT",
            PathNormalization::None => "NONE",
            PathNormalization::Base => "BASE",
            PathNormalization::MergeSlashes => "MERGE_SLASHES",
            PathNormalization::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultProviders {
    /// Providers a Telemetry `accessLogging` entry without `providers` means.
    #[serde(default)]
    pub access_logging: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

/// `extensionProviders[]`: only `envoyFileAccessLog` providers are served; others are
/// accepted (a Telemetry naming one is reported in the log and ignored).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_file_access_log: Option<FileAccessLogProvider>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileAccessLogProvider {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// `text` (a format string) or `labels` (JSON: key -> format string).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogFormat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

impl MeshConfig {
    pub fn root_namespace(&self) -> &str {
        self.root_namespace
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_ROOT_NAMESPACE)
    }

    /// `pathNormalization.normalization`, DEFAULT as BASE.
    pub fn normalization(&self) -> PathNormalization {
        self.path_normalization.normalization.effective()
    }

    pub fn provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }

    /// What a Telemetry provider name refers to: an `envoyFileAccessLog` extension
    /// provider of that name, else Istio's built-in `envoy` provider.
    pub fn provider_kind(&self, name: &str) -> ProviderKind<'_> {
        match self.provider(name) {
            Some(p) => match &p.envoy_file_access_log {
                Some(f) => ProviderKind::File(f),
                None => ProviderKind::Unsupported,
            },
            None if name == "envoy" => ProviderKind::Envoy,
            None => ProviderKind::Unsupported,
        }
    }
}

pub enum ProviderKind<'a> {
    Envoy,
    File(&'a FileAccessLogProvider),
    Unsupported,
}

/// The MeshConfig fields set in `path` that the gateway does not use (GW1070), with
/// their positions. A file that cannot be read or parsed has none (`load` says why).
pub fn warnings(path: &Path) -> Vec<super::Warning> {
    std::fs::read_to_string(path)
        .map(|text| super::warnings::scan_mesh(path, &text))
        .unwrap_or_default()
}

/// Reads and checks a MeshConfig file; errors as `file:line:col: message`. The
/// access-log formats are checked where they are compiled, with the Telemetry
/// resources (`telemetry::access_log::compile`).
pub fn load(path: &Path) -> Result<MeshConfig, ConfigErrors> {
    let at = |line: usize, col: usize, message: String| ConfigError {
        loc: Loc {
            file: path.to_path_buf(),
            line,
            col,
        },
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![at(1, 1, format!("cannot read file: {e}"))]))?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<MeshConfig, ConfigErrors> {
    let at = |line: usize, col: usize, message: String| ConfigError {
        loc: Loc {
            file: path.to_path_buf(),
            line,
            col,
        },
        message,
    };
    let mut mesh: MeshConfig = if text.trim().is_empty() {
        MeshConfig::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            let (line, col) = e
                .location()
                .map_or((1, 1), |l| super::source::line_col(text, l.index()));
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            ConfigErrors(vec![at(line, col, msg)])
        })?
    };
    let mut errors = Vec::new();
    if let Some(r) = &mesh.dns_refresh_rate
        && let Err(e) = parse_duration(r)
    {
        errors.push(at(1, 1, format!("dnsRefreshRate: {e}")));
    }
    // Whole MeshConfigs are accepted, so unknown fields can't be refused; a misspelt
    // access-log or path-normalization field would silently leave logs off or paths
    // unnormalized, so those are.
    for key in mesh.other.keys() {
        if key.to_ascii_lowercase().starts_with("pathnormali") {
            errors.push(at(
                1,
                1,
                format!("unknown MeshConfig field \"{key}\" (expected pathNormalization)"),
            ));
        }
        if key.to_ascii_lowercase().starts_with("accesslog") {
            errors.push(at(
                1,
                1,
                format!(
                    "unknown MeshConfig field \"{key}\" (expected accessLogFile, accessLogEncoding or accessLogFormat)"
                ),
            ));
        }
    }
    if errors.is_empty() {
        let doc = super::source::DocText {
            text: text.to_string(),
            line_offset: 0,
        };
        let src = super::source::Source {
            file: path.to_path_buf(),
            positions: super::source::Positions::build(&doc),
            subject: "MeshConfig".into(),
        };
        mesh.origin = super::Origin::new(&src, "");
        Ok(mesh)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// A protobuf Duration as YAML/JSON writes it (`"60s"`, `"0.5s"`), or a humantime one
/// (`"1m"`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    if let Some(secs) = t.strip_suffix('s').and_then(|n| n.parse::<f64>().ok()) {
        return std::time::Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("\"{text}\" is not a duration"));
    }
    humantime::parse_duration(t).map_err(|e| format!("\"{text}\" is not a duration: {e}"))
}

impl MeshConfig {
    /// `dnsRefreshRate`, if set (checked by [`parse`]).
    pub fn dns_refresh_rate(&self) -> Option<std::time::Duration> {
        self.dns_refresh_rate
            .as_deref()
            .and_then(|r| parse_duration(r).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        parse(Path::new("mesh.yaml"), text)
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn access_log_fields_are_checked_and_the_rest_accepted() {
        let m = parse(
            Path::new("mesh.yaml"),
            "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\nenableTracing: true\ndefaultConfig: {concurrency: 2}\n",
        )
        .unwrap();
        assert_eq!(m.access_log_encoding, AccessLogEncoding::Json);
        assert_eq!(m.root_namespace(), "istio-system");
        assert!(
            errors("accessLogFIle: /dev/stdout\n")
                .contains("unknown MeshConfig field \"accessLogFIle\"")
        );
        assert!(errors("accessLogEncoding: XML\n").starts_with("mesh.yaml:1:"));
        // The formats are compiled with the Telemetry resources (telemetry::access_log).
        assert!(errors("accessLogFormat: \"%NOPE%\"\n").is_empty());
    }

    #[test]
    fn path_normalization_modes() {
        let mode = |text: &str| {
            parse(Path::new("mesh.yaml"), text)
                .unwrap()
                .path_normalization
                .normalization
        };
        assert_eq!(mode(""), PathNormalization::Base);
        assert_eq!(mode("enableTracing: true\n"), PathNormalization::Base);
        for (name, m) in [
            ("NONE", PathNormalization::None),
            ("BASE", PathNormalization::Base),
            ("MERGE_SLASHES", PathNormalization::MergeSlashes),
            (
                "DECODE_AND_MERGE_SLASHES",
                PathNormalization::DecodeAndMergeSlashes,
            ),
        ] {
            let m2 = mode(&format!("pathNormalization:\n  normalization: {name}\n"));
            assert_eq!(m2, m, "{name}");
            assert_eq!(m2.name(), name);
        }
        assert_eq!(
            mode("pathNormalization: {normalization: DEFAULT}\n").effective(),
            PathNormalization::Base
        );
        assert_eq!(mode("pathNormalization: {}\n"), PathNormalization::Base);
        let e = errors("accessLogFile: /dev/stdout\npathNormalization:\n  normalization: MERGE\n");
        assert!(e.starts_with("mesh.yaml:3:"), "{e}");
        assert!(e.contains("unknown variant `MERGE`"), "{e}");
        let e = errors("pathNormalization:\n  normalisation: NONE\n");
        assert!(e.starts_with("mesh.yaml:2:"), "{e}");
        assert!(e.contains("unknown field `normalisation`"), "{e}");
        let e = errors("pathNormalisation: {normalization: NONE}\n");
        assert!(
            e.contains("unknown MeshConfig field \"pathNormalisation\""),
            "{e}"
        );
    }

    #[test]
    fn dns_refresh_rate_is_a_duration() {
        let p = std::path::Path::new("m.yaml");
        let m = parse(p, "dnsRefreshRate: 5s\n").unwrap();
        assert_eq!(
            m.dns_refresh_rate(),
            Some(std::time::Duration::from_secs(5))
        );
        let m = parse(p, "dnsRefreshRate: 0.5s\n").unwrap();
        assert_eq!(
            m.dns_refresh_rate(),
            Some(std::time::Duration::from_millis(500))
        );
        assert!(parse(p, "dnsRefreshRate: soon\n").is_err());
        assert!(super::super::warnings::scan_mesh(p, "dnsRefreshRate: 5s\n").is_empty());
    }
}
