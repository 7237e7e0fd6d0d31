//! The EC2 part of the mock: IMDSv1 and IMDSv2 as the instance metadata service answers them.
//!
//! - `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` between 1 and 21600
//!   (else 400) and answers a token, echoing the TTL header. A request carrying
//!   `X-Forwarded-For` is refused (403): IMDS does not serve through proxies.
//! - A `GET` with a token needs a token this mock issued and that has not expired (else 401).
//!   Without one, it is served unless the mode is `required` (401).
//! - `/latest/` and dated versions (`/2021-07-15/`) serve the same tree; doubled and trailing
//!   slashes are accepted; a directory answers its listing (sub-directories end in `/`, no
//!   trailing newline); anything else is 404.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{Method, Response, StatusCode};
use serde_json::Value;

use crate::{MockRequest, State, reply};

/// How the mock treats IMDSv2 tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenMode {
    /// Requests with or without a token are served (a valid token is still checked).
    Optional,
    /// Requests without a token get 401.
    Required,
    /// The metadata endpoint is off (`HttpEndpoint: disabled`): every request gets 403.
    Disabled,
    /// An old IMDS without tokens: the token request gets 405.
    #[value(name = "v1-only")]
    #[serde(rename = "v1-only")]
    V1Only,
}

const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const MAX_TTL: u64 = 21_600;
const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2008-02-01",
    "2009-04-04",
    "2011-01-01",
    "2012-01-12",
    "2014-02-25",
    "2016-09-02",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-07-15",
    "2022-09-24",
    "latest",
];

pub(crate) struct Ec2Mock {
    tokens: std::sync::Mutex<HashMap<String, Instant>>,
}

/// The fixture must be a tree with `meta-data/instance-id`.
pub(crate) fn check_fixture(tree: &Value) -> Result<(), String> {
    if !tree["meta-data"].is_object() {
        return Err("expected an object with a `meta-data` object".to_owned());
    }
    if !tree["meta-data"]["instance-id"].is_string() {
        return Err("`meta-data` has no `instance-id` string".to_owned());
    }
    Ok(())
}

fn text(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    reply(status, "text/plain", body)
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "404 - Not Found\n")
}

/// A version segment: `latest`, or a date like `2021-07-15`.
fn is_version(segment: &str) -> bool {
    segment == "latest"
        || segment == "1.0"
        || (segment.len() == 10
            && segment.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                _ => b.is_ascii_digit(),
            }))
}

impl Ec2Mock {
    pub(crate) fn new() -> Self {
        Self {
            tokens: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn forget_tokens(&self) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub(crate) async fn handle(
        &self,
        state: &State,
        tree: &Value,
        request: &MockRequest,
    ) -> Response<Body> {
        if state.ec2_tokens == TokenMode::Disabled {
            // An instance whose metadata endpoint is turned off refuses everything.
            return text(StatusCode::FORBIDDEN, "403 - Forbidden\n");
        }
        if request.header("x-forwarded-for").is_some() {
            return text(
                StatusCode::FORBIDDEN,
                "403 - Forbidden: requests with X-Forwarded-For are refused\n",
            );
        }
        let segments: Vec<&str> = request.segments.iter().map(String::as_str).collect();
        let Some((version, rest)) = segments.split_first() else {
            return text(StatusCode::OK, VERSIONS.join("\n"));
        };
        if !is_version(version) {
            return not_found();
        }
        if rest == ["api", "token"] {
            return match request.method {
                Method::PUT => self.issue_token(state, request).await,
                _ => {
                    let mut response =
                        text(StatusCode::METHOD_NOT_ALLOWED, "405 - Method Not Allowed\n");
                    response
                        .headers_mut()
                        .insert(axum::http::header::ALLOW, "PUT".parse().expect("static"));
                    response
                }
            };
        }
        if request.method != Method::GET && request.method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "405 - Method Not Allowed\n");
        }
        match request.header(TOKEN_HEADER) {
            Some(token) => {
                let valid = self
                    .tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(token)
                    .is_some_and(|expires| Instant::now() < *expires);
                if !valid {
                    return text(StatusCode::UNAUTHORIZED, "401 - Unauthorized\n");
                }
            }
            None if state.ec2_tokens == TokenMode::Required => {
                return text(StatusCode::UNAUTHORIZED, "401 - Unauthorized\n");
            }
            None => {}
        }
        let mut node = tree;
        for segment in rest {
            match node.get(*segment) {
                Some(child) => node = child,
                None => return not_found(),
            }
        }
        match node {
            Value::Object(children) => {
                let listing: Vec<String> = children
                    .iter()
                    .map(|(name, child)| {
                        if child.is_object() {
                            format!("{name}/")
                        } else {
                            name.clone()
                        }
                    })
                    .collect();
                text(StatusCode::OK, listing.join("\n"))
            }
            leaf => text(StatusCode::OK, leaf_text(leaf)),
        }
    }

    async fn issue_token(&self, state: &State, request: &MockRequest) -> Response<Body> {
        if state.drop_token_endpoint {
            // What a container behind a hop limit of 1 sees: the answer never arrives.
            std::future::pending::<()>().await;
        }
        match state.ec2_tokens {
            TokenMode::Disabled => return text(StatusCode::FORBIDDEN, "403 - Forbidden\n"),
            TokenMode::V1Only => {
                return text(StatusCode::METHOD_NOT_ALLOWED, "405 - Method Not Allowed\n");
            }
            TokenMode::Optional | TokenMode::Required => {}
        }
        let ttl = request
            .header(TTL_HEADER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ttl| (1..=MAX_TTL).contains(ttl));
        let Some(ttl) = ttl else {
            return text(StatusCode::BAD_REQUEST, "400 - Bad Request\n");
        };
        let token = crate::random_hex(48);
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        tokens.retain(|_, expires| *expires > now);
        tokens.insert(token.clone(), now + Duration::from_secs(ttl));
        drop(tokens);
        let mut response = text(StatusCode::OK, token);
        response.headers_mut().insert(
            "x-aws-ec2-metadata-token-ttl-seconds",
            ttl.to_string().parse().expect("digits"),
        );
        response
    }
}

/// A leaf as IMDS serves it: strings as they are (with `${NOW}` and `${EXPIRATION}` — now and
/// six hours on, RFC 3339 — filled in, for credentials), lists one item a line.
fn leaf_text(leaf: &Value) -> String {
    match leaf {
        Value::String(text) => {
            if !text.contains("${") {
                return text.clone();
            }
            let now = SystemTime::now();
            text.replace(
                "${NOW}",
                &humantime::format_rfc3339_seconds(now).to_string(),
            )
            .replace(
                "${EXPIRATION}",
                &humantime::format_rfc3339_seconds(now + Duration::from_secs(6 * 3600)).to_string(),
            )
        }
        Value::Array(items) => items.iter().map(leaf_text).collect::<Vec<_>>().join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_latest_or_dates() {
        assert!(is_version("latest") && is_version("2021-07-15") && is_version("1.0"));
        assert!(
            !is_version("meta-data") && !is_version("2021-7-15") && !is_version("computeMetadata")
        );
    }

    #[test]
    fn credentials_get_a_live_expiration() {
        let text = leaf_text(&Value::String("{\"Expiration\": \"${EXPIRATION}\"}".into()));
        assert!(!text.contains("${"), "{text}");
        let stamp = text.split('"').nth(3).unwrap();
        let expires = humantime::parse_rfc3339(stamp).unwrap();
        assert!(expires > SystemTime::now() + Duration::from_secs(5 * 3600));
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(crate::random_hex(48), crate::random_hex(48));
        assert_eq!(crate::random_hex(48).len(), 48);
    }
}
