//! Configuration pieces shared by the collectors' sections.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `enabled:` of a collector whose source may or may not be on this machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Enabled {
    /// Run when the source is detected (the default).
    #[default]
    Auto,
    /// Always run; a missing source is reported as an error.
    Always,
    /// Never run.
    Never,
}

impl<'de> Deserialize<'de> for Enabled {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        let invalid = || serde::de::Error::custom("expected one of `auto`, `true`, `false`");
        match Raw::deserialize(deserializer).map_err(|_| invalid())? {
            Raw::Bool(true) => Ok(Self::Always),
            Raw::Bool(false) => Ok(Self::Never),
            Raw::Text(text) => match text.as_str() {
                "auto" => Ok(Self::Auto),
                "true" => Ok(Self::Always),
                "false" => Ok(Self::Never),
                _ => Err(invalid()),
            },
        }
    }
}

/// Deserializes a duration written like `500ms`, `2s` or `1m 30s`.
pub fn deserialize_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}): expected a number with a unit, e.g. `500ms` or `2s`"
        ))
    })
}

/// The configuration section of a collector with no settings beyond `enabled` and `timeout`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BasicConfig {
    /// Run the collector (default true).
    pub enabled: Option<bool>,
    /// Deadline (default 500ms).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub timeout: Option<Duration>,
}

/// `collectors.docker`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DockerConfig {
    /// `auto` (default), `true` or `false`.
    #[serde(default)]
    pub enabled: Enabled,
    /// Deadline.
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub timeout: Option<Duration>,
    /// Docker socket: a path or a `unix://` URL (default `/var/run/docker.sock`).
    pub socket_path: Option<String>,
    /// Keys of `docker:env:*` whose values are replaced by `<redacted>` (default: the procfs
    /// collector's patterns).
    pub redact_env_patterns: Option<Vec<String>>,
    /// Keys shown even though they match a pattern.
    #[serde(default)]
    pub allow_envs: Vec<String>,
}

/// `collectors.kubernetes`, with the reference's field names.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesConfig {
    /// `auto` (default), `true` or `false`.
    #[serde(default)]
    pub enabled: Enabled,
    /// Deadline.
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub timeout: Option<Duration>,
    /// Host or IP of the kubelet (default: the node's hostname, else 127.0.0.1).
    pub kubelet_host: Option<String>,
    /// Port of the kubelet (default 10250).
    pub kubelet_port: Option<u16>,
    /// PEM content or path of the kubelet's trust anchor (empty: the system roots).
    #[serde(rename = "kubeletCA")]
    pub kubelet_ca: Option<String>,
    /// Skip verification of the kubelet's certificate (default false).
    #[serde(default)]
    pub skip_kubelet_verification: bool,
    /// A bearer token, PEM cert+key content, or comma-separated paths to them.
    pub credentials: Option<String>,
    /// How often the pod list is fetched in the background (default 30s).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub refresh_interval: Option<Duration>,
    /// How long a pod gone from the kubelet's list stays resolvable (default 5m).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub deleted_pod_grace: Option<Duration>,
}

/// `collectors.ec2`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ec2Config {
    /// `auto` (default), `true` or `false`.
    #[serde(default)]
    pub enabled: Enabled,
    /// Deadline of one collection (default 2s).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub timeout: Option<Duration>,
    /// Base URL of the metadata service (default: `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else
    /// `http://169.254.169.254`).
    pub endpoint: Option<String>,
    /// Fall back to IMDSv1 (no token) when the token request is refused with 403, 404 or 405
    /// (default true). Never done when the token request timed out.
    pub imds_v1_fallback: Option<bool>,
    /// Lifetime asked for each IMDSv2 token, 1s to 6h (default 6h).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub token_ttl: Option<Duration>,
}

/// `collectors.azure`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AzureConfig {
    /// `auto` (default), `true` or `false`.
    #[serde(default)]
    pub enabled: Enabled,
    /// Deadline of one collection (default 2s).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub timeout: Option<Duration>,
    /// Base URL of the metadata service (default: `AZURE_IMDS_ENDPOINT`, else
    /// `http://169.254.169.254`).
    pub endpoint: Option<String>,
}

/// `collectors.gcp`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GcpConfig {
    /// `auto` (default), `true` or `false`.
    #[serde(default)]
    pub enabled: Enabled,
    /// Deadline of one collection (default 2s).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub timeout: Option<Duration>,
    /// Base URL of the metadata server (default: `http://` + `GCE_METADATA_HOST`, else
    /// `http://metadata.google.internal`).
    pub endpoint: Option<String>,
    /// Instance attributes exported even though they can hold secrets or scripts (`ssh-keys`,
    /// `startup-script`, `kube-env`, multi-line values), by name.
    #[serde(default)]
    pub export_attributes: Vec<String>,
}
