//! The built-in collectors: the one table that lists them.
//!
//! Each line of the table names a collector's configuration section (`collectors.<name>`) and
//! its type; the type brings the rest through [`Builtin`]: its section type (with its defaults),
//! its constructor, and through [`Collector`] its scope and its declared label keys. From the
//! table come [`CollectorsConfig`] (the `collectors:` section), [`SECTIONS`] and
//! [`build_registry`]; the label reference, the example configuration and the configuration
//! reference are checked against it by tests. Adding a collector is one new module plus one
//! line here (`CONTRIBUTING.md` walks through it).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Registry;
use crate::collector::Collector;
use crate::config::Section;
use crate::error::{BoxError, BuildError};
use crate::host::HostRoots;

/// A collector the agent builds from its configuration section.
pub trait Builtin: Collector + Sized + 'static {
    /// Its section, `collectors.<name>`, defaults in its `impl Default`.
    type Config: Section;

    /// Builds it for `config`, reading the host through `roots`. Fails on settings that can
    /// only be checked by reading them (an unreadable `kubeletCA`, an invalid endpoint URL);
    /// a disabled collector is built too, and must not fail on its unused settings.
    fn build(config: &Self::Config, roots: &HostRoots) -> Result<Self, BoxError>;
}

/// Declares the table: `name: Type,` lines, in the order the collectors run and report.
macro_rules! builtin_collectors {
    ($($(#[doc = $doc:literal])+ $name:ident: $collector:ty,)+) => {
        /// `collectors:`, one section per built-in collector.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct CollectorsConfig {
            $($(#[doc = $doc])+ pub $name: <$collector as Builtin>::Config,)+
        }

        /// The section names of the built-in collectors, which are also their names, in the
        /// order they run and report.
        pub const SECTIONS: &[&str] = &[$(stringify!($name)),+];

        /// The registry of every built-in collector configured by `config`, reading the host
        /// through `roots`.
        pub fn build_registry(
            config: &CollectorsConfig,
            roots: &HostRoots,
        ) -> Result<Registry, BuildError> {
            let mut registry = Registry::new();
            $(add::<$collector>(&mut registry, stringify!($name), &config.$name, roots)?;)+
            Ok(registry)
        }
    };
}

builtin_collectors! {
    /// `process:*` labels from procfs.
    procfs: crate::procfs::ProcfsCollector,
    /// `docker:*` labels from the Docker Engine.
    docker: crate::docker::DockerCollector,
    /// `k8s:*` labels from the kubelet.
    kubernetes: crate::kubernetes::KubernetesCollector,
    /// `linuxos:*` labels: the distribution and the kernel.
    linuxos: crate::linuxos::LinuxOsCollector,
    /// `sysfsdmi:*` labels: the firmware's DMI tables.
    sysfsdmi: crate::sysfsdmi::SysfsDmiCollector,
    /// `ec2:*` labels from the EC2 instance metadata service.
    ec2: crate::cloud::ec2::Ec2Collector,
    /// `azure:*` labels from the Azure instance metadata service.
    azure: crate::cloud::azure::AzureCollector,
    /// `gcp:*` labels from the GCP metadata server.
    gcp: crate::cloud::gcp::GcpCollector,
}

fn add<C: Builtin>(
    registry: &mut Registry,
    section: &'static str,
    config: &C::Config,
    roots: &HostRoots,
) -> Result<(), BuildError> {
    let collector = C::build(config, roots).map_err(|source| BuildError { section, source })?;
    debug_assert_eq!(
        collector.name(),
        section,
        "a collector is named by its section"
    );
    registry.register_filtered(
        Arc::new(collector),
        config.enabled().runs(),
        config.timeout(),
        crate::registry::KeyFilter {
            include: config.include_keys().to_vec(),
            exclude: config.exclude_keys().to_vec(),
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_the_table_is_one_registered_collector_named_by_its_section() {
        let registry = build_registry(&CollectorsConfig::default(), &HostRoots::default()).unwrap();
        let names: Vec<&str> = registry
            .collectors()
            .iter()
            .map(|registered| registered.collector.name())
            .collect();
        assert_eq!(names, SECTIONS);
        let sections = serde_json::to_value(CollectorsConfig::default()).unwrap();
        let keys: Vec<&String> = sections.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), SECTIONS.len(), "{keys:?}");
        assert!(SECTIONS.iter().all(|name| sections.get(*name).is_some()));
        for registered in registry.collectors() {
            assert!(
                !registered.collector.label_keys().is_empty(),
                "{} declares no label key",
                registered.collector.name()
            );
            let section = &sections[registered.collector.name()];
            assert_eq!(
                section["enabled"].as_bool() != Some(false),
                registered.enabled,
                "{}",
                registered.collector.name()
            );
        }
    }
}
