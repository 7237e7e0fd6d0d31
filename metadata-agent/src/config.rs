//! The agent's configuration file (YAML): every field optional, with its default in the
//! `impl Default` beside it; unknown fields and wrong types rejected with the file, the field and
//! what is accepted. The collectors' sections come from the collector table
//! ([`collectors::CollectorsConfig`]), each defined in its collector's module.

use std::path::{Path, PathBuf};
use std::time::Duration;

use collectors::cgroup::ContainersConfig;
use collectors::config::{Enabled, duration};
use collectors::{CollectorsConfig, HostRootsConfig};
use selectors::Action;
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// The HTTP API.
    pub server: ServerConfig,
    /// Policy files.
    pub policies: PoliciesConfig,
    /// The resolver's caches.
    pub resolver: ResolverConfig,
    /// The event stream.
    pub events: EventsConfig,
    /// Who is at a destination.
    pub destinations: DestinationsConfig,
    /// The kernel hook.
    pub hook: HookConfig,
    /// Where the host's `/proc`, `/sys` and `/etc` are.
    pub host: HostRootsConfig,
    /// Which cgroups may hold containers.
    pub containers: ContainersConfig,
    /// One section per collector.
    pub collectors: CollectorsConfig,
}

/// `server:`: where and how the HTTP API is served.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// `ADDR:PORT`, or `unix:/path/to.sock` (created with mode 0600). Default: loopback only,
    /// `127.0.0.1:9820`.
    pub listen: String,
    /// A file holding the bearer token every request but `/healthz` and `/readyz` must carry.
    /// No file (the default): no authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Largest accepted request body in bytes (default 1 MiB).
    pub max_body_bytes: usize,
    /// Host names (or addresses) requests may name in `Host` besides the listen address and
    /// loopback (default none). Other `Host`s get 421, other `Origin`s 403: a web page cannot
    /// make a browser on the node read the API (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Serve on a non-loopback address without a token (default false: the agent refuses to
    /// start so).
    pub allow_unauthenticated: bool,
    /// Most `key: value` pairs one label set in a request may hold (default 10 000; 413 above).
    pub max_label_pairs: usize,
    /// Longest label value in a request, in bytes (default 64 KiB; 400 above).
    pub max_label_value_bytes: usize,
    /// Requests served at once, health probes aside (default 512); more get 503 with
    /// `Retry-After` at once instead of waiting.
    pub max_concurrent_requests: usize,
    /// Policy evaluations (`/selectors/...`) run at once, off the async workers (default 2);
    /// more get 503 with `Retry-After`.
    pub max_concurrent_evaluations: usize,
    /// Connections open at once (default 4096); more are closed as they come.
    pub max_connections: usize,
    /// How long a connection may take to send a request's head (default 10s): a client that
    /// trickles its headers (slowloris) is cut off.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Most PIDs one `POST /metadata:batch` may ask (default 256; 413 above).
    pub max_batch_pids: usize,
    /// A second TCP listener for operations only (e.g. `0.0.0.0:9821`): `/healthz`, `/readyz`
    /// and `/metrics`, for the kubelet's probes and Prometheus, while the API stays on loopback
    /// or a Unix socket. None (the default): no such listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_listen: Option<String>,
    /// A token file for the operations listener, separate from the API's: `/metrics` and the
    /// health details need it when set (the probes themselves never do). None (the default):
    /// `/metrics` is open there, and health answers give counts, not error texts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_token_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9820".to_owned(),
            token_file: None,
            max_body_bytes: 1024 * 1024,
            allowed_hosts: Vec::new(),
            allow_unauthenticated: false,
            max_label_pairs: 10_000,
            max_label_value_bytes: 64 * 1024,
            max_concurrent_requests: 512,
            max_concurrent_evaluations: 2,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            max_batch_pids: 256,
            ops_listen: None,
            ops_token_file: None,
        }
    }
}

/// `policies:`: the policy files and what happens when none matches.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PoliciesConfig {
    /// A policy file or a directory of `*.yaml` files. No path (the default): no policies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The verdict when no policy matches: `allow` (default), `deny` or `log`.
    pub default_action: Action,
    /// How often the files are checked for changes (default 2s).
    #[serde(with = "duration")]
    pub reload_interval: Duration,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self {
            path: None,
            default_action: Action::Allow,
            reload_interval: Duration::from_secs(2),
        }
    }
}

/// `resolver:`: cache sizes and background work.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ResolverConfig {
    /// Process entries kept (default 16384); the least useful are evicted beyond it.
    pub process_cache_entries: usize,
    /// Container entries kept (default 1024).
    pub container_cache_entries: usize,
    /// Bytes the process and container caches hold at most, together (default 64 MiB; 7/8 for
    /// processes): a few processes with huge labels cannot take more.
    pub cache_bytes: u64,
    /// How often node labels are collected again (default 5m).
    #[serde(with = "duration")]
    pub node_refresh_interval: Duration,
    /// How often entries of processes that ended are dropped (default 30s).
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
    /// Resolve the processes already running at start, in the background (default true).
    pub prestart: bool,
    /// How many of them are resolved at once (default 2).
    pub prestart_concurrency: usize,
    /// Executions that ended (exited, exec'd, PID reused) whose last labels are kept for
    /// `GET /metadata?exec_id=` to answer `410 Gone` with (default 1024; 0: none).
    pub ended_processes: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            process_cache_entries: 16_384,
            cache_bytes: 64 * 1024 * 1024,
            container_cache_entries: 1_024,
            node_refresh_interval: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(30),
            prestart: true,
            prestart_concurrency: 2,
            ended_processes: 1_024,
        }
    }
}

/// `events:`: the `/events` stream.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct EventsConfig {
    /// Events a subscriber may fall behind by before it is dropped (default 4096).
    pub subscriber_buffer: usize,
    /// Bytes of events a subscriber may fall behind by before it is dropped (default 16 MiB).
    pub subscriber_buffer_bytes: usize,
    /// Subscribers streaming at once at most (default 64); more get 503.
    pub max_subscribers: usize,
    /// Events kept for subscribers that reconnect with `Last-Event-ID` (default 4096; 0: none).
    pub history: usize,
    /// Write every event to a JSON-lines file, rotated by size (default: no file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<crate::export::EventFileConfig>,
    /// Export every event as an OpenTelemetry log record over OTLP/HTTP (default: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<crate::otlp::OtlpConfig>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            subscriber_buffer: 4096,
            subscriber_buffer_bytes: 16 * 1024 * 1024,
            max_subscribers: 64,
            history: crate::events::DEFAULT_HISTORY,
            file: None,
            otlp: None,
        }
    }
}

/// `destinations:`: who is at a destination (local listeners, containers), for policies' `to`
/// selectors and connect events.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationsConfig {
    /// How often the destinations are looked up again (default 2s).
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
}

impl Default for DestinationsConfig {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(2),
        }
    }
}

/// `hook:`: the eBPF connect hook.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HookConfig {
    /// `auto` (default: attach when possible, else warn and run without), `true` (failing to
    /// attach stops the start) or `false`.
    pub enabled: Enabled,
    /// The cgroup v2 root to attach to (default: `<sys>/fs/cgroup` when it is cgroup2, else
    /// `<sys>/fs/cgroup/unified`, where `<sys>` is `HOST_SYS` or `host.sysRoot`, `/sys` by
    /// default). A mount showing only a sub-cgroup (a cgroup namespace's view) is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<PathBuf>,
    /// `observe` (default) or `enforce`. `enforce` needs the hook: the agent does not start
    /// without it, whatever `enabled` says (`enabled: false` is refused).
    pub mode: HookMode,
    /// In enforce mode, the verdict for a process the agent has not judged yet and whose
    /// exec-time identity gives no rule set: `allow` (default) or `deny` (fail closed).
    /// `defaultVerdict` is accepted as its former name.
    #[serde(alias = "defaultVerdict")]
    pub pending_verdict: Action,
    /// Pin the programs and maps in bpffs (default false), so enforcement outlives the agent
    /// (a crash, a restart, an upgrade of the agent alone): a starting agent adopts them
    /// without a gap; `metadata-agent hook detach` removes them.
    pub pin: bool,
    /// Where to pin them (default `/sys/fs/bpf/metadata-agent`; bpffs is mounted at
    /// `/sys/fs/bpf` when it is not).
    pub pin_path: PathBuf,
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            enabled: Enabled::Auto,
            cgroup_root: None,
            mode: HookMode::Observe,
            pending_verdict: Action::Allow,
            pin: false,
            pin_path: PathBuf::from("/sys/fs/bpf/metadata-agent"),
        }
    }
}

/// What the hook does with connects.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HookMode {
    /// Report only.
    #[default]
    Observe,
    /// Judge every connect by the policies, in the kernel; the hook is mandatory.
    Enforce,
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
        let config: Self = parsed.map_err(|error| ConfigError::Invalid {
            path: origin.to_owned(),
            field: if field.is_empty() || field == "." {
                String::new()
            } else {
                format!("{field}: ")
            },
            message: one_line(&error),
        })?;
        config.check(origin)?;
        Ok(config)
    }

    /// Rules across fields.
    fn check(&self, origin: &Path) -> Result<(), ConfigError> {
        if self.hook.mode == HookMode::Enforce && self.hook.enabled == Enabled::Never {
            return Err(ConfigError::Invalid {
                path: origin.to_owned(),
                field: "hook.enabled: ".to_owned(),
                message: "is false, but hook.mode is enforce: enforcing needs the hook".to_owned(),
            });
        }
        Ok(())
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
            std::time::Duration::from_millis(250)
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

    #[test]
    fn zero_and_absurd_durations_are_refused_naming_the_field() {
        let message = error_of("resolver:\n  nodeRefreshInterval: 0s\n");
        assert!(
            message.contains("resolver.nodeRefreshInterval") && message.contains("at least 1ms"),
            "{message}"
        );
        let message = error_of("collectors:\n  ec2:\n    timeout: 3d\n");
        assert!(
            message.contains("collectors.ec2.timeout") && message.contains("longer than"),
            "{message}"
        );
        // Where 0 means something, it is accepted.
        let config =
            Config::parse("collectors:\n  procfs:\n    hashWait: 0s\n", Path::new("x")).unwrap();
        assert!(config.collectors.procfs.hash_wait.is_zero());
    }
}
