//! The sysfsdmi collector: firmware (DMI/SMBIOS) facts of the node from
//! `<sys>/class/dmi/id/<file>`, trimmed. An absent or unreadable file gives no key; a missing
//! directory (no DMI, as in many VMs) makes the collector "unavailable", not failed.

use async_trait::async_trait;

use crate::builtin::Builtin;
use crate::collector::{CollectError, Collected, Collector, KeySpec, Scope, Subject};
use crate::config::BasicConfig;
use crate::error::BoxError;
use crate::host::HostRoots;
use labels::{LabelSet, Trust, escape_bytes};

/// Each DMI file and the key it becomes.
pub const DMI_FILES: &[(&str, &str)] = &[
    ("bios_date", "sysfsdmi:bios:date"),
    ("bios_release", "sysfsdmi:bios:release"),
    ("bios_vendor", "sysfsdmi:bios:vendor"),
    ("bios_version", "sysfsdmi:bios:version"),
    ("chassis_asset_tag", "sysfsdmi:chassis:asset-tag"),
    ("chassis_serial", "sysfsdmi:chassis:serial"),
    ("chassis_type", "sysfsdmi:chassis:type"),
    ("chassis_vendor", "sysfsdmi:chassis:vendor"),
    ("chassis_version", "sysfsdmi:chassis:version"),
    ("product_family", "sysfsdmi:product:family"),
    ("product_name", "sysfsdmi:product:name"),
    ("product_serial", "sysfsdmi:product:serial"),
    ("product_sku", "sysfsdmi:product:sku"),
    ("product_version", "sysfsdmi:product:version"),
];

/// Every key this collector emits.
pub const LABEL_KEYS: &[KeySpec] = crate::key_specs![Trust::Node;
    "sysfsdmi:bios:date",
    "sysfsdmi:bios:release",
    "sysfsdmi:bios:vendor",
    "sysfsdmi:bios:version",
    "sysfsdmi:chassis:asset-tag",
    "sysfsdmi:chassis:serial",
    "sysfsdmi:chassis:type",
    "sysfsdmi:chassis:vendor",
    "sysfsdmi:chassis:version",
    "sysfsdmi:product:family",
    "sysfsdmi:product:name",
    "sysfsdmi:product:serial",
    "sysfsdmi:product:sku",
    "sysfsdmi:product:version",
];

/// Reads `sysfsdmi:*` labels.
pub struct SysfsDmiCollector {
    roots: HostRoots,
}

impl SysfsDmiCollector {
    /// A collector reading through `roots`.
    pub fn new(roots: HostRoots) -> Self {
        Self { roots }
    }
}

/// Reads one DMI file of `<sys>/class/dmi/id`, trimmed; `None` when absent, unreadable or empty.
pub fn read_dmi_file(roots: &HostRoots, file: &str) -> Option<String> {
    let raw = std::fs::read(roots.sys.join("class/dmi/id").join(file)).ok()?;
    let value = escape_bytes(raw.trim_ascii());
    (!value.is_empty()).then_some(value)
}

impl Builtin for SysfsDmiCollector {
    type Config = BasicConfig;

    fn build(_config: &BasicConfig, roots: &HostRoots) -> Result<Self, BoxError> {
        Ok(Self::new(roots.clone()))
    }
}

#[async_trait]
impl Collector for SysfsDmiCollector {
    fn name(&self) -> &'static str {
        "sysfsdmi"
    }

    fn scope(&self) -> Scope {
        Scope::Node
    }

    fn label_keys(&self) -> &'static [KeySpec] {
        LABEL_KEYS
    }

    async fn collect(&self, _subject: &Subject) -> Result<Collected, CollectError> {
        let dir = self.roots.sys.join("class/dmi/id");
        if !dir.is_dir() {
            return Err(CollectError::unavailable(format!(
                "no DMI data: {} does not exist",
                dir.display()
            )));
        }
        let mut labels = LabelSet::new();
        for (file, key) in DMI_FILES {
            if let Some(value) = read_dmi_file(&self.roots, file) {
                labels.insert(*key, value);
            }
        }
        Ok(Collected::complete(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_keys_are_the_dmi_file_keys() {
        let from_files: Vec<&str> = DMI_FILES.iter().map(|(_, key)| *key).collect();
        let declared: Vec<&str> = LABEL_KEYS.iter().map(|spec| spec.key).collect();
        assert_eq!(from_files, declared);
    }
}
