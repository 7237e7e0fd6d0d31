//! The agent's configuration file (YAML): every field optional, unknown fields and wrong types
//! rejected with the file, the field and what is accepted.

use std::path::{Path, PathBuf};

use collectors::HostRootsConfig;
use collectors::config::{BasicConfig, CloudConfig, DockerConfig, KubernetesConfig};
use collectors::procfs::ProcfsConfig;
use serde::Deserialize;

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
    /// `docker:*` labels (validated; the collector is not in this build yet).
    #[serde(default)]
    pub docker: DockerConfig,
    /// `k8s:*` labels (validated; the collector is not in this build yet).
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// `ec2:*` labels (validated; the collector is not in this build yet).
    #[serde(default)]
    pub ec2: CloudConfig,
    /// `azure:*` labels (validated; the collector is not in this build yet).
    #[serde(default)]
    pub azure: CloudConfig,
    /// `gcp:*` labels (validated; the collector is not in this build yet).
    #[serde(default)]
    pub gcp: CloudConfig,
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
    }
}
