//! The Azure collector: `azure:*` labels from the Azure Instance Metadata Service.
//!
//! `GET /metadata/instance?api-version=…` with `Metadata: true`, then the optional
//! `GET /metadata/loadbalancer` for public addresses behind a Standard load balancer: its 404
//! means "no load balancer", not a failure. Public addresses from both are de-duplicated.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use serde::{Deserialize, Serialize};

use super::{
    Approach, Cloud, CloudSettings, CloudSource, DEFAULT_TIMEOUT, EndpointSource, LINK_LOCAL,
    MetadataHttp, SetupError, insert_value, scalar_text,
};
use crate::collector::{CollectError, Collected, KeySpec};
use crate::config::{Enabled, duration, section};
use labels::{LabelSet, Trust, escape_key};

/// The environment variable that overrides the endpoint (the Azure SDKs have no common one).
pub const ENDPOINT_VAR: &str = "AZURE_IMDS_ENDPOINT";

/// `collectors.azure`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AzureConfig {
    /// `auto` (default), `true` or `false`.
    pub enabled: Enabled,
    /// Deadline of one collection (default 2s).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Base URL of the metadata service (empty, the default: `AZURE_IMDS_ENDPOINT`, else
    /// `http://169.254.169.254`).
    pub endpoint: String,
    /// Key globs (`*` wildcard) whose labels are kept; empty (the default): all.
    pub include_keys: Vec<String>,
    /// Key globs whose labels are left out (default none).
    pub exclude_keys: Vec<String>,
}

impl Default for AzureConfig {
    fn default() -> Self {
        Self {
            enabled: Enabled::Auto,
            timeout: DEFAULT_TIMEOUT,
            endpoint: String::new(),
            include_keys: Vec::new(),
            exclude_keys: Vec::new(),
        }
    }
}

section!(AzureConfig);

/// The API version of the instance document: the first with `tagsList`, widely available.
pub const INSTANCE_API_VERSION: &str = "2021-02-01";

/// The API version of the load balancer document (its first).
pub const LOADBALANCER_API_VERSION: &str = "2020-10-01";

/// `compute.*` fields and their keys.
const COMPUTE: &[(&str, &str)] = &[
    ("name", "azure:name"),
    ("osType", "azure:ostype"),
    ("priority", "azure:priority"),
    ("provider", "azure:provider"),
    ("sku", "azure:sku"),
    ("resourceGroupName", "azure:resourcegroup:name"),
    ("subscriptionId", "azure:subscription:id"),
    ("location", "azure:placement:location"),
    ("zone", "azure:placement:zone"),
    ("vmId", "azure:vm:id"),
    ("offer", "azure:vm:offer"),
    ("publisher", "azure:vm:publisher"),
    ("vmScaleSetName", "azure:vm:scaleset:name"),
    ("vmSize", "azure:vm:size"),
    ("version", "azure:vm:version"),
];

/// Every key this collector emits (`<KEY>`: a tag's name).
pub const LABEL_KEYS: &[KeySpec] = crate::key_specs![Trust::Node;
    "azure:name",
    "azure:network:mac",
    "azure:network:private-ipv4",
    "azure:network:public-ipv4",
    "azure:ostype",
    "azure:placement:location",
    "azure:placement:zone",
    "azure:priority",
    "azure:provider",
    "azure:resourcegroup:name",
    "azure:sku",
    "azure:subscription:id",
    "azure:tag:<KEY>",
    "azure:vm:id",
    "azure:vm:offer",
    "azure:vm:publisher",
    "azure:vm:scaleset:name",
    "azure:vm:size",
    "azure:vm:version",
];

/// Reads `azure:*` labels.
pub struct AzureCollector {
    settings: CloudSettings,
    http: MetadataHttp,
}

impl AzureCollector {
    async fn document(
        &self,
        path_and_query: &str,
        timeout: Duration,
        approach: &Approach,
    ) -> Result<Option<Value>, CollectError> {
        let reply = self
            .http
            .send(
                Method::GET,
                path_and_query,
                &[("Metadata", "true")],
                timeout,
            )
            .await
            .map_err(|error| approach.first_failure(Cloud::Azure, &error))?;
        let url = self.http.url(path_and_query);
        match reply.status {
            StatusCode::OK => serde_json::from_slice(&reply.body).map(Some).map_err(|e| {
                approach.mismatch(
                    Cloud::Azure,
                    format!("{url} answered something that is not JSON: {e}"),
                )
            }),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(approach.mismatch(
                Cloud::Azure,
                format!("{url} answered {status}: {}", reply.text().trim()),
            )),
        }
    }
}

/// The labels of an instance document (and of a load balancer document, when there is one).
pub fn labels_of(instance: &Value, loadbalancer: Option<&Value>) -> LabelSet {
    let mut labels = LabelSet::new();
    let compute = &instance["compute"];
    for (field, key) in COMPUTE {
        if let Some(text) = scalar_text(&compute[*field]) {
            insert_value(&mut labels, key, &text);
        }
    }
    match compute["tagsList"].as_array() {
        Some(tags) => {
            for tag in tags {
                if let (Some(name), Some(value)) =
                    (tag["name"].as_str(), scalar_text(&tag["value"]))
                {
                    insert_value(
                        &mut labels,
                        &format!("azure:tag:{}", escape_key(name)),
                        &value,
                    );
                }
            }
        }
        // Before tagsList (api-version 2019-06-04), tags came as "name:value;name:value".
        None => {
            for pair in compute["tags"].as_str().unwrap_or("").split(';') {
                if let Some((name, value)) = pair.split_once(':') {
                    insert_value(
                        &mut labels,
                        &format!("azure:tag:{}", escape_key(name)),
                        value,
                    );
                }
            }
        }
    }
    for interface in instance["network"]["interface"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(mac) = scalar_text(&interface["macAddress"]) {
            insert_value(&mut labels, "azure:network:mac", &mac);
        }
        for address in interface["ipv4"]["ipAddress"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(private) = scalar_text(&address["privateIpAddress"]) {
                insert_value(&mut labels, "azure:network:private-ipv4", &private);
            }
            if let Some(public) = scalar_text(&address["publicIpAddress"]) {
                insert_value(&mut labels, "azure:network:public-ipv4", &public);
            }
        }
    }
    if let Some(loadbalancer) = loadbalancer {
        for address in loadbalancer["loadbalancer"]["publicIpAddresses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(frontend) = scalar_text(&address["frontendIpAddress"]) {
                insert_value(&mut labels, "azure:network:public-ipv4", &frontend);
            }
        }
    }
    labels
}

#[async_trait]
impl CloudSource for AzureCollector {
    const CLOUD: Cloud = Cloud::Azure;
    const LABEL_KEYS: &'static [KeySpec] = LABEL_KEYS;
    const ENDPOINT: EndpointSource = EndpointSource {
        config_field: "collectors.azure.endpoint",
        env_var: ENDPOINT_VAR,
        default: LINK_LOCAL,
    };
    type Config = AzureConfig;

    fn configured_endpoint(config: &AzureConfig) -> &str {
        &config.endpoint
    }

    fn with_settings(
        _config: &AzureConfig,
        settings: CloudSettings,
        http: MetadataHttp,
    ) -> Result<Self, SetupError> {
        Ok(Self { http, settings })
    }

    fn settings(&self) -> &CloudSettings {
        &self.settings
    }

    async fn collect_from(&self, approach: Approach) -> Result<Collected, CollectError> {
        let first = approach.first_timeout(self.settings.timeout);
        let instance_path = format!("/metadata/instance?api-version={INSTANCE_API_VERSION}");
        let instance = match self.document(&instance_path, first, &approach).await? {
            Some(instance) => instance,
            None => {
                let error = format!("{} answered 404 Not Found", self.http.url(&instance_path));
                return Err(approach.mismatch(Cloud::Azure, error));
            }
        };
        if !instance["compute"].is_object() {
            return Err(approach.mismatch(
                Cloud::Azure,
                format!(
                    "{} answered a document without `compute`",
                    self.http.url(&instance_path)
                ),
            ));
        }
        self.settings.confirm();
        let lb_path = format!("/metadata/loadbalancer?api-version={LOADBALANCER_API_VERSION}");
        let (loadbalancer, partial) = match self
            .document(&lb_path, self.settings.timeout, &Approach::Expect)
            .await
        {
            Ok(document) => (document, None),
            Err(error) => (None, Some(format!("load balancer: {error}"))),
        };
        Ok(Collected {
            labels: labels_of(&instance, loadbalancer.as_ref()),
            partial,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_strings_empty_ones_are_dropped_and_public_addresses_are_unique() {
        let instance = json!({
            "compute": {"name": "vm", "zone": "", "platformFaultDomain": 0, "vmScaleSetName": "",
                        "tagsList": [{"name": "team", "value": "a b"}, {"name": "empty", "value": ""}]},
            "network": {"interface": [
                {"macAddress": "000D3A27CA60",
                 "ipv4": {"ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": "51.0.0.1"},
                                        {"privateIpAddress": "10.0.0.5", "publicIpAddress": ""}]}},
                {"macAddress": "000D3A27CA61", "ipv4": {"ipAddress": []}}
            ]}
        });
        let lb = json!({"loadbalancer": {"publicIpAddresses": [
            {"frontendIpAddress": "51.0.0.1", "privateIpAddress": "10.0.0.4"},
            {"frontendIpAddress": "52.0.0.2", "privateIpAddress": "10.0.0.4"}]}});
        let labels = labels_of(&instance, Some(&lb));
        assert_eq!(
            labels.to_text(),
            "azure:name: vm\n\
             azure:network:mac: 000D3A27CA60\n\
             azure:network:mac: 000D3A27CA61\n\
             azure:network:private-ipv4: 10.0.0.4\n\
             azure:network:private-ipv4: 10.0.0.5\n\
             azure:network:public-ipv4: 51.0.0.1\n\
             azure:network:public-ipv4: 52.0.0.2\n\
             azure:tag:team: a b\n"
        );
    }

    #[test]
    fn tags_before_tags_list_are_split() {
        let instance = json!({"compute": {"tags": "department:accounting;region:emea"}});
        let labels = labels_of(&instance, None);
        assert_eq!(labels.get("azure:tag:department"), ["accounting"]);
        assert_eq!(labels.get("azure:tag:region"), ["emea"]);
    }
}
