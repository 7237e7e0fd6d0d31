//! `imds-mock`: a cloud instance metadata service for CI pipelines and tests.
//!
//! It serves EC2 (`/latest/…`, dated versions, `/latest/api/token`), Azure (`/metadata/…`) and
//! GCP (`/computeMetadata/v1/…`) on one port — their paths do not clash — or one of them, from
//! fixture files (`docs/imds-mock.md` describes the format; the bundled ones reproduce the
//! reference's labels). It follows each protocol closely enough for the clouds' own client
//! libraries to work against it unchanged: IMDSv2 tokens and their modes, Azure's required
//! header and api-version, GCP's `Metadata-Flavor`, listings, `recursive`, `alt`, `ETag`.
//! Requests in absolute form (`GET http://169.254.169.254/latest/…`) are served like any other,
//! so clients with a hard-coded address reach it through `http_proxy`. Faults can be injected:
//! added latency, an error status for a path, a token endpoint that never answers.

mod azure;
mod ec2;
mod fixtures;
mod gcp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri, header};

pub use ec2::TokenMode;
pub use fixtures::Fixtures;

/// Which clouds the mock serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CloudChoice {
    /// EC2 only.
    Ec2,
    /// Azure only.
    Azure,
    /// GCP only.
    Gcp,
    /// All three on one port.
    All,
}

impl CloudChoice {
    fn serves(self, cloud: CloudChoice) -> bool {
        self == CloudChoice::All || self == cloud
    }
}

/// `imds-mock`'s options.
#[derive(Debug, clap::Args)]
pub struct ImdsMockArgs {
    /// Which cloud to serve.
    #[arg(long, value_enum, default_value = "all")]
    pub cloud: CloudChoice,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:1338")]
    pub listen: SocketAddr,
    /// Directory with `ec2.json`, `azure.json` and `gcp.json` (a missing file: the bundled one).
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// IMDSv2 tokens: `optional` (v1 and v2), `required` (401 without a token), `disabled`
    /// (the token request gets 403), `v1-only` (the token request gets 405).
    #[arg(long, value_enum, default_value = "optional")]
    pub ec2_tokens: TokenMode,
    /// Latency added to every answer, e.g. `200ms`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub latency: Option<Duration>,
    /// Answer STATUS to every request whose path starts with PATH (repeatable), e.g.
    /// `/latest/meta-data/instance-id=500`.
    #[arg(long = "fail", value_name = "PATH=STATUS", value_parser = parse_failure)]
    pub failures: Vec<(String, u16)>,
    /// Never answer EC2 token requests (what a container behind a hop limit of 1 sees).
    #[arg(long)]
    pub drop_token_endpoint: bool,
}

fn parse_failure(text: &str) -> Result<(String, u16), String> {
    let (path, status) = text.rsplit_once('=').ok_or_else(|| {
        format!("{text:?}: expected PATH=STATUS, e.g. /latest/meta-data/ami-id=500")
    })?;
    let status: u16 = status
        .parse()
        .ok()
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| format!("{text:?}: {status:?} is not an HTTP status (100-599)"))?;
    if !path.starts_with('/') {
        return Err(format!("{text:?}: the path must start with /"));
    }
    Ok((path.to_owned(), status))
}

/// Everything that shapes the mock's answers.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Which clouds are served.
    pub cloud: CloudChoice,
    /// The documents.
    pub fixtures: Fixtures,
    /// EC2 token mode.
    pub ec2_tokens: TokenMode,
    /// Added to every answer.
    pub latency: Duration,
    /// Path prefix → status answered instead.
    pub failures: Vec<(String, u16)>,
    /// EC2 token requests never get an answer.
    pub drop_token_endpoint: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            cloud: CloudChoice::All,
            fixtures: Fixtures::bundled(),
            ec2_tokens: TokenMode::Optional,
            latency: Duration::ZERO,
            failures: Vec::new(),
            drop_token_endpoint: false,
        }
    }
}

struct Mock {
    options: MockOptions,
    ec2: ec2::Ec2Mock,
    /// The injected failures (from the options, changeable while serving).
    failures: std::sync::Mutex<Vec<(String, u16)>>,
    /// `METHOD /path` of every request, for tests.
    log: std::sync::Mutex<Vec<String>>,
}

impl Mock {
    fn new(options: MockOptions) -> Self {
        Self {
            ec2: ec2::Ec2Mock::new(options.ec2_tokens, options.drop_token_endpoint),
            failures: std::sync::Mutex::new(options.failures.clone()),
            log: std::sync::Mutex::new(Vec::new()),
            options,
        }
    }
}

/// A mock running in the background of a test.
pub struct MockHandle {
    /// Where it listens.
    pub address: SocketAddr,
    mock: Arc<Mock>,
    task: tokio::task::JoinHandle<()>,
}

impl MockHandle {
    /// Its base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `METHOD /path` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.mock
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Answers `status` to paths starting with `prefix` from now on.
    pub fn fail(&self, prefix: &str, status: u16) {
        self.mock
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((prefix.to_owned(), status));
    }

    /// Stops injecting failures.
    pub fn heal(&self) {
        self.mock
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Forgets every EC2 token issued, as a restarted service would.
    pub fn forget_ec2_tokens(&self) {
        self.mock.ec2.forget_tokens();
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request, reduced to what the three protocols look at.
pub(crate) struct MockRequest {
    method: Method,
    /// Percent-decoded path segments, empty ones (doubled slashes) dropped.
    segments: Vec<String>,
    query: Vec<(String, String)>,
    headers: HeaderMap,
}

impl MockRequest {
    fn from_parts(method: Method, uri: &Uri, headers: HeaderMap) -> Self {
        let path = uri.path();
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let query = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect();
        Self {
            method,
            segments,
            query,
            headers,
        }
    }

    /// The value of query parameter `name`.
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A header's value as text (header names are case-insensitive by construction).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The normalized path: `/` + segments joined by `/`.
    fn path(&self) -> String {
        format!("/{}", self.segments.join("/"))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response with a body and a content type.
pub(crate) fn reply(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Body>,
) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

async fn handle(
    State(mock): State<Arc<Mock>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let request = MockRequest::from_parts(method, &uri, headers);
    if !mock.options.latency.is_zero() {
        tokio::time::sleep(mock.options.latency).await;
    }
    let path = request.path();
    mock.log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("{} {path}", request.method));
    let injected = mock
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        .map(|(_, status)| *status);
    if let Some(status) = injected {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return reply(
            status,
            "text/plain",
            format!("injected failure for {path}\n"),
        );
    }
    let cloud = mock.options.cloud;
    let first = request.segments.first().map(String::as_str);
    match first {
        Some("computeMetadata") if cloud.serves(CloudChoice::Gcp) => {
            gcp::handle(&mock.options.fixtures.gcp, &request)
        }
        Some("metadata") if cloud.serves(CloudChoice::Azure) => {
            azure::handle(&mock.options.fixtures.azure, &request)
        }
        // GCP clients "ping" the root with their header and check the answer's flavor.
        None if cloud.serves(CloudChoice::Gcp)
            && (request.header("metadata-flavor").is_some() || cloud == CloudChoice::Gcp) =>
        {
            gcp::handle(&mock.options.fixtures.gcp, &request)
        }
        _ if cloud.serves(CloudChoice::Ec2) => {
            mock.ec2.handle(&mock.options.fixtures.ec2, &request).await
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "Not Found\n"),
    }
}

/// Serves the mock on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, options: MockOptions) -> std::io::Result<()> {
    serve_mock(listener, Arc::new(Mock::new(options))).await
}

async fn serve_mock(listener: tokio::net::TcpListener, mock: Arc<Mock>) -> std::io::Result<()> {
    let app = Router::new().fallback(handle).with_state(mock);
    axum::serve(listener, app).await
}

/// Starts the mock on an ephemeral port of 127.0.0.1, in the background; for tests. It stops
/// when the handle is dropped.
pub async fn spawn(options: MockOptions) -> std::io::Result<MockHandle> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let mock = Arc::new(Mock::new(options));
    let served = Arc::clone(&mock);
    let task = tokio::spawn(async move {
        if let Err(error) = serve_mock(listener, served).await {
            tracing::error!("imds-mock: {error}");
        }
    });
    Ok(MockHandle {
        address,
        mock,
        task,
    })
}

/// Runs the mock until SIGINT or SIGTERM.
pub async fn run(args: ImdsMockArgs) -> anyhow::Result<()> {
    let fixtures = match &args.fixtures {
        Some(dir) => Fixtures::load(dir)?,
        None => Fixtures::bundled(),
    };
    let options = MockOptions {
        cloud: args.cloud,
        fixtures,
        ec2_tokens: args.ec2_tokens,
        latency: args.latency.unwrap_or_default(),
        failures: args.failures,
        drop_token_endpoint: args.drop_token_endpoint,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let address = listener.local_addr()?;
    eprintln!(
        "imds-mock: serving {} on http://{address}",
        match args.cloud {
            CloudChoice::All => "EC2, Azure and GCP",
            CloudChoice::Ec2 => "EC2",
            CloudChoice::Azure => "Azure",
            CloudChoice::Gcp => "GCP",
        }
    );
    tokio::select! {
        served = serve(listener, options) => served.context("imds-mock")?,
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated() => {}
    }
    Ok(())
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_and_doubled_slashes_collapse() {
        let uri: Uri = "http://169.254.169.254//latest//meta-data/tags/instance/a%20b/?x=1&y=%2F"
            .parse()
            .unwrap();
        let request = MockRequest::from_parts(Method::GET, &uri, HeaderMap::new());
        assert_eq!(
            request.segments,
            ["latest", "meta-data", "tags", "instance", "a b"]
        );
        assert_eq!(request.param("y"), Some("/"));
        assert_eq!(request.path(), "/latest/meta-data/tags/instance/a b");
    }

    #[test]
    fn failures_are_path_equals_status() {
        assert_eq!(
            parse_failure("/latest/meta-data/ami-id=500").unwrap(),
            ("/latest/meta-data/ami-id".to_owned(), 500)
        );
        assert!(
            parse_failure("/x=99")
                .unwrap_err()
                .contains("not an HTTP status")
        );
        assert!(
            parse_failure("x=500")
                .unwrap_err()
                .contains("must start with /")
        );
        assert!(parse_failure("/x").unwrap_err().contains("PATH=STATUS"));
    }

    #[test]
    fn bundled_fixtures_pass_their_own_checks() {
        let fixtures = Fixtures::bundled();
        ec2::check_fixture(&fixtures.ec2).unwrap();
        azure::check_fixture(&fixtures.azure).unwrap();
        gcp::check_fixture(&fixtures.gcp).unwrap();
    }
}
