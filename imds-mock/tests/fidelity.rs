//! The mock answers as each cloud does where it used to differ: GCP's `wait_for_change`,
//! tags, aliases, universe domain and methods; Azure's versions, leaves, duplicate parameters,
//! methods, scheduled events and attested document; EC2 with its endpoint disabled; injected
//! failures shaped as each cloud's errors. And the timed scenarios, through the control API.

mod common;

use std::time::{Duration, Instant};

use imds_mock::{MockHandle, MockOptions, Scenario, TokenMode};
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn mock(options: MockOptions) -> MockHandle {
    imds_mock::spawn(options).await.unwrap()
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut request = common::http_client().request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body.to_owned()).send().await.unwrap();
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

const GOOGLE: [(&str, &str); 1] = [("Metadata-Flavor", "Google")];
const AZURE: [(&str, &str); 1] = [("Metadata", "true")];

#[tokio::test]
async fn gcp_tags_aliases_universe_and_methods_are_as_on_gce() {
    let mock = mock(MockOptions::default()).await;
    let v1 = format!("{}/computeMetadata/v1", mock.url());
    let tags = send(Method::GET, &format!("{v1}/instance/tags"), &GOOGLE, "").await;
    assert_eq!(tags.status, StatusCode::OK);
    assert_eq!(tags.body, r#"["tag-1","tag-2"]"#);
    assert_eq!(tags.headers["content-type"], "application/json");

    let accounts = send(
        Method::GET,
        &format!("{v1}/instance/service-accounts/?recursive=true"),
        &GOOGLE,
        "",
    )
    .await;
    let accounts: Value = serde_json::from_str(&accounts.body).unwrap();
    assert!(accounts["default"]["email"].is_string(), "{accounts}");
    assert_eq!(
        accounts["default"],
        accounts[accounts["default"]["email"].as_str().unwrap()]
    );

    let universe = send(
        Method::GET,
        &format!("{v1}/universe/universe-domain"),
        &GOOGLE,
        "",
    )
    .await;
    assert_eq!(
        (universe.status, universe.body.as_str()),
        (StatusCode::OK, "googleapis.com")
    );

    let post = send(Method::POST, &format!("{v1}/instance/id"), &GOOGLE, "").await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers["metadata-flavor"], "Google");
}

#[tokio::test]
async fn gcp_wait_for_change_holds_until_a_change_or_its_timeout() {
    let mock = mock(MockOptions::default()).await;
    let url = format!(
        "{}/computeMetadata/v1/instance/maintenance-event",
        mock.url()
    );
    let now = send(Method::GET, &url, &GOOGLE, "").await;
    assert_eq!(now.body, "NONE");
    let etag = now.headers["etag"].to_str().unwrap().to_owned();

    // Nothing changes: the answer comes at the timeout, unchanged.
    let started = Instant::now();
    let same = send(
        Method::GET,
        &format!("{url}?wait_for_change=true&last_etag={etag}&timeout_sec=1"),
        &GOOGLE,
        "",
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((same.status, same.body.as_str()), (StatusCode::OK, "NONE"));

    // A stale last_etag: the current value at once.
    let started = Instant::now();
    let stale = send(
        Method::GET,
        &format!("{url}?wait_for_change=true&last_etag=0000&timeout_sec=30"),
        &GOOGLE,
        "",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(stale.body, "NONE");

    // A maintenance event 1 s from now reaches the waiting client, with a new ETag.
    mock.start_scenario(
        "gcp-maintenance:MIGRATE_ON_HOST_MAINTENANCE@1s"
            .parse::<Scenario>()
            .unwrap(),
    );
    let started = Instant::now();
    let changed = send(
        Method::GET,
        &format!("{url}?wait_for_change=true&last_etag={etag}&timeout_sec=30"),
        &GOOGLE,
        "",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(changed.body, "MIGRATE_ON_HOST_MAINTENANCE");
    assert_ne!(changed.headers["etag"].to_str().unwrap(), etag);
}

#[tokio::test]
async fn azure_versions_leaves_parameters_and_methods_are_as_microsoft_documents() {
    let mock = mock(MockOptions::default()).await;
    let base = format!("{}/metadata/instance", mock.url());
    for version in ["2017-10-01", "2024-07-17", "2025-04-07"] {
        let answer = send(
            Method::GET,
            &format!("{base}?api-version={version}"),
            &AZURE,
            "",
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{version}: {}", answer.body);
    }
    let refused = send(
        Method::GET,
        &format!("{base}?api-version=2099-01-01"),
        &AZURE,
        "",
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let error: Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(
        error["newest-versions"],
        serde_json::json!(["2025-04-07", "2024-07-17", "2024-03-15"])
    );

    let leaf = format!("{base}/compute/vmId?api-version=2021-02-01");
    let json = send(Method::GET, &leaf, &AZURE, "").await;
    assert_eq!(json.status, StatusCode::BAD_REQUEST, "{}", json.body);
    let text = send(Method::GET, &format!("{leaf}&format=text"), &AZURE, "").await;
    assert_eq!(text.status, StatusCode::OK);
    assert!(!text.body.is_empty() && !text.body.starts_with('"'));

    let twice = send(
        Method::GET,
        &format!("{base}?api-version=2021-02-01&api-version=2021-02-01"),
        &AZURE,
        "",
    )
    .await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST, "{}", twice.body);

    let post = send(
        Method::POST,
        &format!("{base}?api-version=2021-02-01"),
        &AZURE,
        "",
    )
    .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(serde_json::from_str::<Value>(&post.body).unwrap()["error"].is_string());

    let attested = send(
        Method::GET,
        &format!(
            "{}/metadata/attested/document?api-version=2021-02-01&nonce=1234567890",
            mock.url()
        ),
        &AZURE,
        "",
    )
    .await;
    assert_eq!(attested.status, StatusCode::OK);
    let attested: Value = serde_json::from_str(&attested.body).unwrap();
    assert_eq!(attested["encoding"], "pkcs7");
    assert!(attested["signature"].as_str().unwrap().len() > 20);
}

#[tokio::test]
async fn an_azure_scheduled_event_appears_is_acknowledged_and_is_gone() {
    let mock = mock(MockOptions {
        scenarios: vec!["azure-scheduled-event:Preempt@500ms".parse().unwrap()],
        ..MockOptions::default()
    })
    .await;
    let url = format!(
        "{}/metadata/scheduledevents?api-version=2020-07-01",
        mock.url()
    );
    let before: Value =
        serde_json::from_str(&send(Method::GET, &url, &AZURE, "").await.body).unwrap();
    assert_eq!(before["Events"], serde_json::json!([]));
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let document: Value =
            serde_json::from_str(&send(Method::GET, &url, &AZURE, "").await.body).unwrap();
        if let Some(event) = document["Events"].as_array().and_then(|e| e.first()) {
            assert!(
                document["DocumentIncarnation"].as_u64().unwrap()
                    > before["DocumentIncarnation"].as_u64().unwrap()
            );
            break event.clone();
        }
        assert!(Instant::now() < deadline, "no event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(event["EventType"], "Preempt");
    assert_eq!(event["EventStatus"], "Scheduled");
    assert_eq!(event["Resources"], serde_json::json!(["demo"]));
    assert!(event["NotBefore"].as_str().unwrap().ends_with(" GMT"));

    let id = event["EventId"].as_str().unwrap();
    let unknown = send(
        Method::POST,
        &url,
        &AZURE,
        r#"{"StartRequests": [{"EventId": "not-an-event"}]}"#,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    let ack = send(
        Method::POST,
        &url,
        &AZURE,
        &format!(r#"{{"StartRequests": [{{"EventId": "{id}"}}]}}"#),
    )
    .await;
    assert_eq!(ack.status, StatusCode::OK, "{}", ack.body);
    let after: Value =
        serde_json::from_str(&send(Method::GET, &url, &AZURE, "").await.body).unwrap();
    assert_eq!(after["Events"], serde_json::json!([]));
}

#[tokio::test]
async fn ec2_scenarios_put_notices_where_aws_puts_them() {
    let mock = mock(MockOptions {
        scenarios: vec![
            "ec2-spot-interruption:hibernate@200ms".parse().unwrap(),
            "ec2-rebalance".parse().unwrap(),
            "ec2-scheduled-event:instance-retirement".parse().unwrap(),
            "ec2-asg-lifecycle:Warmed:Stopped".parse().unwrap(),
        ],
        ..MockOptions::default()
    })
    .await;
    let meta = format!("{}/latest/meta-data", mock.url());
    let notice = send(
        Method::GET,
        &format!("{meta}/spot/instance-action"),
        &[],
        "",
    )
    .await;
    assert_eq!(
        notice.status,
        StatusCode::NOT_FOUND,
        "no notice before its time"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let notice = send(
        Method::GET,
        &format!("{meta}/spot/instance-action"),
        &[],
        "",
    )
    .await;
    assert_eq!(notice.status, StatusCode::OK);
    let notice: Value = serde_json::from_str(&notice.body).unwrap();
    assert_eq!(notice["action"], "hibernate");
    let when = humantime::parse_rfc3339(notice["time"].as_str().unwrap()).unwrap();
    let ahead = when
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(ahead > Duration::from_secs(100) && ahead <= Duration::from_secs(120));
    // termination-time only for terminate.
    let termination = send(
        Method::GET,
        &format!("{meta}/spot/termination-time"),
        &[],
        "",
    )
    .await;
    assert_eq!(termination.status, StatusCode::NOT_FOUND);

    let rebalance = send(
        Method::GET,
        &format!("{meta}/events/recommendations/rebalance"),
        &[],
        "",
    )
    .await;
    let rebalance: Value = serde_json::from_str(&rebalance.body).unwrap();
    assert!(rebalance["noticeTime"].as_str().unwrap().ends_with('Z'));

    let scheduled = send(
        Method::GET,
        &format!("{meta}/events/maintenance/scheduled"),
        &[],
        "",
    )
    .await;
    let scheduled: Value = serde_json::from_str(&scheduled.body).unwrap();
    assert_eq!(scheduled[0]["Code"], "instance-retirement");
    assert_eq!(scheduled[0]["State"], "active");
    assert!(
        scheduled[0]["EventId"]
            .as_str()
            .unwrap()
            .starts_with("instance-event-")
    );
    for field in ["NotBefore", "NotAfter", "NotBeforeDeadline"] {
        assert!(
            scheduled[0][field].as_str().unwrap().ends_with(" GMT"),
            "{scheduled}"
        );
    }
    let lifecycle = send(
        Method::GET,
        &format!("{meta}/autoscaling/target-lifecycle-state"),
        &[],
        "",
    )
    .await;
    assert_eq!(
        (lifecycle.status, lifecycle.body.as_str()),
        (StatusCode::OK, "Warmed:Stopped")
    );
}

#[tokio::test]
async fn an_ec2_endpoint_turned_off_refuses_everything_and_failures_have_each_clouds_shape() {
    let off = mock(MockOptions {
        ec2_tokens: TokenMode::Disabled,
        ..MockOptions::default()
    })
    .await;
    for path in ["/latest/meta-data/instance-id", "/latest/api/token", "/"] {
        let method = if path.ends_with("token") {
            Method::PUT
        } else {
            Method::GET
        };
        let answer = send(
            method,
            &format!("{}{path}", off.url()),
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
            "",
        )
        .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path}");
    }

    let failing = mock(MockOptions {
        failures: vec![
            ("/computeMetadata/v1/instance/id".into(), 503),
            ("/metadata/instance".into(), 500),
            ("/latest/meta-data/ami-id".into(), 500),
        ],
        ..MockOptions::default()
    })
    .await;
    let gcp = send(
        Method::GET,
        &format!("{}/computeMetadata/v1/instance/id", failing.url()),
        &GOOGLE,
        "",
    )
    .await;
    assert_eq!(gcp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gcp.headers["metadata-flavor"], "Google");
    assert!(gcp.headers.contains_key("etag"));
    let azure = send(
        Method::GET,
        &format!("{}/metadata/instance?api-version=2021-02-01", failing.url()),
        &AZURE,
        "",
    )
    .await;
    assert_eq!(azure.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(serde_json::from_str::<Value>(&azure.body).unwrap()["error"].is_string());
    let ec2 = send(
        Method::GET,
        &format!("{}/latest/meta-data/ami-id", failing.url()),
        &[],
        "",
    )
    .await;
    assert_eq!(ec2.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(ec2.headers["content-type"], "text/plain");
}

/// The control API on an ephemeral port, in the test's runtime.
async fn control(mock: &MockHandle) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = mock.control_router();
    tokio::spawn(async move { axum_serve(listener, router).await });
    format!("http://{address}")
}

async fn axum_serve(listener: tokio::net::TcpListener, router: axum::Router) {
    let _ = axum::serve(listener, router).await;
}

#[tokio::test]
async fn the_control_api_changes_values_faults_and_scenarios_mid_run_and_shows_the_log() {
    let mock = mock(MockOptions::default()).await;
    let control = control(&mock).await;
    let instance_id = format!("{}/latest/meta-data/instance-id", mock.url());
    assert_eq!(
        send(Method::GET, &instance_id, &[], "").await.body,
        "i-0214fc003bc83bcc1"
    );

    // A value changed mid-run.
    let put = send(
        Method::PUT,
        &format!("{control}/values/ec2/meta-data/instance-id"),
        &[],
        r#""i-changed""#,
    )
    .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{}", put.body);
    assert_eq!(
        send(Method::GET, &instance_id, &[], "").await.body,
        "i-changed"
    );
    let got = send(
        Method::GET,
        &format!("{control}/values/ec2/meta-data/instance-id"),
        &[],
        "",
    )
    .await;
    assert_eq!(got.body, r#""i-changed""#);
    let bad = send(
        Method::PUT,
        &format!("{control}/values/ec2/meta-data/instance-id"),
        &[],
        "i-unquoted",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("JSON"), "{}", bad.body);

    // A fault injected, then healed.
    let fault = send(
        Method::POST,
        &format!("{control}/faults"),
        &[],
        r#"{"path": "/latest/meta-data/instance-id", "status": 500}"#,
    )
    .await;
    assert_eq!(fault.status, StatusCode::NO_CONTENT);
    assert_eq!(
        send(Method::GET, &instance_id, &[], "").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    send(Method::DELETE, &format!("{control}/faults"), &[], "").await;
    assert_eq!(
        send(Method::GET, &instance_id, &[], "").await.status,
        StatusCode::OK
    );

    // The EC2 token mode switched.
    send(
        Method::PUT,
        &format!("{control}/ec2/tokens"),
        &[],
        r#"{"mode": "required"}"#,
    )
    .await;
    assert_eq!(
        send(Method::GET, &instance_id, &[], "").await.status,
        StatusCode::UNAUTHORIZED
    );
    send(
        Method::PUT,
        &format!("{control}/ec2/tokens"),
        &[],
        r#"{"mode": "optional"}"#,
    )
    .await;

    // A scenario started now.
    let started = send(
        Method::POST,
        &format!("{control}/scenarios"),
        &[],
        "ec2-spot-interruption:terminate",
    )
    .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = send(
            Method::GET,
            &format!("{}/latest/meta-data/spot/termination-time", mock.url()),
            &[],
            "",
        )
        .await;
        if answer.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = send(
        Method::POST,
        &format!("{control}/scenarios"),
        &[],
        "ec2-teleport",
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.body.contains("unknown scenario"));

    // The request log: what was asked, with the statuses answered.
    let log: Value = serde_json::from_str(
        &send(Method::GET, &format!("{control}/requests"), &[], "")
            .await
            .body,
    )
    .unwrap();
    let entries = log["requests"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["path"] == "/latest/meta-data/instance-id"
                && e["status"] == 500
                && e["cloud"] == "ec2")
    );
    let next = log["next"].as_u64().unwrap();
    send(Method::GET, &instance_id, &[("Metadata-Flavor", "x")], "").await;
    let newer: Value = serde_json::from_str(
        &send(
            Method::GET,
            &format!("{control}/requests?since={next}"),
            &[],
            "",
        )
        .await
        .body,
    )
    .unwrap();
    assert_eq!(newer["requests"].as_array().unwrap().len(), 1);
}
