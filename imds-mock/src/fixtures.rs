//! The documents the mock serves: the bundled fixtures (the reference's instance on each
//! cloud), or files from a directory, each checked for the shape its cloud's handler needs.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::{azure, ec2, gcp};

/// The documents the mock serves.
#[derive(Debug, Clone)]
pub struct Fixtures {
    /// EC2: the tree under a version root (`meta-data`, `dynamic`, `user-data`).
    pub ec2: Value,
    /// Azure: `instance` and optionally `loadbalancer`.
    pub azure: Value,
    /// GCP: `instance` and `project`, shaped like the recursive JSON.
    pub gcp: Value,
}

const BUNDLED_EC2: &str = include_str!("../../tests/fixtures/imds/ec2.json");
const BUNDLED_AZURE: &str = include_str!("../../tests/fixtures/imds/azure.json");
const BUNDLED_GCP: &str = include_str!("../../tests/fixtures/imds/gcp.json");

impl Fixtures {
    /// The bundled fixtures: the reference's instance on each cloud.
    pub fn bundled() -> Self {
        let parse = |text: &str| serde_json::from_str(text).expect("bundled fixtures are JSON");
        Self {
            ec2: parse(BUNDLED_EC2),
            azure: parse(BUNDLED_AZURE),
            gcp: parse(BUNDLED_GCP),
        }
    }

    /// `ec2.json`, `azure.json` and `gcp.json` from `dir`; a missing file keeps the bundled one.
    /// A file that is not valid is an error naming it.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        if !dir.is_dir() {
            anyhow::bail!("--fixtures {}: not a directory", dir.display());
        }
        let mut fixtures = Self::bundled();
        let mut found = 0;
        for (name, slot, check) in [
            (
                "ec2.json",
                &mut fixtures.ec2,
                ec2::check_fixture as fn(&Value) -> Result<(), String>,
            ),
            ("azure.json", &mut fixtures.azure, azure::check_fixture),
            ("gcp.json", &mut fixtures.gcp, gcp::check_fixture),
        ] {
            let path = dir.join(name);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::info!("{}: absent, serving the bundled {name}", path.display());
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("{}: cannot read", path.display()));
                }
            };
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", path.display()))?;
            check(&value).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            *slot = value;
            found += 1;
        }
        if found == 0 {
            anyhow::bail!(
                "--fixtures {}: holds none of ec2.json, azure.json, gcp.json",
                dir.display()
            );
        }
        Ok(fixtures)
    }
}
