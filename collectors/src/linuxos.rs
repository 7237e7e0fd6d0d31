//! The linuxos collector: the distribution and kernel of the node.
//!
//! `linuxos:name` is os-release `ID` (lower-cased), `linuxos:version` is os-release `PRETTY_NAME`
//! or, when `<etc>/lsb-release` has one, its `DISTRIB_DESCRIPTION`. The kernel release and version
//! come from `<proc>/sys/kernel/{osrelease,version}` (so fixture trees can set them), falling
//! back to `uname(2)`.

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;

use crate::builtin::Builtin;
use crate::collector::{CollectError, Collected, Collector, KeySpec, Scope, Subject};
use crate::config::BasicConfig;
use crate::error::BoxError;
use crate::host::HostRoots;
use labels::{LabelSet, Trust};

/// Every key this collector emits.
pub const LABEL_KEYS: &[KeySpec] = crate::key_specs![Trust::Node;
    "linuxos:name",
    "linuxos:version",
    "linuxos:kernel:release",
    "linuxos:kernel:version",
];

/// Reads `linuxos:*` labels.
pub struct LinuxOsCollector {
    roots: HostRoots,
}

impl LinuxOsCollector {
    /// A collector reading through `roots`.
    pub fn new(roots: HostRoots) -> Self {
        Self { roots }
    }

    /// The labels, read with blocking file I/O.
    pub fn collect_blocking(&self) -> Result<Collected, CollectError> {
        let labels = self.read_labels();
        if labels.is_empty() {
            return Err(CollectError::unavailable(format!(
                "no os-release under {} and no kernel information",
                self.roots.etc.display()
            )));
        }
        let partial = (!labels.contains_key("linuxos:name")).then(|| {
            format!(
                "no os-release file: neither {}/os-release nor usr/lib/os-release",
                self.roots.etc.display()
            )
        });
        Ok(Collected {
            labels,
            partial,
            ..Default::default()
        })
    }

    fn read_labels(&self) -> LabelSet {
        let mut labels = LabelSet::new();
        let os_release = read_os_release(&self.roots.etc);
        if let Some(release) = &os_release {
            // os-release(5): ID defaults to "linux" and PRETTY_NAME to "Linux".
            let id = release.get("ID").map_or("linux", String::as_str);
            labels.insert("linuxos:name", id.to_lowercase());
        }
        let lsb = std::fs::read_to_string(self.roots.etc.join("lsb-release"))
            .ok()
            .map(|text| parse_env_file(&text));
        let description = lsb
            .as_ref()
            .and_then(|lsb| lsb.get("DISTRIB_DESCRIPTION"))
            .filter(|d| !d.is_empty());
        match (description, &os_release) {
            (Some(description), _) => labels.insert("linuxos:version", description.clone()),
            (None, Some(release)) => labels.insert(
                "linuxos:version",
                release.get("PRETTY_NAME").map_or("Linux", String::as_str),
            ),
            (None, None) => {}
        }
        let (release, version) = kernel_release_and_version(&self.roots.proc);
        if let Some(release) = release {
            labels.insert("linuxos:kernel:release", format!("linux-{release}"));
        }
        if let Some(version) = version {
            labels.insert("linuxos:kernel:version", version);
        }
        labels
    }
}

impl Builtin for LinuxOsCollector {
    type Config = BasicConfig;

    fn build(_config: &BasicConfig, roots: &HostRoots) -> Result<Self, BoxError> {
        Ok(Self::new(roots.clone()))
    }
}

#[async_trait]
impl Collector for LinuxOsCollector {
    fn name(&self) -> &'static str {
        "linuxos"
    }

    fn scope(&self) -> Scope {
        Scope::Node
    }

    fn label_keys(&self) -> &'static [KeySpec] {
        LABEL_KEYS
    }

    async fn collect(&self, _subject: &Subject) -> Result<Collected, CollectError> {
        self.collect_blocking()
    }
}

/// `<etc>/os-release`, else `usr/lib/os-release` beside that `etc` (os-release(5)).
fn read_os_release(etc: &Path) -> Option<HashMap<String, String>> {
    let fallback = etc.parent().map(|root| root.join("usr/lib/os-release"));
    std::fs::read_to_string(etc.join("os-release"))
        .ok()
        .or_else(|| fallback.and_then(|p| std::fs::read_to_string(p).ok()))
        .map(|text| parse_env_file(&text))
}

/// Parses `KEY=value` lines with shell-style quoting, as os-release and lsb-release use.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    let mut values = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        values.insert(key.trim().to_owned(), unquote(raw.trim()));
    }
    values
}

fn unquote(raw: &str) -> String {
    let mut chars = raw.chars();
    match chars.next() {
        Some(quote @ ('"' | '\'')) => {
            let mut out = String::new();
            let mut escaped = false;
            for c in chars {
                if escaped {
                    // Only these are escapes inside double quotes; otherwise keep the backslash.
                    if !matches!(c, '"' | '\\' | '$' | '`') {
                        out.push('\\');
                    }
                    out.push(c);
                    escaped = false;
                } else if c == '\\' && quote == '"' {
                    escaped = true;
                } else if c == quote {
                    break;
                } else {
                    out.push(c);
                }
            }
            out
        }
        _ => raw.to_owned(),
    }
}

fn kernel_release_and_version(proc_root: &Path) -> (Option<String>, Option<String>) {
    let read = |name: &str| {
        std::fs::read_to_string(proc_root.join("sys/kernel").join(name))
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let (release, version) = (read("osrelease"), read("version"));
    if release.is_some() && version.is_some() {
        return (release, version);
    }
    let (uname_release, uname_version) = uname();
    (release.or(uname_release), version.or(uname_version))
}

fn uname() -> (Option<String>, Option<String>) {
    // SAFETY: utsname is plain data; uname fills it with NUL-terminated strings.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return (None, None);
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Some(String::from_utf8_lossy(&bytes).into_owned()).filter(|s| !s.is_empty())
    };
    (text(&uts.release), text(&uts.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_rules() {
        let values = parse_env_file(
            "ID=ubuntu\nPRETTY_NAME=\"Ubuntu 22.04.3 LTS\"\nA='single $x'\nB=\"esc \\\"q\\\" \\$ \\n\"\n# c\nbad\n",
        );
        assert_eq!(values["ID"], "ubuntu");
        assert_eq!(values["PRETTY_NAME"], "Ubuntu 22.04.3 LTS");
        assert_eq!(values["A"], "single $x");
        assert_eq!(values["B"], "esc \"q\" $ \\n");
    }

    #[test]
    fn this_machine_has_a_kernel() {
        let labels = LinuxOsCollector::new(HostRoots::default()).read_labels();
        let release = labels.first("linuxos:kernel:release").unwrap();
        let uname_r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(release, format!("linux-{}", uname_r.trim()));
    }
}
