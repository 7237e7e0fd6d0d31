//! The agent's configuration file (YAML): every field optional, unknown fields and wrong types
//! rejected with the file, the field and what is accepted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use collectors::HostRootsConfig;
use collectors::config::{
    AzureConfig, BasicConfig, DockerConfig, Ec2Config, GcpConfig, KubernetesConfig,
    deserialize_duration,
};
use collectors::procfs::ProcfsConfig;
use selectors::Action;
use serde::{Deserialize, Deserializer};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Where the host's `/proc`, `/sys` and `/etc` are.
    #[serde(default)]
    pub host: HostRootsConfig,
    /// One section per collector.
    #[serde(default)]
    pub collectors: CollectorsConfig,
    /// The HTTP API.
    #[serde(default)]
    pub server: ServerConfig,
    /// Policy files.
    #[serde(default)]
    pub policies: PoliciesConfig,
    /// The resolver's caches.
    #[serde(default)]
    pub resolver: ResolverConfig,
    /// The event stream.
    #[serde(default)]
    pub events: EventsConfig,
    /// The kernel hook.
    #[serde(default)]
    pub hook: HookConfig,
}

/// `hook:`: the eBPF connect hook.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HookConfig {
    /// `auto` (default: attach when possible, else warn and run without), `true` (failing to
    /// attach stops the start) or `false`.
    #[serde(default)]
    pub enabled: collectors::config::Enabled,
    /// The cgroup v2 root to attach to (default: `/sys/fs/cgroup` when it is cgroup2, else
    /// `/sys/fs/cgroup/unified`).
    pub cgroup_root: Option<PathBuf>,
    /// `observe` (default) or `enforce`.
    #[serde(default)]
    pub mode: HookMode,
    /// In enforce mode, the verdict for processes not resolved yet (default `allow`).
    #[serde(default, deserialize_with = "deserialize_action")]
    pub default_verdict: Option<Action>,
}

/// What the hook does with connects.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HookMode {
    /// Report only.
    #[default]
    Observe,
    /// Refuse connects of processes whose verdict is `deny`.
    Enforce,
}

/// The address the API listens on by default: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9820";

/// `server:`: where and how the HTTP API is served.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// `ADDR:PORT`, or `unix:/path/to.sock` (created with mode 0600). Default `127.0.0.1:9820`.
    pub listen: Option<String>,
    /// A file holding the bearer token every request but `/healthz` and `/readyz` must carry.
    /// No file: no authentication.
    pub token_file: Option<PathBuf>,
    /// Largest accepted request body in bytes (default 1 MiB).
    pub max_body_bytes: Option<usize>,
}

/// `policies:`: the policy files and what happens when none matches.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PoliciesConfig {
    /// A policy file or a directory of `*.yaml` files. No path: no policies.
    pub path: Option<PathBuf>,
    /// The verdict when no policy matches: `allow`, `deny` or `log` (default `allow`).
    #[serde(default, deserialize_with = "deserialize_action")]
    pub default_action: Option<Action>,
    /// How often the files are checked for changes (default 2s).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub reload_interval: Option<Duration>,
}

fn deserialize_action<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Action>, D::Error> {
    let text = String::deserialize(deserializer)?;
    Action::parse(&text).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid action {text:?}: expected `allow`, `deny` or `log`"
        ))
    })
}

/// `resolver:`: cache sizes and background work.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResolverConfig {
    /// Process entries kept (default 16384); the least useful are evicted beyond it.
    pub process_cache_entries: Option<usize>,
    /// Container entries kept (default 1024).
    pub container_cache_entries: Option<usize>,
    /// How often node labels are collected again (default 5m).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub node_refresh_interval: Option<Duration>,
    /// How often entries of processes that ended are dropped (default 30s).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub sweep_interval: Option<Duration>,
    /// Resolve the processes already running at start, in the background (default true).
    pub prestart: Option<bool>,
    /// How many of them are resolved at once (default 2).
    pub prestart_concurrency: Option<usize>,
}

/// `events:`: the `/events` stream.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventsConfig {
    /// Events a subscriber may fall behind by before it is dropped (default 4096).
    pub subscriber_buffer: Option<usize>,
}

/// `collectors.<name>` sections.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CollectorsConfig {
    /// `process:*` labels from procfs.
    #[serde(default)]
    pub procfs: ProcfsConfig,
    /// `linuxos:*` labels.
    #[serde(default)]
    pub linuxos: BasicConfig,
    /// `sysfsdmi:*` labels.
    #[serde(default)]
    pub sysfsdmi: BasicConfig,
    /// `docker:*` labels.
    #[serde(default)]
    pub docker: DockerConfig,
    /// `k8s:*` labels.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// `ec2:*` labels.
    #[serde(default)]
    pub ec2: Ec2Config,
    /// `azure:*` labels.
    #[serde(default)]
    pub azure: AzureConfig,
    /// `gcp:*` labels.
    #[serde(default)]
    pub gcp: GcpConfig,
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML or does not fit the schema.
    #[error("{path}: {field}{message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted path of the offending field, with a trailing `: `, or empty.
        field: String,
        /// What was wrong, with line and column.
        message: String,
    },
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut field = String::new();
        let parsed = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
            serde_path_to_error::deserialize(deserializer).map_err(|e| {
                field = e.path().to_string();
                e.into_inner()
            })
        });
        parsed.map_err(|error| ConfigError::Invalid {
            path: origin.to_owned(),
            field: if field.is_empty() || field == "." {
                String::new()
            } else {
                format!("{field}: ")
            },
            message: one_line(&error),
        })
    }
}

/// serde-saphyr's message with its location, without the multi-line source snippet.
fn one_line(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "line 3 column 5: unknown field ..." → "unknown field ... (line 3, column 5)"
    match first.split_once(": ") {
        Some((location, message)) if location.starts_with("line ") => {
            format!("{message} (at {location})")
        }
        _ => first.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        Config::parse(text, Path::new("agent.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_and_partial_files_use_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x")).unwrap(),
            Config::default()
        );
        let config = Config::parse(
            "collectors:\n  procfs:\n    extractEnvs: true\n    timeout: 250ms\n",
            Path::new("x"),
        )
        .unwrap();
        assert!(config.collectors.procfs.extract_envs);
        assert_eq!(
            config.collectors.procfs.timeout,
            Some(std::time::Duration::from_millis(250))
        );
    }

    #[test]
    fn unknown_field_names_file_field_and_accepted_names() {
        let message = error_of("collectors:\n  procfs:\n    extractEnv: true\n");
        assert!(message.starts_with("agent.yaml: "), "{message}");
        assert!(message.contains("unknown field `extractEnv`"), "{message}");
        assert!(message.contains("extractEnvs"), "{message}");
        assert!(message.contains("line 3"), "{message}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let message = error_of("collectors:\n  procfs:\n    extractEnvs: 3\n");
        assert!(
            message.starts_with("agent.yaml: collectors.procfs.extractEnvs: "),
            "{message}"
        );
        assert!(message.contains("boolean"), "{message}");
        let message = error_of("collectors:\n  linuxos:\n    timeout: soon\n");
        assert!(message.contains("collectors.linuxos.timeout"), "{message}");
        assert!(message.contains("500ms"), "{message}");
        let message = error_of("collectors:\n  kubernetes:\n    kubeletPort: many\n");
        assert!(
            message.contains("collectors.kubernetes.kubeletPort"),
            "{message}"
        );
        let message = error_of("collectors:\n  docker:\n    enabled: sometimes\n");
        assert!(message.contains("collectors.docker.enabled"), "{message}");
        assert!(message.contains("`auto`, `true`, `false`"), "{message}");
        let message = error_of("- a list\n");
        assert!(message.starts_with("agent.yaml: "), "{message}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_valid_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.example.yaml");
        let config = Config::load(&path).unwrap();
        let procfs = &config.collectors.procfs;
        assert!(!procfs.extract_envs);
        assert_eq!(
            procfs.max_value_bytes,
            Some(collectors::procfs::DEFAULT_MAX_VALUE_BYTES)
        );
        assert_eq!(
            procfs.hash_wait,
            Some(collectors::procfs::DEFAULT_HASH_WAIT)
        );
        let patterns: Vec<&str> = procfs
            .redact_env_patterns
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        assert_eq!(patterns, collectors::procfs::DEFAULT_REDACT_PATTERNS);

        let kubernetes = &config.collectors.kubernetes;
        assert_eq!(
            kubernetes.timeout,
            Some(collectors::kubernetes::DEFAULT_TIMEOUT)
        );
        assert_eq!(
            kubernetes.kubelet_port,
            Some(collectors::kubernetes::kubelet::DEFAULT_PORT)
        );
        assert_eq!(
            kubernetes.refresh_interval,
            Some(collectors::kubernetes::DEFAULT_REFRESH_INTERVAL)
        );
        assert_eq!(
            kubernetes.deleted_pod_grace,
            Some(collectors::kubernetes::DEFAULT_DELETED_POD_GRACE)
        );

        let c = &config.collectors;
        assert_eq!(c.ec2.timeout, Some(collectors::cloud::DEFAULT_TIMEOUT));
        assert_eq!(c.ec2.imds_v1_fallback, Some(true));
        assert_eq!(
            c.ec2.token_ttl,
            Some(collectors::cloud::ec2::DEFAULT_TOKEN_TTL)
        );
        assert_eq!(c.azure.timeout, Some(collectors::cloud::DEFAULT_TIMEOUT));
        assert_eq!(c.gcp.timeout, Some(collectors::cloud::DEFAULT_TIMEOUT));
        for endpoint in [&c.ec2.endpoint, &c.azure.endpoint, &c.gcp.endpoint] {
            assert_eq!(endpoint.as_deref(), Some(""), "empty: the default");
        }
        assert!(c.gcp.export_attributes.is_empty());

        assert_eq!(config.server.listen.as_deref(), Some(DEFAULT_LISTEN));
        assert_eq!(
            config.server.max_body_bytes,
            Some(crate::api::DEFAULT_MAX_BODY_BYTES)
        );
        assert_eq!(config.policies.default_action, Some(Action::Allow));
        assert_eq!(
            config.resolver.process_cache_entries,
            Some(crate::resolver::DEFAULT_PROCESS_ENTRIES)
        );
        assert_eq!(
            config.resolver.container_cache_entries,
            Some(crate::resolver::DEFAULT_CONTAINER_ENTRIES)
        );
        assert_eq!(
            config.resolver.node_refresh_interval,
            Some(crate::run::DEFAULT_NODE_REFRESH)
        );
        assert_eq!(
            config.resolver.sweep_interval,
            Some(crate::run::DEFAULT_SWEEP)
        );
        assert_eq!(
            config.policies.reload_interval,
            Some(crate::run::DEFAULT_POLICY_RELOAD)
        );
        assert_eq!(
            config.resolver.prestart_concurrency,
            Some(crate::run::DEFAULT_PRESTART_CONCURRENCY)
        );
        assert_eq!(
            config.events.subscriber_buffer,
            Some(crate::events::DEFAULT_SUBSCRIBER_BUFFER)
        );
    }
}
