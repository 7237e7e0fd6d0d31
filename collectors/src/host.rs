//! Where the host's filesystems are: `/proc`, `/sys` and `/etc`, or elsewhere when the agent runs
//! in a container with the host's filesystems mounted under other paths, or in tests on fixtures.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The roots every collector reads the host through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoots {
    /// procfs root (default `/proc`, env `HOST_PROC`).
    pub proc: PathBuf,
    /// sysfs root (default `/sys`, env `HOST_SYS`).
    pub sys: PathBuf,
    /// `/etc` of the host (default `/etc`, env `HOST_ETC`): os-release, passwd, group.
    pub etc: PathBuf,
}

impl Default for HostRoots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
            etc: PathBuf::from("/etc"),
        }
    }
}

/// The `host` section of the configuration file; the `HOST_*` environment variables win over it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HostRootsConfig {
    /// procfs root (default `/proc`).
    pub proc_root: PathBuf,
    /// sysfs root (default `/sys`).
    pub sys_root: PathBuf,
    /// `/etc` root (default `/etc`).
    pub etc_root: PathBuf,
}

impl Default for HostRootsConfig {
    fn default() -> Self {
        let roots = HostRoots::default();
        Self {
            proc_root: roots.proc,
            sys_root: roots.sys,
            etc_root: roots.etc,
        }
    }
}

impl HostRoots {
    /// Roots from the `HOST_PROC`, `HOST_SYS` and `HOST_ETC` environment variables (which win,
    /// as deployment manifests set them), else from the configuration.
    pub fn resolve(config: &HostRootsConfig) -> Self {
        Self::resolve_with(config, |name| std::env::var_os(name))
    }

    /// [`HostRoots::resolve`] with an injectable environment, for tests.
    pub fn resolve_with(
        config: &HostRootsConfig,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Self {
        let pick = |var: &str, configured: &PathBuf| {
            env(var)
                .filter(|v| !v.is_empty())
                .map_or_else(|| configured.clone(), PathBuf::from)
        };
        Self {
            proc: pick("HOST_PROC", &config.proc_root),
            sys: pick("HOST_SYS", &config.sys_root),
            etc: pick("HOST_ETC", &config.etc_root),
        }
    }

    /// Roots all under one directory holding `proc/`, `sys/` and `etc/` (fixture trees).
    pub fn under(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        Self {
            proc: root.join("proc"),
            sys: root.join("sys"),
            etc: root.join("etc"),
        }
    }

    /// `<proc>/<pid>/<file>`.
    pub fn proc_file(&self, pid: u32, file: &str) -> PathBuf {
        self.proc.join(pid.to_string()).join(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_wins_over_config_which_wins_over_defaults() {
        let config = HostRootsConfig {
            proc_root: "/cfg/proc".into(),
            sys_root: "/cfg/sys".into(),
            ..HostRootsConfig::default()
        };
        let roots = HostRoots::resolve_with(&config, |name| {
            (name == "HOST_SYS").then(|| "/host/sys".into())
        });
        assert_eq!(roots.proc, PathBuf::from("/cfg/proc"));
        assert_eq!(roots.sys, PathBuf::from("/host/sys"));
        assert_eq!(roots.etc, PathBuf::from("/etc"));
        assert_eq!(
            HostRoots::resolve_with(&HostRootsConfig::default(), |_| None),
            HostRoots::default()
        );
    }
}
