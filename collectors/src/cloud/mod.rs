//! The cloud collectors — [`ec2`], [`azure`], [`gcp`] — and what they share: where the metadata
//! service is, whether this machine is on that cloud, and one HTTP client that never uses a proxy
//! and bounds every request in time and size.
//!
//! With `enabled: auto` a collector first reads DMI (`sys_vendor`, `bios_vendor`, `product_name`,
//! `chassis_asset_tag`, `/sys/hypervisor/uuid`). When DMI names its cloud, it collects with the
//! full deadline and a failure is an error. Otherwise its first request is a probe bounded by
//! [`PROBE_TIMEOUT`]: no answer makes the collector `unavailable` within that time; a metadata
//! service that answers (a mock, or a cloud without DMI) is used. With `enabled: true` there is
//! no detection and no answer is an error.

pub mod azure;
pub mod ec2;
pub mod gcp;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use crate::builtin::Builtin;
use crate::collector::{CollectError, Collected, Collector, KeySpec, Scope, Subject};
use crate::config::{Enabled, Section};
use crate::error::BoxError;
use crate::host::HostRoots;
use crate::sysfsdmi::read_dmi_file;
use labels::{LabelSet, escape_bytes};

/// How long the first request may take when DMI did not name the cloud: the time a machine
/// that is not on that cloud spends finding out.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// The deadline of one collection unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest response body read from a metadata service; larger answers are an error.
pub const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// The link-local address every one of the three clouds serves its metadata on.
pub const LINK_LOCAL: &str = "http://169.254.169.254";

/// One of the three clouds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// Amazon EC2.
    Ec2,
    /// Microsoft Azure.
    Azure,
    /// Google Compute Engine.
    Gcp,
}

impl Cloud {
    /// The collector's name and configuration section (`ec2`, `azure`, `gcp`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ec2 => "ec2",
            Self::Azure => "azure",
            Self::Gcp => "gcp",
        }
    }

    /// The name used in messages.
    pub fn title(self) -> &'static str {
        match self {
            Self::Ec2 => "EC2",
            Self::Azure => "Azure",
            Self::Gcp => "GCP",
        }
    }
}

/// What DMI says about one cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmiVerdict {
    /// DMI names the cloud; the evidence.
    OnCloud(String),
    /// DMI is readable and names something else; what it names.
    Elsewhere(String),
    /// No DMI data to decide from (many VMs and containers).
    Unknown,
}

/// Azure's fixed chassis asset tag.
const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// Reads DMI (through `roots`) for signs of `cloud`.
pub fn detect(roots: &HostRoots, cloud: Cloud) -> DmiVerdict {
    let field = |file: &str| read_dmi_file(roots, file);
    let sys_vendor = field("sys_vendor");
    let bios_vendor = field("bios_vendor");
    let bios_version = field("bios_version");
    let product_name = field("product_name");
    let asset_tag = field("chassis_asset_tag");
    let hypervisor_uuid = std::fs::read_to_string(roots.sys.join("hypervisor/uuid")).ok();
    let found =
        |what: &str, value: &Option<String>| value.as_ref().map(|v| format!("DMI {what} is {v:?}"));
    let evidence = match cloud {
        Cloud::Ec2 => [
            ("sys_vendor", &sys_vendor, "Amazon EC2"),
            ("bios_vendor", &bios_vendor, "Amazon EC2"),
            ("bios_version", &bios_version, "amazon"),
        ]
        .into_iter()
        .find(|(_, value, sign)| {
            value
                .as_deref()
                .is_some_and(|v| v.to_ascii_lowercase().contains(&sign.to_ascii_lowercase()))
        })
        .and_then(|(what, value, _)| found(what, value))
        .or_else(|| {
            // Xen-based instances: the hypervisor UUID starts with "ec2".
            hypervisor_uuid
                .as_deref()
                .filter(|uuid| uuid.trim().to_ascii_lowercase().starts_with("ec2"))
                .map(|uuid| format!("/sys/hypervisor/uuid is {:?}", uuid.trim()))
        }),
        Cloud::Azure => {
            if asset_tag.as_deref() == Some(AZURE_ASSET_TAG) {
                found("chassis_asset_tag", &asset_tag)
            } else if sys_vendor.as_deref() == Some("Microsoft Corporation")
                && product_name.as_deref() == Some("Virtual Machine")
            {
                Some(
                    "DMI sys_vendor is \"Microsoft Corporation\", product_name \"Virtual Machine\""
                        .to_owned(),
                )
            } else {
                None
            }
        }
        Cloud::Gcp => [
            ("sys_vendor", &sys_vendor, "Google"),
            ("bios_vendor", &bios_vendor, "Google"),
            ("product_name", &product_name, "Google Compute Engine"),
        ]
        .into_iter()
        .find(|(_, value, sign)| value.as_deref() == Some(*sign))
        .and_then(|(what, value, _)| found(what, value)),
    };
    if let Some(evidence) = evidence {
        return DmiVerdict::OnCloud(evidence);
    }
    match (&sys_vendor, &product_name) {
        (None, None) => DmiVerdict::Unknown,
        _ => DmiVerdict::Elsewhere(format!(
            "DMI names {} {}",
            sys_vendor.as_deref().unwrap_or("?"),
            product_name.as_deref().unwrap_or("?")
        )),
    }
}

/// Where a collector's metadata service is, and why there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL without a trailing slash, e.g. `http://169.254.169.254`.
    pub base: String,
    /// Where it came from: `collectors.ec2.endpoint`, an environment variable, or the default.
    pub source: String,
}

impl Endpoint {
    /// The configured URL, else the environment variable `var` (through `env`, with `http://`
    /// added when it holds only `host:port`), else `default`. An invalid URL is an error naming
    /// its source.
    pub fn resolve(
        configured: &str,
        config_field: &str,
        var: &str,
        env: impl Fn(&str) -> Option<String>,
        default: &str,
    ) -> Result<Self, SetupError> {
        let (raw, origin) = match (configured.trim(), env(var)) {
            ("", Some(url)) if !url.is_empty() => (url, format!("environment variable {var}")),
            ("", _) => (default.to_owned(), "the default".to_owned()),
            (url, _) => (url.to_owned(), config_field.to_owned()),
        };
        let with_scheme = if raw.contains("://") {
            raw.clone()
        } else {
            format!("http://{raw}")
        };
        let url = match reqwest::Url::parse(&with_scheme) {
            Ok(url) => url,
            Err(source) => {
                return Err(SetupError::InvalidUrl {
                    origin,
                    url: raw,
                    source: source.into(),
                });
            }
        };
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(SetupError::NotHttp { origin, url: raw });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(SetupError::QueryOrFragment { origin, url: raw });
        }
        Ok(Self {
            base: with_scheme.trim_end_matches('/').to_owned(),
            source: origin,
        })
    }
}

/// Why a cloud collector could not be set up from its section.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The endpoint is not a URL.
    #[error("{origin}: invalid metadata service URL {url:?}")]
    InvalidUrl {
        /// Where the URL came from (`collectors.ec2.endpoint`, an environment variable).
        origin: String,
        /// The URL as given.
        url: String,
        /// What the parser found.
        #[source]
        source: BoxError,
    },
    /// The endpoint is a URL of another scheme.
    #[error("{origin}: metadata service URL {url:?} must be http:// or https://")]
    NotHttp {
        /// Where the URL came from.
        origin: String,
        /// The URL as given.
        url: String,
    },
    /// The endpoint carries a query or a fragment.
    #[error("{origin}: metadata service URL {url:?} must not carry a query or fragment")]
    QueryOrFragment {
        /// Where the URL came from.
        origin: String,
        /// The URL as given.
        url: String,
    },
    /// The HTTP client could not be built.
    #[error("metadata HTTP client: {what}")]
    Client {
        /// What failed (TLS setup, the system's trust store).
        what: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A setting outside what the service accepts.
    #[error("{field}: {value} is out of range: {accepted}")]
    OutOfRange {
        /// The setting, e.g. `collectors.ec2.tokenTtl`.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        accepted: &'static str,
    },
}

/// Reads the process environment, empty values as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A response read in full (within [`MAX_RESPONSE`]).
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Nothing answered within the time allowed.
    #[error("no answer from {url} within {} ms", .after.as_millis())]
    TimedOut {
        /// The URL.
        url: String,
        /// The time allowed.
        after: Duration,
    },
    /// The connection failed (refused, unreachable).
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The answer was larger than [`MAX_RESPONSE`].
    #[error("the answer from {url} is larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// Another transport error.
    #[error("request to {url} failed: {reason}")]
    Other {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl RequestError {
    /// Whether nothing answered at all (no connection or no reply): what a machine that is not
    /// on the cloud sees.
    pub fn is_no_answer(&self) -> bool {
        matches!(self, Self::TimedOut { .. } | Self::Connect { .. })
    }
}

/// An HTTP client for a metadata service: no proxy (IMDS is link-local; a proxy would answer
/// for another machine), a deadline per request, a size limit per response.
#[derive(Debug, Clone)]
pub struct MetadataHttp {
    client: reqwest::Client,
    base: String,
}

impl MetadataHttp {
    /// A client for the service at `endpoint`. An `https://` endpoint is verified against the
    /// system's trust store.
    pub fn new(endpoint: &Endpoint) -> Result<Self, SetupError> {
        use rustls_platform_verifier::BuilderVerifierExt;
        let failed = |what: &'static str| {
            move |source: rustls::Error| SetupError::Client {
                what,
                source: source.into(),
            }
        };
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(failed("TLS setup"))?
            .with_platform_verifier()
            .map_err(failed("loading the system's trust store"))?
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| SetupError::Client {
                what: "building it",
                source: source.into(),
            })?;
        Ok(Self {
            client,
            base: endpoint.base.clone(),
        })
    }

    /// The full URL of `path_and_query` (which starts with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    /// Sends one request with `headers` and reads the whole answer, all within `timeout`.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let url = self.url(path_and_query);
        let mut request = self.client.request(method, &url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let exchange = async {
            let mut response = request.send().await.map_err(|e| classify(&url, &e))?;
            let status = response.status();
            let headers = response.headers().clone();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| classify(&url, &e))? {
                if body.len() + chunk.len() > MAX_RESPONSE {
                    return Err(RequestError::TooLarge {
                        url: url.clone(),
                        limit: MAX_RESPONSE,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Reply {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(RequestError::TimedOut {
                    url: url.clone(),
                    after: timeout,
                })
            })
    }
}

fn classify(url: &str, error: &reqwest::Error) -> RequestError {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason = cause.to_string();
        source = cause.source();
    }
    if error.is_connect() {
        RequestError::Connect {
            url: url.to_owned(),
            reason,
        }
    } else {
        RequestError::Other {
            url: url.to_owned(),
            reason,
        }
    }
}

/// How a collection goes about the metadata service, decided from `enabled` and DMI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approach {
    /// Expect the service: any failure is an error.
    Expect,
    /// Probe first: no answer within [`PROBE_TIMEOUT`] means "not on this cloud"; why DMI did
    /// not decide is kept for the message.
    Probe(String),
}

/// Decides how to approach the service (`None`: the collector is off).
pub fn approach(enabled: Enabled, roots: &HostRoots, cloud: Cloud) -> Option<Approach> {
    match enabled {
        Enabled::Never => None,
        Enabled::Always => Some(Approach::Expect),
        Enabled::Auto => Some(match detect(roots, cloud) {
            DmiVerdict::OnCloud(_) => Approach::Expect,
            DmiVerdict::Elsewhere(what) => Approach::Probe(what),
            DmiVerdict::Unknown => Approach::Probe("no DMI data".to_owned()),
        }),
    }
}

impl Approach {
    /// The deadline of the first request.
    pub fn first_timeout(&self, full: Duration) -> Duration {
        match self {
            Self::Expect => full,
            Self::Probe(_) => full.min(PROBE_TIMEOUT),
        }
    }

    /// What a failed first request means: "unavailable" when probing found nothing, else the
    /// error.
    pub fn first_failure(&self, cloud: Cloud, error: &RequestError) -> CollectError {
        match self {
            Self::Probe(dmi) if error.is_no_answer() => {
                CollectError::unavailable(format!("not on {} ({dmi})", cloud.title()))
                    .because(error.clone())
            }
            _ => CollectError::failed(format!("{} metadata service", cloud.title()))
                .because(error.clone()),
        }
    }

    /// What an answer unlike the cloud's means: while probing, something else at that address
    /// (a sandbox's proxy, a captive portal), so "unavailable"; when expected, an error.
    pub fn mismatch(&self, cloud: Cloud, what: String) -> CollectError {
        match self {
            Self::Probe(dmi) => {
                CollectError::unavailable(format!("not on {} ({dmi}; {what})", cloud.title()))
            }
            Self::Expect => CollectError::failed(what),
        }
    }
}

/// Adds `value`, trimmed and escaped, under `key`; an empty value is not stored.
pub fn insert_value(labels: &mut LabelSet, key: &str, value: &str) {
    labels.insert(key, escape_bytes(value.trim().as_bytes()));
}

/// A JSON scalar as label text: metadata services send strings, but a number or a boolean is
/// taken as its text rather than dropped.
pub fn scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        serde_json::Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Shared parts of a cloud collector's settings.
#[derive(Debug)]
pub struct CloudSettings {
    /// `enabled`.
    pub enabled: Enabled,
    /// The deadline of one collection.
    pub timeout: Duration,
    /// The metadata service.
    pub endpoint: Endpoint,
    /// The host, for DMI.
    pub roots: HostRoots,
    /// Set once the service answered like the cloud's: from then on this machine is known to
    /// be on it, and a failure is an error (so a failed refresh keeps the labels, stale).
    pub confirmed: std::sync::atomic::AtomicBool,
}

/// Where a cloud's endpoint setting can come from.
#[derive(Debug, Clone, Copy)]
pub struct EndpointSource {
    /// The configuration field, for messages (`collectors.ec2.endpoint`).
    pub config_field: &'static str,
    /// The environment variable the cloud's clients read.
    pub env_var: &'static str,
    /// The cloud's own address.
    pub default: &'static str,
}

impl CloudSettings {
    /// Settings (with nothing confirmed yet) and the HTTP client for the endpoint found from
    /// `configured`, then `source.env_var` in `env`, then `source.default`.
    pub fn new(
        source: &EndpointSource,
        enabled: Enabled,
        timeout: Duration,
        configured: &str,
        roots: &HostRoots,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, MetadataHttp), SetupError> {
        let endpoint = Endpoint::resolve(
            configured,
            source.config_field,
            source.env_var,
            env,
            source.default,
        )?;
        let http = MetadataHttp::new(&endpoint)?;
        let settings = Self {
            enabled,
            timeout,
            endpoint,
            roots: roots.clone(),
            confirmed: std::sync::atomic::AtomicBool::new(false),
        };
        Ok((settings, http))
    }

    /// How this collection approaches the service (`None`: disabled).
    pub fn approach(&self, cloud: Cloud) -> Option<Approach> {
        if self.enabled != Enabled::Never
            && self.confirmed.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Some(Approach::Expect);
        }
        approach(self.enabled, &self.roots, cloud)
    }

    /// Records that the service answered like the cloud's.
    pub fn confirm(&self) {
        self.confirmed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What one cloud's collector brings; [`Collector`] and [`Builtin`] are implemented once for
/// the three of them: a disabled collector is `unavailable`, otherwise the collection is
/// approached as its settings and DMI say.
#[async_trait]
pub trait CloudSource: Send + Sync + Sized + 'static {
    /// Which cloud.
    const CLOUD: Cloud;
    /// Every key the collector can emit.
    const LABEL_KEYS: &'static [KeySpec];
    /// Where its endpoint can come from.
    const ENDPOINT: EndpointSource;
    /// Its section, `collectors.<cloud>`.
    type Config: Section;

    /// The `endpoint` field of its section.
    fn configured_endpoint(config: &Self::Config) -> &str;

    /// The collector for `config`, given the settings and the HTTP client made from it. Fails
    /// on a setting the service would not accept.
    fn with_settings(
        config: &Self::Config,
        settings: CloudSettings,
        http: MetadataHttp,
    ) -> Result<Self, SetupError>;

    /// The collector for `config`, reading DMI through `roots` and the endpoint's environment
    /// variable through `env` (tests inject it). Fails on an invalid endpoint or setting.
    fn with_env(
        config: &Self::Config,
        roots: &HostRoots,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SetupError> {
        let (settings, http) = CloudSettings::new(
            &Self::ENDPOINT,
            config.enabled(),
            config.timeout(),
            Self::configured_endpoint(config),
            roots,
            env,
        )?;
        Self::with_settings(config, settings, http)
    }

    /// Its settings.
    fn settings(&self) -> &CloudSettings;

    /// One collection, approached as `approach` says.
    async fn collect_from(&self, approach: Approach) -> Result<Collected, CollectError>;
}

impl<S: CloudSource> Builtin for S {
    type Config = S::Config;

    fn build(config: &S::Config, roots: &HostRoots) -> Result<Self, BoxError> {
        Ok(S::with_env(config, roots, process_env)?)
    }
}

#[async_trait]
impl<S: CloudSource> Collector for S {
    fn name(&self) -> &'static str {
        S::CLOUD.name()
    }

    fn scope(&self) -> Scope {
        Scope::Node
    }

    fn label_keys(&self) -> &'static [KeySpec] {
        S::LABEL_KEYS
    }

    async fn collect(&self, _subject: &Subject) -> Result<Collected, CollectError> {
        let Some(approach) = self.settings().approach(S::CLOUD) else {
            return Err(CollectError::unavailable("disabled"));
        };
        self.collect_from(approach).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots_with_dmi(files: &[(&str, &str)]) -> (tempfile::TempDir, HostRoots) {
        let dir = tempfile::tempdir().unwrap();
        let dmi = dir.path().join("class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        for (name, value) in files {
            std::fs::write(dmi.join(name), format!("{value}\n")).unwrap();
        }
        let roots = HostRoots {
            sys: dir.path().to_owned(),
            ..HostRoots::default()
        };
        (dir, roots)
    }

    #[test]
    fn dmi_names_each_cloud_and_only_that_one() {
        let cases: [(&[(&str, &str)], Cloud); 4] = [
            (
                &[("sys_vendor", "Amazon EC2"), ("product_name", "t3.micro")],
                Cloud::Ec2,
            ),
            (&[("bios_version", "4.11.amazon")], Cloud::Ec2),
            (
                &[
                    ("sys_vendor", "Microsoft Corporation"),
                    ("product_name", "Virtual Machine"),
                    ("chassis_asset_tag", AZURE_ASSET_TAG),
                ],
                Cloud::Azure,
            ),
            (
                &[
                    ("sys_vendor", "Google"),
                    ("product_name", "Google Compute Engine"),
                ],
                Cloud::Gcp,
            ),
        ];
        for (files, cloud) in cases {
            let (_dir, roots) = roots_with_dmi(files);
            for other in [Cloud::Ec2, Cloud::Azure, Cloud::Gcp] {
                let verdict = detect(&roots, other);
                assert_eq!(
                    matches!(verdict, DmiVerdict::OnCloud(_)),
                    other == cloud,
                    "{files:?} for {other:?}: {verdict:?}"
                );
            }
        }
    }

    #[test]
    fn xen_instances_are_found_by_hypervisor_uuid_and_no_dmi_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let roots = HostRoots {
            sys: dir.path().to_owned(),
            ..HostRoots::default()
        };
        assert_eq!(detect(&roots, Cloud::Ec2), DmiVerdict::Unknown);
        std::fs::create_dir_all(dir.path().join("hypervisor")).unwrap();
        std::fs::write(
            dir.path().join("hypervisor/uuid"),
            "ec2e1916-9099-7caf-fd21-012345abcdef\n",
        )
        .unwrap();
        assert!(matches!(detect(&roots, Cloud::Ec2), DmiVerdict::OnCloud(_)));
        let (_dir, roots) =
            roots_with_dmi(&[("sys_vendor", "QEMU"), ("product_name", "Standard PC")]);
        assert_eq!(
            detect(&roots, Cloud::Gcp),
            DmiVerdict::Elsewhere("DMI names QEMU Standard PC".to_owned())
        );
    }

    #[test]
    fn endpoints_come_from_config_then_environment_then_default() {
        let env = |name: &str| (name == "GCE_METADATA_HOST").then(|| "127.0.0.1:8080".to_owned());
        let resolve = |configured: &str| {
            Endpoint::resolve(
                configured,
                "collectors.gcp.endpoint",
                "GCE_METADATA_HOST",
                env,
                "http://metadata.google.internal",
            )
        };
        let from_env = resolve("").unwrap();
        assert_eq!(from_env.base, "http://127.0.0.1:8080");
        assert_eq!(from_env.source, "environment variable GCE_METADATA_HOST");
        let configured = resolve("http://10.0.0.1:9000/").unwrap();
        assert_eq!(configured.base, "http://10.0.0.1:9000");
        assert_eq!(configured.source, "collectors.gcp.endpoint");
        let default = Endpoint::resolve("", "f", "UNSET", |_| None, LINK_LOCAL).unwrap();
        assert_eq!(default.base, LINK_LOCAL);
        let bad = resolve("ftp://x").unwrap_err().to_string();
        assert!(
            bad.contains("collectors.gcp.endpoint") && bad.contains("http://"),
            "{bad}"
        );
        let bad = resolve("http://[::1").unwrap_err().to_string();
        assert!(bad.contains("invalid metadata service URL"), "{bad}");
    }
}
