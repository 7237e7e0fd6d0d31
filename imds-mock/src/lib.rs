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
pub mod config;
pub mod control;
mod ec2;
mod fixtures;
mod gcp;
mod identity;
pub mod requestlog;
pub mod scenario;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri, header};
use tokio::sync::watch;

pub use azure::ScheduledEvents;
pub use ec2::TokenMode;
pub use fixtures::Fixtures;
pub use scenario::Scenario;

/// Which clouds the mock serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

pub use config::ImdsMockArgs;

/// Everything that shapes the mock's answers at start.
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
    /// Scenarios, timed from the start.
    pub scenarios: Vec<Scenario>,
    /// Where the request log goes as JSON lines, if anywhere.
    pub request_log: Option<requestlog::Sink>,
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
            scenarios: Vec::new(),
            request_log: None,
        }
    }
}

/// What can change while the mock serves (scenarios, the control API).
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub(crate) fixtures: Arc<Fixtures>,
    pub(crate) failures: Vec<(String, u16)>,
    pub(crate) latency: Duration,
    pub(crate) ec2_tokens: TokenMode,
    pub(crate) drop_token_endpoint: bool,
    pub(crate) azure_events: ScheduledEvents,
    pub(crate) scenarios: Vec<scenario::Progress>,
}

pub(crate) struct Mock {
    cloud: CloudChoice,
    state: RwLock<State>,
    /// Bumped on every change of the served data (GCP `wait_for_change` waits on it).
    pub(crate) changes: watch::Sender<u64>,
    ec2: ec2::Ec2Mock,
    log: requestlog::RequestLog,
    /// The key GCP identity tokens are signed with, made when first needed.
    identity: std::sync::OnceLock<Result<identity::Signer, String>>,
}

impl Mock {
    fn new(options: MockOptions) -> std::io::Result<Self> {
        Ok(Self {
            cloud: options.cloud,
            state: RwLock::new(State {
                fixtures: Arc::new(options.fixtures),
                failures: options.failures,
                latency: options.latency,
                ec2_tokens: options.ec2_tokens,
                drop_token_endpoint: options.drop_token_endpoint,
                azure_events: ScheduledEvents::default(),
                scenarios: Vec::new(),
            }),
            changes: watch::channel(0).0,
            ec2: ec2::Ec2Mock::new(),
            log: requestlog::RequestLog::new(options.request_log.as_ref())?,
            identity: std::sync::OnceLock::new(),
        })
    }

    /// The identity token signer (made on first use).
    pub(crate) fn signer(&self) -> Result<&identity::Signer, &str> {
        self.identity
            .get_or_init(identity::Signer::new)
            .as_ref()
            .map_err(String::as_str)
    }

    /// A copy of the state (cheap: the fixtures are shared).
    pub(crate) fn snapshot(&self) -> State {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the state; `data` says whether served data changed (waking `wait_for_change`).
    pub(crate) fn change<T>(&self, data: bool, change: impl FnOnce(&mut State) -> T) -> T {
        let result = change(&mut self.state.write().unwrap_or_else(|e| e.into_inner()));
        if data {
            self.changes.send_modify(|generation| *generation += 1);
        }
        result
    }

    /// Schedules `scenario`, timed from now; it fires in a task of its own.
    pub(crate) fn schedule(self: &Arc<Self>, scenario: Scenario) {
        let fires_at = scenario.fires_at(SystemTime::now());
        let index = self.change(false, |state| {
            state.scenarios.push(scenario::Progress {
                spec: scenario.spec.clone(),
                fires_at: scenario::rfc3339(fires_at),
                fired: false,
            });
            state.scenarios.len() - 1
        });
        let mock = Arc::clone(self);
        tokio::spawn(async move {
            let wait = fires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            mock.change(true, |state| {
                scenario.apply(state, SystemTime::now());
                if let Some(progress) = state.scenarios.get_mut(index) {
                    progress.fired = true;
                }
            });
            tracing::info!(scenario = %scenario.spec, "scenario fired");
        });
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

    /// `METHOD /path` of every request so far (the newest 10 000).
    pub fn requests(&self) -> Vec<String> {
        self.mock
            .log
            .since(0)
            .0
            .into_iter()
            .map(|entry| format!("{} {}", entry.method, entry.path))
            .collect()
    }

    /// Answers `status` to paths starting with `prefix` from now on.
    pub fn fail(&self, prefix: &str, status: u16) {
        self.mock.change(false, |state| {
            state.failures.push((prefix.to_owned(), status))
        });
    }

    /// Stops injecting failures.
    pub fn heal(&self) {
        self.mock.change(false, |state| state.failures.clear());
    }

    /// Forgets every EC2 token issued, as a restarted service would.
    pub fn forget_ec2_tokens(&self) {
        self.mock.ec2.forget_tokens();
    }

    /// Starts `scenario` (timed from now).
    pub fn start_scenario(&self, scenario: Scenario) {
        self.mock.schedule(scenario);
    }

    /// A router serving the control API of this mock (`docs/imds-mock.md`).
    pub fn control_router(&self) -> Router {
        control::router(Arc::clone(&self.mock))
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
    /// The body (Azure's scheduled-event acknowledgements).
    body: bytes::Bytes,
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
            body: bytes::Bytes::new(),
        }
    }

    /// How many times query parameter `name` is given.
    fn param_count(&self, name: &str) -> usize {
        self.query.iter().filter(|(n, _)| n == name).count()
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

/// The largest request body read (Azure acknowledgements are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// Which cloud a request is for, by its path and headers, among those served.
fn cloud_of(served: CloudChoice, request: &MockRequest) -> Option<CloudChoice> {
    match request.segments.first().map(String::as_str) {
        Some("computeMetadata") if served.serves(CloudChoice::Gcp) => Some(CloudChoice::Gcp),
        Some("metadata") if served.serves(CloudChoice::Azure) => Some(CloudChoice::Azure),
        // GCP clients "ping" the root with their header and check the answer's flavor.
        None if served.serves(CloudChoice::Gcp)
            && (request.header("metadata-flavor").is_some() || served == CloudChoice::Gcp) =>
        {
            Some(CloudChoice::Gcp)
        }
        _ if served.serves(CloudChoice::Ec2) => Some(CloudChoice::Ec2),
        _ => None,
    }
}

/// An injected failure, shaped as the cloud shapes its errors.
fn injected(cloud: Option<CloudChoice>, status: u16, path: &str) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = status.canonical_reason().unwrap_or("Error");
    match cloud {
        Some(CloudChoice::Gcp) => {
            gcp::error(status, &format!("{reason}: injected failure for {path}\n"))
        }
        Some(CloudChoice::Azure) => {
            azure::error(status, &format!("{reason}. Injected failure for {path}"))
        }
        _ => reply(
            status,
            "text/plain",
            format!("{} - {reason}\n", status.as_u16()),
        ),
    }
}

async fn handle(
    AxumState(mock): AxumState<Arc<Mock>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response<Body> {
    let arrived = Instant::now();
    let time = SystemTime::now();
    let logged_headers = requestlog::interesting_headers(&headers);
    let mut request = MockRequest::from_parts(method, &uri, headers);
    request.body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let cloud = cloud_of(mock.cloud, &request);
    let response = answer(&mock, cloud, &request).await;
    mock.log.record(requestlog::LoggedRequest {
        seq: 0,
        time: humantime::format_rfc3339_millis(time).to_string(),
        method: request.method.to_string(),
        path: request.path(),
        query: uri.query().unwrap_or("").to_owned(),
        cloud: match cloud {
            Some(CloudChoice::Ec2) => "ec2",
            Some(CloudChoice::Azure) => "azure",
            Some(CloudChoice::Gcp) => "gcp",
            _ => "none",
        },
        status: response.status().as_u16(),
        headers: logged_headers,
        millis: arrived.elapsed().as_millis() as u64,
    });
    response
}

async fn answer(
    mock: &Arc<Mock>,
    cloud: Option<CloudChoice>,
    request: &MockRequest,
) -> Response<Body> {
    let state = mock.snapshot();
    if !state.latency.is_zero() {
        tokio::time::sleep(state.latency).await;
    }
    let path = request.path();
    let failure = state
        .failures
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        .map(|(_, status)| *status);
    if let Some(status) = failure {
        return injected(cloud, status, &path);
    }
    if mock.cloud.serves(CloudChoice::Gcp)
        && let [first, version, certs] = request.segments.as_slice()
        && first == "oauth2"
        && certs == "certs"
    {
        return gcp::certificates(mock, version);
    }
    match cloud {
        Some(CloudChoice::Gcp) => gcp::serve(mock, request).await,
        Some(CloudChoice::Azure) => azure::handle(mock, &state, request),
        Some(CloudChoice::Ec2) | Some(CloudChoice::All) => {
            mock.ec2.handle(&state, &state.fixtures.ec2, request).await
        }
        None => reply(StatusCode::NOT_FOUND, "text/plain", "Not Found\n"),
    }
}

/// Serves the mock on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, options: MockOptions) -> std::io::Result<()> {
    let scenarios = options.scenarios.clone();
    let mock = Arc::new(Mock::new(options)?);
    for scenario in scenarios {
        mock.schedule(scenario);
    }
    serve_mock(listener, mock).await
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
    let scenarios = options.scenarios.clone();
    let mock = Arc::new(Mock::new(options)?);
    for scenario in scenarios {
        mock.schedule(scenario);
    }
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

/// Runs the mock until SIGINT or SIGTERM: the metadata service, and the control API when
/// `--control-listen` says where.
pub async fn run(args: ImdsMockArgs) -> anyhow::Result<()> {
    let settings = config::Settings::resolve(args)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listen {}: cannot bind", settings.listen))?;
    let address = listener.local_addr()?;
    let control = match settings.control_listen {
        Some(control) => Some(
            tokio::net::TcpListener::bind(control)
                .await
                .with_context(|| format!("control-listen {control}: cannot bind"))?,
        ),
        None => None,
    };
    let cloud = settings.options.cloud;
    let scenarios = settings.options.scenarios.clone();
    let mock = Arc::new(Mock::new(settings.options).context("request log")?);
    for scenario in scenarios {
        mock.schedule(scenario);
    }
    eprintln!(
        "imds-mock: serving {} on http://{address}",
        match cloud {
            CloudChoice::All => "EC2, Azure and GCP",
            CloudChoice::Ec2 => "EC2",
            CloudChoice::Azure => "Azure",
            CloudChoice::Gcp => "GCP",
        }
    );
    let control_task = control.map(|listener| {
        if let Ok(address) = listener.local_addr() {
            eprintln!("imds-mock: control API on http://{address}");
        }
        let app = control::router(Arc::clone(&mock));
        tokio::spawn(async move { axum::serve(listener, app).await })
    });
    tokio::select! {
        served = serve_mock(listener, mock) => served.context("imds-mock")?,
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated() => {}
    }
    if let Some(task) = control_task {
        task.abort();
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

/// `n` random hex digits (unguessable enough for tokens and ids in a mock).
pub(crate) fn random_hex(n: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(n + 16);
    while out.len() < n {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        out.push_str(&format!("{:016x}", hasher.finish()));
    }
    out.truncate(n);
    out
}

/// A random version-4 UUID.
pub(crate) fn random_uuid() -> String {
    let hex = random_hex(32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
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
    fn bundled_fixtures_pass_their_own_checks() {
        let fixtures = Fixtures::bundled();
        ec2::check_fixture(&fixtures.ec2).unwrap();
        azure::check_fixture(&fixtures.azure).unwrap();
        gcp::check_fixture(&fixtures.gcp).unwrap();
    }
}
