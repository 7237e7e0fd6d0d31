//! The EC2 collector: `ec2:*` labels from the instance metadata service (IMDS).
//!
//! IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`, then every `GET`
//! carries the token in `X-aws-ec2-metadata-token`. The token is reused until shortly before it
//! expires; a 401 (the service forgot it) fetches a new one once. IMDSv1 (no token) is used only
//! when the token request is refused with 403, 404 or 405 and `imdsV1Fallback` allows it —
//! never when the token request timed out: that is the signature of a hop limit of 1 seen from a
//! container, where the `PUT` answer is dropped on the way back, and it is reported as such.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};

use serde::{Deserialize, Serialize};

use super::{
    Approach, Cloud, CloudSettings, CloudSource, DEFAULT_TIMEOUT, EndpointSource, LINK_LOCAL,
    MetadataHttp, PROBE_TIMEOUT, RequestError, SetupError, insert_value,
};
use crate::collector::{CollectError, Collected, KeySpec};
use crate::config::{Enabled, duration, section};
use labels::{LabelSet, Trust, escape_key};

/// The environment variable the AWS SDKs read for the IMDS endpoint.
pub const ENDPOINT_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";

/// Lifetime asked for each token unless configured: the longest IMDS grants.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(21_600);

/// `collectors.ec2`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Ec2Config {
    /// `auto` (default), `true` or `false`.
    pub enabled: Enabled,
    /// Deadline of one collection (default 2s).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Base URL of the metadata service (empty, the default:
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else `http://169.254.169.254`).
    pub endpoint: String,
    /// Fall back to IMDSv1 (no token) when the token request is refused with 403, 404 or 405
    /// (default true). Never done when the token request timed out.
    #[serde(rename = "imdsV1Fallback")]
    pub imds_v1_fallback: bool,
    /// Lifetime asked for each IMDSv2 token, 1s to 6h (default 6h).
    #[serde(with = "duration")]
    pub token_ttl: Duration,
    /// Key globs (`*` wildcard) whose labels are kept; empty (the default): all.
    pub include_keys: Vec<String>,
    /// Key globs whose labels are left out (default none).
    pub exclude_keys: Vec<String>,
}

impl Default for Ec2Config {
    fn default() -> Self {
        Self {
            enabled: Enabled::Auto,
            timeout: DEFAULT_TIMEOUT,
            endpoint: String::new(),
            imds_v1_fallback: true,
            token_ttl: DEFAULT_TOKEN_TTL,
            include_keys: Vec::new(),
            exclude_keys: Vec::new(),
        }
    }
}

section!(Ec2Config);

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";

/// Single-valued keys and their paths under `/latest/meta-data/` (`instance-id` aside: it is
/// read first, to confirm the service is IMDS).
const LEAVES: &[(&str, &str)] = &[
    ("ami-id", "ec2:ami:id"),
    ("instance-type", "ec2:instance:type"),
    ("hostname", "ec2:network:hostname"),
    ("local-hostname", "ec2:network:local-hostname"),
    ("local-ipv4", "ec2:network:local-ipv4"),
    ("mac", "ec2:network:mac"),
    ("public-hostname", "ec2:network:public-hostname"),
    ("public-ipv4", "ec2:network:public-ipv4"),
    (
        "placement/availability-zone",
        "ec2:placement:availability-zone",
    ),
    (
        "placement/availability-zone-id",
        "ec2:placement:availability-zone-id",
    ),
    ("placement/region", "ec2:placement:region"),
    ("services/domain", "ec2:services:domain"),
    ("services/partition", "ec2:services:partition"),
];

/// Every key this collector emits (`<KEY>`: an instance tag's name).
pub const LABEL_KEYS: &[KeySpec] = crate::key_specs![Trust::Node;
    "ec2:account:id",
    "ec2:ami:id",
    "ec2:instance:id",
    "ec2:instance:type",
    "ec2:network:hostname",
    "ec2:network:local-hostname",
    "ec2:network:local-ipv4",
    "ec2:network:mac",
    "ec2:network:public-hostname",
    "ec2:network:public-ipv4",
    "ec2:placement:availability-zone",
    "ec2:placement:availability-zone-id",
    "ec2:placement:region",
    "ec2:security-groups",
    "ec2:services:domain",
    "ec2:services:partition",
    "ec2:tag:<KEY>",
];

/// Reads `ec2:*` labels.
pub struct Ec2Collector {
    settings: CloudSettings,
    http: MetadataHttp,
    v1_fallback: bool,
    token_ttl_secs: u64,
    token: tokio::sync::Mutex<Option<Token>>,
}

struct Token {
    value: String,
    renew_at: Instant,
}

/// How GETs are authenticated.
enum Auth {
    Token(String),
    V1,
}

impl Ec2Collector {
    /// A token still good for a while, or a new one; `V1` when IMDSv2 is refused and fallback
    /// is allowed.
    async fn auth(&self, timeout: Duration, approach: &Approach) -> Result<Auth, CollectError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(Auth::Token(token.value.clone()));
        }
        *cached = None;
        let ttl = self.token_ttl_secs.to_string();
        let requested = Instant::now();
        let reply = match self
            .http
            .send(Method::PUT, TOKEN_PATH, &[(TTL_HEADER, &ttl)], timeout)
            .await
        {
            Ok(reply) => reply,
            Err(error @ RequestError::TimedOut { .. }) => {
                // A lost answer to the PUT alone is the signature of a hop limit of 1 seen from
                // a container; a service that answers nothing at all is just not there.
                let plain_get = self
                    .http
                    .send(
                        Method::GET,
                        "/latest/meta-data/",
                        &[],
                        timeout.min(PROBE_TIMEOUT),
                    )
                    .await;
                return Err(match plain_get {
                    Ok(_) => approach.mismatch(
                        Cloud::Ec2,
                        format!(
                            "the IMDSv2 token request got no answer ({error}) while plain GETs \
                             are answered; IMDSv1 was not tried. Likely cause: the instance's \
                             metadata hop limit (HttpPutResponseHopLimit) is 1 and the agent \
                             runs one network hop further, in a container; raise it to 2"
                        ),
                    ),
                    Err(_) => approach.first_failure(Cloud::Ec2, &error),
                });
            }
            Err(error) => return Err(approach.first_failure(Cloud::Ec2, &error)),
        };
        match reply.status {
            StatusCode::OK => {
                let value = reply.text().trim().to_owned();
                if value.is_empty() {
                    return Err(CollectError::failed(format!(
                        "{} answered an empty token",
                        self.http.url(TOKEN_PATH)
                    )));
                }
                // Renew a tenth of the lifetime (at most a minute) early, so a token never
                // expires between being checked and being used.
                let lifetime = Duration::from_secs(self.token_ttl_secs);
                let margin = (lifetime / 10).min(Duration::from_secs(60));
                *cached = Some(Token {
                    value: value.clone(),
                    renew_at: requested + lifetime - margin,
                });
                Ok(Auth::Token(value))
            }
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                if self.v1_fallback {
                    tracing::debug!(status = %reply.status, "IMDSv2 refused; using IMDSv1");
                    Ok(Auth::V1)
                } else {
                    Err(CollectError::failed(format!(
                        "{} refused the IMDSv2 token request with {} and \
                         collectors.ec2.imdsV1Fallback is false",
                        self.http.url(TOKEN_PATH),
                        reply.status
                    )))
                }
            }
            status => Err(approach.mismatch(
                Cloud::Ec2,
                format!(
                    "{} answered the token request with {status}: {}",
                    self.http.url(TOKEN_PATH),
                    reply.text().trim()
                ),
            )),
        }
    }

    /// One `GET` under `/latest/` within `timeout`: `Ok(None)` for 404.
    async fn get_within(
        &self,
        path: &str,
        auth: &Auth,
        timeout: Duration,
    ) -> Result<Option<String>, GetError> {
        let full = format!("/latest/{path}");
        let headers: Vec<(&str, &str)> = match auth {
            Auth::Token(token) => vec![(TOKEN_HEADER, token.as_str())],
            Auth::V1 => Vec::new(),
        };
        let reply = self
            .http
            .send(Method::GET, &full, &headers, timeout)
            .await
            .map_err(GetError::NoAnswer)?;
        match reply.status {
            StatusCode::OK => Ok(Some(reply.text())),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNAUTHORIZED => Err(GetError::Unauthorized),
            status => Err(GetError::Other(format!(
                "{} answered {status}",
                self.http.url(&full)
            ))),
        }
    }

    async fn get(&self, path: &str, auth: &Auth) -> Result<Option<String>, GetError> {
        self.get_within(path, auth, self.settings.timeout).await
    }

    /// The instance id: the first read, which also tells whether this is EC2's IMDS at all.
    async fn instance_id(&self, auth: &Auth, timeout: Duration) -> Result<String, GetError> {
        match self
            .get_within("meta-data/instance-id", auth, timeout)
            .await?
        {
            Some(id) if !id.trim().is_empty() => Ok(id),
            _ => Err(GetError::Other(format!(
                "{} has no meta-data/instance-id",
                self.settings.endpoint.base
            ))),
        }
    }

    /// Every label, with one set of credentials; the instance id was read already.
    async fn read_all(&self, auth: &Auth, instance_id: &str) -> Result<Collected, GetError> {
        let leaf_reads = join_all(LEAVES.iter().map(|(path, _)| self.get_meta(path, auth)));
        let (leaves, groups, identity, tags) = tokio::join!(
            leaf_reads,
            self.get_meta("security-groups", auth),
            self.get("dynamic/instance-identity/document", auth),
            self.tags(auth),
        );
        let mut labels = LabelSet::new();
        insert_value(&mut labels, "ec2:instance:id", instance_id);
        let mut missing = Vec::new();
        let mut note = |what: &str, error: GetError| -> Result<(), GetError> {
            match error {
                GetError::Unauthorized => Err(GetError::Unauthorized),
                GetError::NoAnswer(error) => {
                    missing.push(format!("{what}: {error}"));
                    Ok(())
                }
                GetError::Other(reason) => {
                    missing.push(format!("{what}: {reason}"));
                    Ok(())
                }
            }
        };
        for ((path, key), read) in LEAVES.iter().zip(leaves) {
            match read {
                Ok(Some(value)) => insert_value(&mut labels, key, &value),
                Ok(None) => {}
                Err(error) => note(path, error)?,
            }
        }
        match groups {
            Ok(Some(text)) => {
                for group in text.lines() {
                    insert_value(&mut labels, "ec2:security-groups", group);
                }
            }
            Ok(None) => {}
            Err(error) => note("security-groups", error)?,
        }
        match identity {
            Ok(Some(document)) => match account_of(&document) {
                Some(account) => insert_value(&mut labels, "ec2:account:id", &account),
                None => note(
                    "instance-identity document",
                    GetError::Other("not JSON with an accountId string".to_owned()),
                )?,
            },
            Ok(None) => {}
            Err(error) => note("instance-identity document", error)?,
        }
        match tags {
            Ok(tags) => {
                for (name, value) in tags {
                    insert_value(
                        &mut labels,
                        &format!("ec2:tag:{}", escape_key(&name)),
                        &value,
                    );
                }
            }
            Err(error) => note("tags/instance", error)?,
        }
        Ok(Collected {
            labels,
            partial: (!missing.is_empty()).then(|| missing.join("; ")),
            ..Default::default()
        })
    }

    async fn get_meta(&self, path: &str, auth: &Auth) -> Result<Option<String>, GetError> {
        self.get(&format!("meta-data/{path}"), auth).await
    }

    /// Instance tags, when "instance tags in metadata" is on (else the listing is a 404).
    async fn tags(&self, auth: &Auth) -> Result<Vec<(String, String)>, GetError> {
        let Some(listing) = self.get_meta("tags/instance", auth).await? else {
            return Ok(Vec::new());
        };
        let names: Vec<&str> = listing
            .lines()
            .map(str::trim)
            .filter(|name| !name.is_empty() && !name.ends_with('/'))
            .collect();
        let values = join_all(
            names
                .iter()
                .map(|name| self.get_meta_owned(format!("tags/instance/{name}"), auth)),
        )
        .await;
        let mut tags = Vec::new();
        for (name, value) in names.into_iter().zip(values) {
            if let Some(value) = value? {
                tags.push((name.to_owned(), value));
            }
        }
        Ok(tags)
    }

    async fn get_meta_owned(&self, path: String, auth: &Auth) -> Result<Option<String>, GetError> {
        self.get_meta(&path, auth).await
    }
}

enum GetError {
    /// The token was not accepted (expired, or the service restarted).
    Unauthorized,
    /// No answer.
    NoAnswer(RequestError),
    /// An answer other than 200, 401 or 404.
    Other(String),
}

impl GetError {
    fn into_collect_error(self, approach: &Approach, base: &str) -> CollectError {
        match self {
            Self::Unauthorized => approach.mismatch(
                Cloud::Ec2,
                format!("{base} answered 401 Unauthorized even to a new token"),
            ),
            Self::NoAnswer(error) => approach.first_failure(Cloud::Ec2, &error),
            Self::Other(reason) => approach.mismatch(Cloud::Ec2, reason),
        }
    }
}

pub(crate) fn account_of(document: &str) -> Option<String> {
    let parsed: serde_json::Value = serde_json::from_str(document).ok()?;
    parsed.get("accountId")?.as_str().map(str::to_owned)
}

#[async_trait]
impl CloudSource for Ec2Collector {
    const CLOUD: Cloud = Cloud::Ec2;
    const LABEL_KEYS: &'static [KeySpec] = LABEL_KEYS;
    const ENDPOINT: EndpointSource = EndpointSource {
        config_field: "collectors.ec2.endpoint",
        env_var: ENDPOINT_VAR,
        default: LINK_LOCAL,
    };
    type Config = Ec2Config;

    fn configured_endpoint(config: &Ec2Config) -> &str {
        &config.endpoint
    }

    fn with_settings(
        config: &Ec2Config,
        settings: CloudSettings,
        http: MetadataHttp,
    ) -> Result<Self, SetupError> {
        let ttl = config.token_ttl;
        if ttl < Duration::from_secs(1) || ttl > DEFAULT_TOKEN_TTL {
            return Err(SetupError::OutOfRange {
                field: "collectors.ec2.tokenTtl",
                value: humantime::format_duration(ttl).to_string(),
                accepted: "IMDS accepts 1s to 6h",
            });
        }
        Ok(Self {
            http,
            settings,
            v1_fallback: config.imds_v1_fallback,
            token_ttl_secs: ttl.as_secs(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    fn settings(&self) -> &CloudSettings {
        &self.settings
    }

    async fn collect_from(&self, approach: Approach) -> Result<Collected, CollectError> {
        let first = approach.first_timeout(self.settings.timeout);
        let base = &self.settings.endpoint.base;
        let mut auth = self.auth(first, &approach).await?;
        let mut renewed = false;
        loop {
            let outcome = match self.instance_id(&auth, first).await {
                Ok(instance_id) => {
                    self.settings.confirm();
                    self.read_all(&auth, &instance_id).await
                }
                Err(error) => Err(error),
            };
            match outcome {
                Ok(collected) => return Ok(collected),
                // The token was forgotten (it expired early, or the service restarted): once
                // more with a new one.
                Err(GetError::Unauthorized) if !renewed => {
                    renewed = true;
                    *self.token.lock().await = None;
                    auth = self.auth(self.settings.timeout, &approach).await?;
                }
                Err(error) => return Err(error.into_collect_error(&approach, base)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostRoots;

    #[test]
    fn an_out_of_range_token_lifetime_is_refused_by_name() {
        let config = Ec2Config {
            token_ttl: Duration::from_secs(7 * 3600),
            ..Ec2Config::default()
        };
        let error = Ec2Collector::with_env(&config, &HostRoots::default(), |_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("collectors.ec2.tokenTtl") && error.contains("1s to 6h"),
            "{error}"
        );
    }

    #[test]
    fn the_account_comes_from_the_identity_document() {
        let document = r#"{"accountId" : "123456789012", "region" : "eu-central-1"}"#;
        assert_eq!(account_of(document).as_deref(), Some("123456789012"));
        assert_eq!(account_of("not json"), None);
    }
}
