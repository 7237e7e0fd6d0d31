//! The IMDS mock's wire behaviour, request by request: what EC2, Azure and GCP clients rely on.

mod common;

use std::time::Duration;

use imds_mock::{self, CloudChoice, MockHandle, MockOptions, TokenMode};
use reqwest::{Method, StatusCode};

async fn mock(options: MockOptions) -> MockHandle {
    imds_mock::spawn(options).await.unwrap()
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = client.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

fn client() -> reqwest::Client {
    common::http_client()
}

async fn token(client: &reqwest::Client, base: &str, ttl: &str) -> Answer {
    send(
        client,
        Method::PUT,
        &format!("{base}/latest/api/token"),
        &[("X-aws-ec2-metadata-token-ttl-seconds", ttl)],
    )
    .await
}

#[tokio::test]
async fn ec2_tokens_are_validated_issued_with_their_ttl_and_expire() {
    let mock = mock(MockOptions {
        ec2_tokens: TokenMode::Required,
        ..MockOptions::default()
    })
    .await;
    let (c, base) = (client(), mock.url());
    for bad in ["0", "21601", "-1", "soon"] {
        assert_eq!(
            token(&c, &base, bad).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let missing = send(&c, Method::PUT, &format!("{base}/latest/api/token"), &[]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let issued = token(&c, &base, "21600").await;
    assert_eq!(issued.status, StatusCode::OK);
    assert_eq!(
        issued.headers["x-aws-ec2-metadata-token-ttl-seconds"],
        "21600"
    );
    let get = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let c = c.clone();
        let url = format!("{base}{path}");
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            send(&c, Method::GET, &url, &headers).await
        }
    };
    let id = "/latest/meta-data/instance-id";
    assert_eq!(get(id, vec![]).await.status, StatusCode::UNAUTHORIZED);
    let with = vec![("X-aws-ec2-metadata-token", issued.body.clone())];
    assert_eq!(get(id, with.clone()).await.body, "i-0214fc003bc83bcc1");
    // Header names in any case.
    let lower = vec![("x-AWS-ec2-METADATA-token", issued.body.clone())];
    assert_eq!(get(id, lower).await.status, StatusCode::OK);
    let forged = vec![("X-aws-ec2-metadata-token", "forged".to_owned())];
    assert_eq!(get(id, forged).await.status, StatusCode::UNAUTHORIZED);

    let short = token(&c, &base, "1").await;
    assert_eq!(short.headers["x-aws-ec2-metadata-token-ttl-seconds"], "1");
    let with_short = vec![("X-aws-ec2-metadata-token", short.body.clone())];
    assert_eq!(get(id, with_short.clone()).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(id, with_short).await.status,
        StatusCode::UNAUTHORIZED,
        "expired"
    );
    assert_eq!(
        get(id, with).await.status,
        StatusCode::OK,
        "the long token still works"
    );

    let via_proxy = send(
        &c,
        Method::PUT,
        &format!("{base}/latest/api/token"),
        &[
            ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
            ("X-Forwarded-For", "10.0.0.9"),
        ],
    )
    .await;
    assert_eq!(via_proxy.status, StatusCode::FORBIDDEN);
    let get_token = send(&c, Method::GET, &format!("{base}/latest/api/token"), &[]).await;
    assert_eq!(get_token.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn ec2_token_modes() {
    let c = client();
    for (mode, put, get_without) in [
        (TokenMode::Optional, StatusCode::OK, StatusCode::OK),
        (
            TokenMode::Required,
            StatusCode::OK,
            StatusCode::UNAUTHORIZED,
        ),
        // The metadata endpoint turned off: everything is refused.
        (
            TokenMode::Disabled,
            StatusCode::FORBIDDEN,
            StatusCode::FORBIDDEN,
        ),
        (
            TokenMode::V1Only,
            StatusCode::METHOD_NOT_ALLOWED,
            StatusCode::OK,
        ),
    ] {
        let mock = mock(MockOptions {
            ec2_tokens: mode,
            ..MockOptions::default()
        })
        .await;
        assert_eq!(token(&c, &mock.url(), "60").await.status, put, "{mode:?}");
        let url = format!("{}/latest/meta-data/ami-id", mock.url());
        assert_eq!(
            send(&c, Method::GET, &url, &[]).await.status,
            get_without,
            "{mode:?}"
        );
    }
    let dropped = mock(MockOptions {
        drop_token_endpoint: true,
        ..MockOptions::default()
    })
    .await;
    let put = reqwest::Client::new()
        .put(format!("{}/latest/api/token", dropped.url()))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        put.unwrap_err().is_timeout(),
        "a dropped token endpoint never answers"
    );
}

#[tokio::test]
async fn ec2_paths_listings_versions_and_absolute_form() {
    let mock = mock(MockOptions::default()).await;
    let (c, base) = (client(), mock.url());
    let get = |path: String| {
        let c = c.clone();
        async move { send(&c, Method::GET, &path, &[]).await }
    };
    let listing = get(format!("{base}/latest/meta-data/")).await;
    assert_eq!(listing.status, StatusCode::OK);
    assert!(listing.body.contains("\nplacement/\n") && listing.body.contains("\ninstance-id\n"));
    assert!(!listing.body.ends_with('\n'), "no trailing newline");
    for path in [
        "/2021-07-15/meta-data/placement/region",
        "/latest//meta-data//placement/region/",
        "/latest/meta-data/placement/region",
    ] {
        let answer = get(format!("{base}{path}")).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "eu-central-1"),
            "{path}"
        );
    }
    for path in [
        "/latest/meta-data/nothing-here",
        "/nonsense/meta-data/ami-id",
        "/latest/meta-data/placement/region/x",
    ] {
        assert_eq!(
            get(format!("{base}{path}")).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let versions = get(format!("{base}/")).await.body;
    assert!(
        versions.ends_with("latest") && versions.contains("2021-07-15\n"),
        "{versions}"
    );

    // Absolute form through the mock as HTTP proxy: a client with the hard-coded address.
    let proxied = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(&base).unwrap())
        .build()
        .unwrap();
    let answer = send(
        &proxied,
        Method::GET,
        "http://169.254.169.254/latest/meta-data/instance-id",
        &[],
    )
    .await;
    assert_eq!(answer.body, "i-0214fc003bc83bcc1");
    let answer = send(
        &proxied,
        Method::GET,
        "http://metadata.google.internal/computeMetadata/v1/instance/name",
        &[("Metadata-Flavor", "Google")],
    )
    .await;
    assert_eq!(answer.body, "instance-1");
}

#[tokio::test]
async fn azure_header_api_version_paths_and_formats() {
    let mock = mock(MockOptions::default()).await;
    let (c, base) = (client(), mock.url());
    let get = |path: &str, headers: &[(&str, &str)]| {
        let (c, url) = (c.clone(), format!("{base}{path}"));
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            send(&c, Method::GET, &url, &headers).await
        }
    };
    let meta = [("Metadata", "true")];
    let no_header = get("/metadata/instance?api-version=2021-02-01", &[]).await;
    assert_eq!(no_header.status, StatusCode::BAD_REQUEST);
    let error: serde_json::Value = serde_json::from_str(&no_header.body).unwrap();
    assert!(error["error"].as_str().unwrap().contains("metadata header"));
    let no_version = get("/metadata/instance", &meta).await;
    assert_eq!(no_version.status, StatusCode::BAD_REQUEST);
    assert!(no_version.body.contains("api-version"));
    let bad_version = get("/metadata/instance?api-version=2099-01-01", &meta).await;
    assert_eq!(bad_version.status, StatusCode::BAD_REQUEST);
    let whole = get(
        "/metadata/instance?api-version=2021-02-01",
        &[("metadata", "True")],
    )
    .await;
    assert_eq!(whole.status, StatusCode::OK);
    assert!(
        whole.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let document: serde_json::Value = serde_json::from_str(&whole.body).unwrap();
    assert_eq!(
        document["compute"]["vmId"],
        "afe12e91-33d9-4b5b-b915-ac81fe117b12"
    );
    let leaf = get(
        "/metadata/instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress?api-version=2021-02-01&format=text",
        &meta,
    )
    .await;
    assert_eq!(
        (leaf.status, leaf.body.as_str()),
        (StatusCode::OK, "10.0.0.4")
    );
    let json_leaf = get(
        "/metadata/instance/compute/name?api-version=2021-02-01",
        &meta,
    )
    .await;
    // Azure refuses a leaf in JSON: format=text is required for leaves.
    assert_eq!(json_leaf.status, StatusCode::BAD_REQUEST);
    assert!(json_leaf.body.contains("format=text"), "{}", json_leaf.body);
    let text_dir = get(
        "/metadata/instance/compute?api-version=2021-02-01&format=text",
        &meta,
    )
    .await;
    assert_eq!(text_dir.status, StatusCode::BAD_REQUEST);
    let missing = get(
        "/metadata/instance/compute/nothing?api-version=2021-02-01",
        &meta,
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let lb = get("/metadata/loadbalancer?api-version=2020-10-01", &meta).await;
    let lb: serde_json::Value = serde_json::from_str(&lb.body).unwrap();
    assert_eq!(
        lb["loadbalancer"]["publicIpAddresses"][0]["frontendIpAddress"],
        "51.0.0.1"
    );
    let old = get("/metadata/loadbalancer?api-version=2019-06-04", &meta).await;
    assert_eq!(old.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn gcp_flavor_listings_recursion_alt_and_etag() {
    let mock = mock(MockOptions {
        cloud: CloudChoice::Gcp,
        ..MockOptions::default()
    })
    .await;
    let (c, base) = (client(), mock.url());
    let get = |path: &str, flavored: bool| {
        let (c, url) = (c.clone(), format!("{base}{path}"));
        async move {
            let headers: &[(&str, &str)] = if flavored {
                &[("Metadata-Flavor", "Google")]
            } else {
                &[]
            };
            send(&c, Method::GET, &url, headers).await
        }
    };
    let refused = get("/computeMetadata/v1/instance/id", false).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.headers["metadata-flavor"], "Google");
    let id = get("/computeMetadata/v1/instance/id", true).await;
    assert_eq!(id.body, "5240495278393851000");
    for answer in [
        &refused,
        &id,
        &get("/computeMetadata/v1/instance/nothing", true).await,
    ] {
        assert_eq!(answer.headers["metadata-flavor"], "Google");
        assert!(answer.headers.contains_key("content-type"));
        assert!(answer.headers.contains_key("etag"));
    }
    let listing = get("/computeMetadata/v1/instance/", true).await.body;
    assert!(
        listing.contains("machine-type\n") && listing.contains("service-accounts/\n"),
        "{listing}"
    );
    let recursive = get(
        "/computeMetadata/v1/instance/?recursive=true&alt=json",
        true,
    )
    .await;
    assert!(
        recursive.headers["content-type"]
            .to_str()
            .unwrap()
            .contains("json")
    );
    let document: serde_json::Value = serde_json::from_str(&recursive.body).unwrap();
    assert_eq!(document["id"].as_u64(), Some(5_240_495_278_393_851_000));
    let text = get(
        "/computeMetadata/v1/instance/scheduling/?recursive=true&alt=text",
        true,
    )
    .await;
    assert_eq!(
        text.body,
        "automatic-restart TRUE\non-host-maintenance MIGRATE\npreemptible FALSE\n"
    );
    let by_alias = get(
        "/computeMetadata/v1/instance/service-accounts/default/email",
        true,
    )
    .await;
    assert_eq!(
        by_alias.body,
        "758913618900-compute@developer.gserviceaccount.com"
    );
    let project = get("/computeMetadata/v1/project/project-id", true).await;
    assert_eq!(project.body, "demo-project");
    let tags = get("/computeMetadata/v1/instance/tags?alt=json", true).await;
    assert_eq!(tags.body, r#"["tag-1","tag-2"]"#);
    let again = get("/computeMetadata/v1/instance/id", true).await;
    assert_eq!(
        again.headers["etag"], id.headers["etag"],
        "same content, same ETag"
    );
    assert_ne!(again.headers["etag"], tags.headers["etag"]);
    let ping = get("/", true).await;
    assert_eq!(ping.headers["metadata-flavor"], "Google");
}

#[tokio::test]
async fn injected_latency_and_failures() {
    let mock = mock(MockOptions {
        latency: Duration::from_millis(300),
        failures: vec![("/latest/meta-data/ami-id".to_owned(), 503)],
        ..MockOptions::default()
    })
    .await;
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let late = quick
        .get(format!("{}/latest/meta-data/instance-id", mock.url()))
        .send()
        .await;
    assert!(late.unwrap_err().is_timeout());
    let c = client();
    let failed = send(
        &c,
        Method::GET,
        &format!("{}/latest/meta-data/ami-id", mock.url()),
        &[],
    )
    .await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn the_cli_names_bad_fixtures_and_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gcp.json"), "{\"instance\": {}}").unwrap();
    let output = common::run(
        common::mock_cli()
            .args(["--listen", "127.0.0.1:0", "--fixtures"])
            .arg(dir.path()),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("gcp.json") && stderr.contains("no `id`"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("gcp.json"), "{not json").unwrap();
    let output = common::run(
        common::mock_cli()
            .args(["--listen", "127.0.0.1:0", "--fixtures"])
            .arg(dir.path()),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gcp.json: not valid JSON"), "{stderr}");

    let output = common::run(common::mock_cli().args(["--fail", "/x=999"]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("not an HTTP status"),
        "{stderr}"
    );
}
