//! The clouds' own client libraries against the IMDS mock, unmodified apart from their
//! documented endpoint settings: AWS's `aws-config` (IMDS client, credentials and region
//! providers) and Google's `google-cloud-auth` (metadata server credentials) in Rust, and
//! `botocore` and `google-auth` from PyPI (the Python part needs them installed: `.ci/run` does).

mod common;

use std::time::Duration;

use aws_config::imds;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::ProvideCredentials;
use imds_mock::{self, CloudChoice, MockHandle, MockOptions, TokenMode};

async fn mock(cloud: CloudChoice, ec2_tokens: TokenMode) -> MockHandle {
    imds_mock::spawn(MockOptions {
        cloud,
        ec2_tokens,
        ..MockOptions::default()
    })
    .await
    .unwrap()
}

fn aws_provider_config() -> ProviderConfig {
    let http = aws_smithy_http_client::Builder::new().build_http();
    ProviderConfig::without_region().with_http_client(http)
}

fn aws_imds_client(mock: &MockHandle) -> imds::Client {
    imds::Client::builder()
        .configure(&aws_provider_config())
        .endpoint(mock.url())
        .unwrap()
        .build()
}

#[tokio::test]
async fn aws_config_reads_metadata_credentials_and_region_with_tokens_required() {
    let mock = mock(CloudChoice::All, TokenMode::Required).await;
    let client = aws_imds_client(&mock);
    let instance_id = client.get("/latest/meta-data/instance-id").await.unwrap();
    assert_eq!(instance_id.as_ref(), "i-0214fc003bc83bcc1");
    let listing = client.get("/latest/meta-data/placement/").await.unwrap();
    assert_eq!(
        listing.as_ref(),
        "availability-zone\navailability-zone-id\nregion"
    );

    let credentials = imds::credentials::ImdsCredentialsProvider::builder()
        .configure(&aws_provider_config())
        .imds_client(client.clone())
        .build()
        .provide_credentials()
        .await
        .unwrap();
    assert_eq!(credentials.access_key_id(), "ASIAMOCKACCESSKEY000");
    assert_eq!(credentials.session_token(), Some("mock-session-token"));
    let expiry = credentials.expiry().unwrap();
    assert!(expiry > std::time::SystemTime::now() + Duration::from_secs(3600));

    let region = imds::region::ImdsRegionProvider::builder()
        .imds_client(client)
        .build()
        .region()
        .await
        .unwrap();
    assert_eq!(region.as_ref(), "eu-central-1");
    let requests = mock.requests();
    assert!(
        requests.iter().any(|r| r == "PUT /latest/api/token"),
        "{requests:?}"
    );
}

#[tokio::test]
async fn aws_config_is_refused_without_tokens_as_on_an_imdsv1_only_instance() {
    // aws-config speaks IMDSv2 only: against a v1-only service its token request gets 405 and
    // it reports an error instead of reading without a token.
    let mock = mock(CloudChoice::Ec2, TokenMode::V1Only).await;
    let error = aws_imds_client(&mock)
        .get("/latest/meta-data/instance-id")
        .await
        .unwrap_err();
    // The token request was refused with the mock's 405, and nothing was read without a token.
    let text = format!("{error:?}");
    assert!(
        matches!(error, imds::client::error::ImdsError::FailedToLoadToken(_))
            && text.contains("StatusCode(405)"),
        "{text}"
    );
    let requests = mock.requests();
    assert!(
        !requests.is_empty() && requests.iter().all(|r| r == "PUT /latest/api/token"),
        "{requests:?}"
    );
}

#[tokio::test]
async fn google_cloud_auth_gets_an_access_token_from_the_metadata_server() {
    common::install_crypto_provider();
    let mock = mock(CloudChoice::All, TokenMode::Optional).await;
    let credentials = google_cloud_auth::credentials::mds::Builder::default()
        .with_endpoint(mock.url())
        .build_access_token_credentials()
        .unwrap();
    let token = credentials.access_token().await.unwrap();
    assert!(token.token.starts_with("ya29.mock-"), "{}", token.token);
    let requests = mock.requests();
    assert!(
        requests
            .iter()
            .any(|r| r
                .starts_with("GET /computeMetadata/v1/instance/service-accounts/default/token")),
        "{requests:?}"
    );
}

/// Runs `script` (in `tests/clients/`) with `python3` and the given environment; `None` when
/// the Python packages are missing outside CI (reported as a skip).
fn python(script: &str, env: &[(&str, String)]) -> Option<std::process::Output> {
    let probe = common::run(
        std::process::Command::new("python3")
            .args(["-c", "import botocore, google.auth, requests"]),
    );
    if !common::require(
        probe.status.success(),
        "python3 with botocore, google-auth and requests (pip install botocore google-auth requests)",
    ) {
        return None;
    }
    let path = common::repo_root()
        .join("imds-mock/tests/clients")
        .join(script);
    let mut command = std::process::Command::new("python3");
    command.arg(&path);
    // Nothing from this machine's own AWS or Google configuration.
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "http_proxy",
        "HTTP_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        command.env_remove(var);
    }
    command
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("CLOUDSDK_CONFIG", "/nonexistent");
    for (name, value) in env {
        command.env(name, value);
    }
    Some(common::run(&mut command))
}

fn assert_ran(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The mock as the real subprocess, as a CI pipeline would run it.
struct MockProcess {
    child: std::process::Child,
    address: String,
}

impl MockProcess {
    fn start(args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = common::mock_cli()
            .args(["--listen", &address])
            .args(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // From here the guard kills and reaps the child on every path, panics included.
        let process = Self { child, address };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&process.address).is_ok() {
                return process;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("imds-mock did not start listening on {}", process.address);
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn botocore_gets_credentials_and_region_over_imdsv2_and_the_v1_fallback() {
    // `required` only works with a token (IMDSv2); `v1-only` (405) only through botocore's
    // fallback to IMDSv1; `disabled` (the endpoint off) not at all, as on such an instance.
    for mode in ["required", "v1-only", "disabled"] {
        let mock = MockProcess::start(&["--cloud", "ec2", "--ec2-tokens", mode]);
        let Some(output) = python(
            "botocore_client.py",
            &[(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://{}/", mock.address),
            )],
        ) else {
            return;
        };
        if mode == "disabled" {
            assert!(!output.status.success(), "{mode}: {output:?}");
            assert!(
                String::from_utf8_lossy(&output.stderr).contains("no credentials"),
                "{mode}: {output:?}"
            );
            continue;
        }
        let stdout = assert_ran(&output);
        assert!(
            stdout.contains("access_key=ASIAMOCKACCESSKEY000"),
            "{mode}: {stdout}"
        );
        assert!(stdout.contains("region=eu-central-1"), "{mode}: {stdout}");
        assert!(stdout.contains("method=iam-role"), "{mode}: {stdout}");
    }
}

#[test]
fn google_auth_finds_the_metadata_server_and_refreshes_a_token() {
    let mock = MockProcess::start(&["--cloud", "gcp"]);
    let Some(output) = python(
        "google_auth_client.py",
        &[
            ("GCE_METADATA_HOST", mock.address.clone()),
            ("GCE_METADATA_IP", mock.address.clone()),
        ],
    ) else {
        return;
    };
    let stdout = assert_ran(&output);
    assert!(stdout.contains("on_gce=True"), "{stdout}");
    assert!(stdout.contains("project=demo-project"), "{stdout}");
    assert!(stdout.contains("token=ya29.mock-"), "{stdout}");
    assert!(
        stdout.contains("email=758913618900-compute@developer.gserviceaccount.com"),
        "{stdout}"
    );
}

/// A free port of 127.0.0.1.
fn free_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// One HTTP/1.1 request to `address`, as a pipeline's `curl` would send it: (status, body).
fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

#[test]
fn botocore_sees_a_spot_notice_after_its_delay_and_the_run_is_logged_and_controllable() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let control = free_address();
    let mock = MockProcess::start(&[
        "--cloud",
        "ec2",
        "--ec2-tokens",
        "required",
        "--scenario",
        "ec2-spot-interruption:stop@2s",
        "--request-log",
        log.to_str().unwrap(),
        "--control-listen",
        &control,
    ]);
    let endpoint = [(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        format!("http://{}/", mock.address),
    )];
    let Some(output) = python("botocore_spot_notice.py", &endpoint) else {
        return;
    };
    let stdout = assert_ran(&output);
    assert!(stdout.contains("token=yes"), "{stdout}");
    assert!(stdout.contains("action=stop"), "{stdout}");
    let after: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("after="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1.0..10.0).contains(&after),
        "the notice came after {after} s"
    );

    // Every request, as JSON lines: the polls answered 404 before the notice, 200 after.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let notices: Vec<u64> = lines
        .iter()
        .filter(|l| l["path"] == "/latest/meta-data/spot/instance-action")
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    assert!(notices.len() >= 2 && notices[0] == 404, "{notices:?}");
    assert_eq!(notices.last(), Some(&200));
    assert!(
        lines
            .iter()
            .any(|l| l["method"] == "PUT" && l["path"] == "/latest/api/token"),
        "{lines:?}"
    );
    assert!(!std::fs::read_to_string(&log).unwrap().contains("ASIAMOCK"));

    // The control API, mid-run: the scenario is reported fired, a value changes under botocore.
    let (status, scenarios) = http(&control, "GET", "/scenarios", "");
    assert_eq!(status, 200);
    assert!(scenarios.contains("\"fired\":true"), "{scenarios}");
    // botocore takes the region from the availability zone.
    let (status, _) = http(
        &control,
        "PUT",
        "/values/ec2/meta-data/placement/availability-zone",
        "\"ap-southeast-2b\"",
    );
    assert_eq!(status, 204);
    let output = python("botocore_client.py", &endpoint).unwrap();
    let stdout = assert_ran(&output);
    assert!(stdout.contains("region=ap-southeast-2"), "{stdout}");
}

#[test]
fn google_auth_fetches_an_id_token_that_verifies_against_the_published_key() {
    let mock = MockProcess::start(&["--cloud", "gcp"]);
    let Some(output) = python(
        "google_id_token.py",
        &[
            ("GCE_METADATA_HOST", mock.address.clone()),
            ("GCE_METADATA_IP", mock.address.clone()),
            (
                "CERTS_URL",
                format!("http://{}/oauth2/v1/certs", mock.address),
            ),
        ],
    ) else {
        return;
    };
    let stdout = assert_ran(&output);
    for line in [
        "aud=https://service.example/api",
        "iss=https://accounts.google.com",
        "email=758913618900-compute@developer.gserviceaccount.com",
        "lifetime=3600",
        "other_audience=refused",
        "forged=refused",
    ] {
        assert!(stdout.contains(line), "{line} missing from\n{stdout}");
    }
    // google-auth asks for format=full: the instance's claims are in.
    assert!(!stdout.contains("instance=None"), "{stdout}");
}
