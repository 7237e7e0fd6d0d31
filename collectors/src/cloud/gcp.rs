//! The GCP collector: `gcp:*` labels from the Compute Engine metadata server.
//!
//! One request: `GET /computeMetadata/v1/instance/?recursive=true&alt=json` with
//! `Metadata-Flavor: Google`. An answer without `Metadata-Flavor: Google` is not from a metadata
//! server (a captive portal, a proxy) and is refused. The instance id is read as an unsigned
//! 64-bit integer: as a float it would lose its last digits. Instance attributes that can hold
//! secrets or scripts (`ssh-keys`, `startup-script`, `kube-env`, ...), and any multi-line
//! attribute, are left out unless named in `exportAttributes`.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use serde::{Deserialize, Serialize};

use super::{
    Approach, Cloud, CloudSettings, CloudSource, DEFAULT_TIMEOUT, EndpointSource, MetadataHttp,
    SetupError, insert_value, scalar_text,
};
use crate::collector::{CollectError, Collected, KeySpec};
use crate::config::{Enabled, duration, section};
use labels::{LabelSet, Trust, escape_key};

/// The environment variable Google's client libraries read for the metadata server
/// (`host[:port]`).
pub const ENDPOINT_VAR: &str = "GCE_METADATA_HOST";

/// `collectors.gcp`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GcpConfig {
    /// `auto` (default), `true` or `false`.
    pub enabled: Enabled,
    /// Deadline of one collection (default 2s).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Base URL of the metadata server (empty, the default: `http://` + `GCE_METADATA_HOST`,
    /// else `http://metadata.google.internal`).
    pub endpoint: String,
    /// Instance attributes exported even though they can hold secrets or scripts (`ssh-keys`,
    /// `startup-script`, `kube-env`, multi-line values), by name.
    pub export_attributes: Vec<String>,
    /// Key globs (`*` wildcard) whose labels are kept; empty (the default): all.
    pub include_keys: Vec<String>,
    /// Key globs whose labels are left out (default none).
    pub exclude_keys: Vec<String>,
}

impl Default for GcpConfig {
    fn default() -> Self {
        Self {
            enabled: Enabled::Auto,
            timeout: DEFAULT_TIMEOUT,
            endpoint: String::new(),
            export_attributes: Vec::new(),
            include_keys: Vec::new(),
            exclude_keys: Vec::new(),
        }
    }
}

section!(GcpConfig);

/// The metadata server's name inside Compute Engine.
pub const DEFAULT_ENDPOINT: &str = "http://metadata.google.internal";

const INSTANCE_PATH: &str = "/computeMetadata/v1/instance/?recursive=true&alt=json";

/// Attribute names never exported unless configured: they hold keys, credentials or scripts.
const SECRET_ATTRIBUTES: &[&str] = &[
    "ssh-keys",
    "sshKeys",
    "block-project-ssh-keys",
    "kube-env",
    "user-data",
    "windows-keys",
    "configure-sh",
    "kubelet-config",
];

/// Every key this collector emits (`<KEY>`: an attribute's name; `<ACCOUNT>`: a key of
/// `serviceAccounts`).
pub const LABEL_KEYS: &[KeySpec] = crate::key_specs![Trust::Node;
    "gcp:attributes:<KEY>",
    "gcp:cpu-platform",
    "gcp:id",
    "gcp:image:name",
    "gcp:image:project",
    "gcp:machine:project",
    "gcp:machine:type",
    "gcp:name",
    "gcp:network:mac",
    "gcp:network:private-ipv4",
    "gcp:network:public-ipv4",
    "gcp:placement:project",
    "gcp:placement:region",
    "gcp:placement:zone",
    "gcp:scheduling:automatic-restart",
    "gcp:scheduling:onHostMaintenance",
    "gcp:scheduling:preemptible",
    "gcp:serviceaccount:<ACCOUNT>:alias",
    "gcp:serviceaccount:<ACCOUNT>:email",
    "gcp:serviceaccount:<ACCOUNT>:scope",
    "gcp:tag",
];

/// Reads `gcp:*` labels.
pub struct GcpCollector {
    settings: CloudSettings,
    http: MetadataHttp,
    export_attributes: Vec<String>,
}

/// Whether an attribute may be exported without being named in `exportAttributes`.
fn is_safe_attribute(name: &str, value: &str) -> bool {
    !SECRET_ATTRIBUTES.contains(&name)
        && !name.contains("script")
        && !value.trim_end().contains('\n')
}

/// The last segment of a resource path (`projects/p/zones/europe-west4-a` → `europe-west4-a`).
fn last_segment(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The segment after `projects/` in a resource path.
fn project_of(path: &str) -> Option<&str> {
    let mut segments = path.split('/');
    segments.find(|s| *s == "projects")?;
    segments.next().filter(|s| !s.is_empty())
}

/// The instance's labels from the recursive instance document.
pub fn labels_of(instance: &Value, export_attributes: &[String]) -> Result<LabelSet, String> {
    let mut labels = LabelSet::new();
    let id = match &instance["id"] {
        Value::Number(number) => number
            .as_u64()
            .ok_or_else(|| format!("instance id {number} is not an unsigned 64-bit integer"))?,
        Value::String(text) => text
            .parse::<u64>()
            .map_err(|_| format!("instance id {text:?} is not an unsigned 64-bit integer"))?,
        Value::Null => return Err("the instance document has no id".to_owned()),
        other => return Err(format!("instance id {other} is not a number")),
    };
    labels.insert("gcp:id", id.to_string());
    for (field, key) in [("name", "gcp:name"), ("cpuPlatform", "gcp:cpu-platform")] {
        if let Some(text) = scalar_text(&instance[field]) {
            insert_value(&mut labels, key, &text);
        }
    }
    if let Some(attributes) = instance["attributes"].as_object() {
        for (name, value) in attributes {
            let Some(text) = scalar_text(value) else {
                continue;
            };
            if is_safe_attribute(name, &text) || export_attributes.iter().any(|a| a == name) {
                insert_value(
                    &mut labels,
                    &format!("gcp:attributes:{}", escape_key(name)),
                    &text,
                );
            }
        }
    }
    for tag in instance["tags"].as_array().into_iter().flatten() {
        if let Some(tag) = scalar_text(tag) {
            insert_value(&mut labels, "gcp:tag", &tag);
        }
    }
    if let Some(image) = instance["image"].as_str() {
        insert_value(&mut labels, "gcp:image:name", last_segment(image));
        if let Some(project) = project_of(image) {
            insert_value(&mut labels, "gcp:image:project", project);
        }
    }
    if let Some(machine) = instance["machineType"].as_str() {
        insert_value(&mut labels, "gcp:machine:type", last_segment(machine));
        if let Some(project) = project_of(machine) {
            insert_value(&mut labels, "gcp:machine:project", project);
        }
    }
    if let Some(zone_path) = instance["zone"].as_str() {
        let zone = last_segment(zone_path);
        insert_value(&mut labels, "gcp:placement:zone", zone);
        // A zone is its region plus a one-letter suffix: europe-west4-a is in europe-west4.
        if let Some((region, _)) = zone.rsplit_once('-') {
            insert_value(&mut labels, "gcp:placement:region", region);
        }
        if let Some(project) = project_of(zone_path) {
            insert_value(&mut labels, "gcp:placement:project", project);
        }
    }
    let scheduling = &instance["scheduling"];
    for (field, key) in [
        ("automaticRestart", "gcp:scheduling:automatic-restart"),
        ("onHostMaintenance", "gcp:scheduling:onHostMaintenance"),
        ("preemptible", "gcp:scheduling:preemptible"),
    ] {
        if let Some(text) = scalar_text(&scheduling[field]) {
            insert_value(&mut labels, key, &text.to_lowercase());
        }
    }
    for interface in instance["networkInterfaces"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(mac) = scalar_text(&interface["mac"]) {
            insert_value(&mut labels, "gcp:network:mac", &mac);
        }
        if let Some(ip) = scalar_text(&interface["ip"]) {
            insert_value(&mut labels, "gcp:network:private-ipv4", &ip);
        }
        for access in interface["accessConfigs"].as_array().into_iter().flatten() {
            if let Some(external) = scalar_text(&access["externalIp"]) {
                insert_value(&mut labels, "gcp:network:public-ipv4", &external);
            }
        }
    }
    if let Some(accounts) = instance["serviceAccounts"].as_object() {
        for (account, details) in accounts {
            // The metadata server keys each account by its email and again by each alias
            // (`default`): the alias entries are the same account, labelled once by email.
            let alias_entry = scalar_text(&details["email"])
                .is_some_and(|email| email != *account && accounts.contains_key(&email));
            if alias_entry {
                continue;
            }
            let prefix = format!("gcp:serviceaccount:{}", escape_key(account));
            for alias in details["aliases"].as_array().into_iter().flatten() {
                if let Some(alias) = scalar_text(alias) {
                    insert_value(&mut labels, &format!("{prefix}:alias"), &alias);
                }
            }
            if let Some(email) = scalar_text(&details["email"]) {
                insert_value(&mut labels, &format!("{prefix}:email"), &email);
            }
            for scope in details["scopes"].as_array().into_iter().flatten() {
                if let Some(scope) = scalar_text(scope) {
                    insert_value(&mut labels, &format!("{prefix}:scope"), &scope);
                }
            }
        }
    }
    Ok(labels)
}

#[async_trait]
impl CloudSource for GcpCollector {
    const CLOUD: Cloud = Cloud::Gcp;
    const LABEL_KEYS: &'static [KeySpec] = LABEL_KEYS;
    const ENDPOINT: EndpointSource = EndpointSource {
        config_field: "collectors.gcp.endpoint",
        env_var: ENDPOINT_VAR,
        default: DEFAULT_ENDPOINT,
    };
    type Config = GcpConfig;

    fn configured_endpoint(config: &GcpConfig) -> &str {
        &config.endpoint
    }

    fn with_settings(
        config: &GcpConfig,
        settings: CloudSettings,
        http: MetadataHttp,
    ) -> Result<Self, SetupError> {
        Ok(Self {
            http,
            settings,
            export_attributes: config.export_attributes.clone(),
        })
    }

    fn settings(&self) -> &CloudSettings {
        &self.settings
    }

    async fn collect_from(&self, approach: Approach) -> Result<Collected, CollectError> {
        let url = self.http.url(INSTANCE_PATH);
        let reply = self
            .http
            .send(
                Method::GET,
                INSTANCE_PATH,
                &[("Metadata-Flavor", "Google")],
                approach.first_timeout(self.settings.timeout),
            )
            .await
            .map_err(|error| approach.first_failure(Cloud::Gcp, &error))?;
        let flavored = reply
            .headers
            .get("metadata-flavor")
            .is_some_and(|v| v.as_bytes() == b"Google");
        if !flavored {
            let error = format!(
                "{url} answered {} without `Metadata-Flavor: Google`: not a GCP metadata server",
                reply.status
            );
            return Err(approach.mismatch(Cloud::Gcp, error));
        }
        self.settings.confirm();
        if reply.status != StatusCode::OK {
            return Err(CollectError::failed(format!(
                "{url} answered {}: {}",
                reply.status,
                reply.text().trim()
            )));
        }
        let instance: Value = serde_json::from_slice(&reply.body).map_err(|e| {
            CollectError::failed(format!("{url} answered something that is not JSON")).because(e)
        })?;
        labels_of(&instance, &self.export_attributes)
            .map(Collected::complete)
            .map_err(|e| CollectError::failed(url).because(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_id_keeps_every_digit() {
        let instance: Value =
            serde_json::from_str(r#"{"id": 18446744073709551557, "name": "n"}"#).unwrap();
        let labels = labels_of(&instance, &[]).unwrap();
        assert_eq!(labels.get("gcp:id"), ["18446744073709551557"]);
        let error = labels_of(&json!({"id": -1}), &[]).unwrap_err();
        assert!(error.contains("unsigned 64-bit"), "{error}");
        let error = labels_of(&json!({"id": 1.5e3}), &[]).unwrap_err();
        assert!(error.contains("unsigned 64-bit"), "{error}");
    }

    #[test]
    fn secret_and_script_attributes_stay_out_unless_named() {
        let instance = json!({"id": 1, "attributes": {
            "mdkey": "mdvalue", "ssh-keys": "alice:ssh-ed25519 AAAA", "startup-script": "#!/bin/sh",
            "kube-env": "KUBELET_CERT: x", "notes": "line one\nline two", "enable-oslogin": "TRUE"}});
        let plain = labels_of(&instance, &[]).unwrap();
        let exported: Vec<&str> = plain
            .iter()
            .map(|(key, _)| key)
            .filter(|key| key.starts_with("gcp:attributes:"))
            .collect();
        assert_eq!(
            exported,
            ["gcp:attributes:enable-oslogin", "gcp:attributes:mdkey"]
        );
        let named = labels_of(&instance, &["ssh-keys".to_owned(), "notes".to_owned()]).unwrap();
        assert_eq!(
            named.get("gcp:attributes:ssh-keys"),
            ["alice:ssh-ed25519 AAAA"]
        );
        assert_eq!(named.get("gcp:attributes:notes"), ["line one\\x0aline two"]);
        assert!(!named.contains_key("gcp:attributes:startup-script"));
    }
}
