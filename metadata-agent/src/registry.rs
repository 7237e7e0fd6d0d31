//! Builds the collector registry from the configuration: one registration line per collector.

use std::sync::Arc;
use std::time::Duration;

use collectors::cloud::azure::AzureCollector;
use collectors::cloud::ec2::Ec2Collector;
use collectors::cloud::gcp::GcpCollector;
use collectors::config::Enabled;
use collectors::docker::DockerCollector;
use collectors::kubernetes::{self, KubernetesCollector};
use collectors::linuxos::LinuxOsCollector;
use collectors::procfs::ProcfsCollector;
use collectors::sysfsdmi::SysfsDmiCollector;
use collectors::{HostRoots, Registry};

use crate::config::Config;

/// The registry for `config`, reading the host through `roots`. Fails on settings that can
/// only be checked by reading them (an invalid `kubeletCA`, a metadata service URL).
pub fn build_registry(config: &Config, roots: &HostRoots) -> anyhow::Result<Registry> {
    let c = &config.collectors;
    let kubernetes = KubernetesCollector::new(
        &c.kubernetes,
        c.kubernetes.timeout.unwrap_or(kubernetes::DEFAULT_TIMEOUT),
    )
    .map_err(anyhow::Error::msg)?;
    let ec2 = Ec2Collector::new(&c.ec2, roots).map_err(anyhow::Error::msg)?;
    let azure = AzureCollector::new(&c.azure, roots).map_err(anyhow::Error::msg)?;
    let gcp = GcpCollector::new(&c.gcp, roots).map_err(anyhow::Error::msg)?;
    let mut registry = Registry::new();
    registry
        .register(
            Arc::new(ProcfsCollector::new(roots.clone(), &c.procfs)),
            c.procfs.enabled.unwrap_or(true),
            c.procfs.timeout,
        )
        .register(
            Arc::new(DockerCollector::new(
                &c.docker,
                c.docker.timeout.unwrap_or(Duration::from_millis(500)),
            )),
            c.docker.enabled != Enabled::Never,
            c.docker.timeout,
        )
        .register(
            Arc::new(kubernetes),
            c.kubernetes.enabled != Enabled::Never,
            c.kubernetes.timeout,
        )
        .register(
            Arc::new(LinuxOsCollector::new(roots.clone())),
            c.linuxos.enabled.unwrap_or(true),
            c.linuxos.timeout,
        )
        .register(
            Arc::new(SysfsDmiCollector::new(roots.clone())),
            c.sysfsdmi.enabled.unwrap_or(true),
            c.sysfsdmi.timeout,
        )
        .register(
            Arc::new(ec2),
            c.ec2.enabled != Enabled::Never,
            c.ec2.timeout,
        )
        .register(
            Arc::new(azure),
            c.azure.enabled != Enabled::Never,
            c.azure.timeout,
        )
        .register(
            Arc::new(gcp),
            c.gcp.enabled != Enabled::Never,
            c.gcp.timeout,
        );
    Ok(registry)
}
