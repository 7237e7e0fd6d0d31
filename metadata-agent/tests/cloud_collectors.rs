//! The EC2, Azure and GCP collectors against the bundled IMDS mock, started in-process: the
//! reference's labels from the bundled fixtures, IMDSv2 token handling, fallback, faults, the
//! node scope's stale labels, and a machine with no cloud at all.

mod common;

use std::sync::Arc;
use std::time::Duration;

use collectors::cloud::CloudSource;
use collectors::cloud::azure::AzureCollector;
use collectors::cloud::azure::AzureConfig;
use collectors::cloud::ec2::Ec2Collector;
use collectors::cloud::ec2::Ec2Config;
use collectors::cloud::gcp::GcpCollector;
use collectors::cloud::gcp::GcpConfig;
use collectors::config::Enabled;
use collectors::{CollectError, Collected, Collector, HostRoots, Subject, error_chain};
use imds_mock::{self, CloudChoice, Fixtures, MockHandle, MockOptions, TokenMode};

/// Host roots whose sysfs has no DMI, as on this VM and in CI: `auto` must probe.
fn no_dmi() -> (tempfile::TempDir, HostRoots) {
    let dir = tempfile::tempdir().unwrap();
    let roots = HostRoots {
        sys: dir.path().to_owned(),
        ..HostRoots::default()
    };
    (dir, roots)
}

async fn mock(options: MockOptions) -> MockHandle {
    imds_mock::spawn(options).await.unwrap()
}

fn expected(cloud: &str) -> String {
    std::fs::read_to_string(common::fixture(&format!("imds/{cloud}-expected.txt"))).unwrap()
}

fn ec2(url: &str, enabled: Enabled, tweak: impl FnOnce(&mut Ec2Config)) -> Ec2Collector {
    let mut config = Ec2Config {
        enabled,
        endpoint: url.to_owned(),
        ..Ec2Config::default()
    };
    tweak(&mut config);
    Ec2Collector::with_env(&config, &no_dmi().1, |_| None).unwrap()
}

fn azure(url: &str, enabled: Enabled) -> AzureCollector {
    let config = AzureConfig {
        enabled,
        endpoint: url.to_owned(),
        ..AzureConfig::default()
    };
    AzureCollector::with_env(&config, &no_dmi().1, |_| None).unwrap()
}

fn gcp(url: &str, enabled: Enabled, tweak: impl FnOnce(&mut GcpConfig)) -> GcpCollector {
    let mut config = GcpConfig {
        enabled,
        endpoint: url.to_owned(),
        ..GcpConfig::default()
    };
    tweak(&mut config);
    GcpCollector::with_env(&config, &no_dmi().1, |_| None).unwrap()
}

async fn collect(collector: &dyn Collector) -> Result<Collected, CollectError> {
    collector.collect(&Subject::node()).await
}

fn count(requests: &[String], what: &str) -> usize {
    requests.iter().filter(|r| r.as_str() == what).count()
}

#[tokio::test]
async fn each_collector_gives_the_reference_labels_from_the_bundled_fixtures() {
    let mock = mock(MockOptions::default()).await;
    let url = mock.url();
    for enabled in [Enabled::Auto, Enabled::Always] {
        let collected = collect(&ec2(&url, enabled, |_| {})).await.unwrap();
        assert_eq!(collected.labels.to_text(), expected("ec2"), "{enabled:?}");
        assert_eq!(collected.partial, None);
        let collected = collect(&azure(&url, enabled)).await.unwrap();
        assert_eq!(collected.labels.to_text(), expected("azure"), "{enabled:?}");
        assert_eq!(collected.partial, None);
        let collected = collect(&gcp(&url, enabled, |_| {})).await.unwrap();
        assert_eq!(collected.labels.to_text(), expected("gcp"), "{enabled:?}");
    }
    let requests = mock.requests();
    assert!(
        requests.iter().all(|r| !r.contains("startup-script")),
        "attributes are read from the one recursive document"
    );
}

#[tokio::test]
async fn endpoints_come_from_the_clients_environment_variables() {
    let mock = mock(MockOptions::default()).await;
    let host_port = mock.address.to_string();
    let url = mock.url();
    let (_dir, roots) = no_dmi();
    let env = |name: &str| match name {
        "AWS_EC2_METADATA_SERVICE_ENDPOINT" => Some(format!("{url}/")),
        "AZURE_IMDS_ENDPOINT" => Some(url.clone()),
        // Google's libraries take host:port, without a scheme.
        "GCE_METADATA_HOST" => Some(host_port.clone()),
        _ => None,
    };
    let ec2 = Ec2Collector::with_env(&Ec2Config::default(), &roots, env).unwrap();
    let azure = AzureCollector::with_env(&AzureConfig::default(), &roots, env).unwrap();
    let gcp = GcpCollector::with_env(&GcpConfig::default(), &roots, env).unwrap();
    assert_eq!(
        collect(&ec2).await.unwrap().labels.to_text(),
        expected("ec2")
    );
    assert_eq!(
        collect(&azure).await.unwrap().labels.to_text(),
        expected("azure")
    );
    assert_eq!(
        collect(&gcp).await.unwrap().labels.to_text(),
        expected("gcp")
    );
}

#[tokio::test]
async fn an_ec2_token_is_reused_until_it_expires() {
    let mock = mock(MockOptions {
        ec2_tokens: TokenMode::Required,
        ..MockOptions::default()
    })
    .await;
    let long = ec2(&mock.url(), Enabled::Always, |_| {});
    for _ in 0..3 {
        collect(&long).await.unwrap();
    }
    assert_eq!(count(&mock.requests(), "PUT /latest/api/token"), 1);

    let short = ec2(&mock.url(), Enabled::Always, |c| {
        c.token_ttl = Duration::from_secs(1)
    });
    collect(&short).await.unwrap();
    collect(&short).await.unwrap();
    assert_eq!(count(&mock.requests(), "PUT /latest/api/token"), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let collected = collect(&short).await.unwrap();
    assert_eq!(collected.labels.to_text(), expected("ec2"));
    assert_eq!(
        count(&mock.requests(), "PUT /latest/api/token"),
        3,
        "an expired token is replaced before use"
    );
}

#[tokio::test]
async fn a_forgotten_token_gets_401_and_is_replaced_once() {
    let mock = mock(MockOptions {
        ec2_tokens: TokenMode::Required,
        ..MockOptions::default()
    })
    .await;
    let collector = ec2(&mock.url(), Enabled::Always, |_| {});
    collect(&collector).await.unwrap();
    mock.forget_ec2_tokens(); // as a restarted IMDS would
    let collected = collect(&collector).await.unwrap();
    assert_eq!(collected.labels.to_text(), expected("ec2"));
    assert_eq!(count(&mock.requests(), "PUT /latest/api/token"), 2);
}

#[tokio::test]
async fn imdsv1_is_used_only_when_the_token_request_is_refused_and_fallback_allows_it() {
    for (mode, fault) in [
        (TokenMode::Optional, Some(("/latest/api/token", 403))), // 403
        (TokenMode::V1Only, None),                               // 405
        (TokenMode::Optional, Some(("/latest/api/token", 404))), // 404
    ] {
        let mock = mock(MockOptions {
            ec2_tokens: mode,
            failures: fault.into_iter().map(|(p, s)| (p.to_owned(), s)).collect(),
            ..MockOptions::default()
        })
        .await;
        let collected = collect(&ec2(&mock.url(), Enabled::Always, |_| {}))
            .await
            .unwrap_or_else(|e| panic!("{mode:?} {fault:?}: {e}"));
        assert_eq!(collected.labels.to_text(), expected("ec2"), "{mode:?}");

        let strict = ec2(&mock.url(), Enabled::Always, |c| c.imds_v1_fallback = false);
        let error = error_chain(&collect(&strict).await.unwrap_err());
        assert!(
            error.contains("imdsV1Fallback is false") && error.contains("refused"),
            "{mode:?}: {error}"
        );
    }
    // An instance whose metadata endpoint is off refuses everything: a clear failure.
    let off = mock(MockOptions {
        ec2_tokens: TokenMode::Disabled,
        ..MockOptions::default()
    })
    .await;
    let error = error_chain(
        &collect(&ec2(&off.url(), Enabled::Always, |_| {}))
            .await
            .unwrap_err(),
    );
    assert!(error.contains("403"), "{error}");
    // A bad TTL is a 400, not a refusal: no fallback.
    let mock = mock(MockOptions {
        failures: vec![("/latest/api/token".to_owned(), 400)],
        ..MockOptions::default()
    })
    .await;
    let error = error_chain(
        &collect(&ec2(&mock.url(), Enabled::Always, |_| {}))
            .await
            .unwrap_err(),
    );
    assert!(error.contains("400"), "{error}");
    assert!(!mock.requests().iter().any(|r| r.contains("instance-id")));
}

#[tokio::test]
async fn a_token_request_without_answer_is_reported_as_a_hop_limit_and_v1_is_not_tried() {
    let mock = mock(MockOptions {
        drop_token_endpoint: true,
        ..MockOptions::default()
    })
    .await;
    let collector = ec2(&mock.url(), Enabled::Always, |c| {
        c.timeout = Duration::from_millis(400)
    });
    let error = collect(&collector).await.unwrap_err();
    let CollectError::Failed { .. } = &error else {
        panic!("{error:?}")
    };
    let message = error_chain(&error);
    assert!(
        message.contains("hop limit") && message.contains("IMDSv1 was not tried"),
        "{message}"
    );
    let requests = mock.requests();
    assert!(
        !requests.iter().any(|r| r.contains("instance-id")),
        "no IMDSv1 read after a lost token answer: {requests:?}"
    );
}

#[tokio::test]
async fn missing_paths_failing_paths_and_slow_services() {
    // 404: the key is absent, nothing is wrong (an instance without a public address).
    let mock = mock(MockOptions {
        failures: vec![("/latest/meta-data/public-ipv4".to_owned(), 404)],
        ..MockOptions::default()
    })
    .await;
    let collected = collect(&ec2(&mock.url(), Enabled::Always, |_| {}))
        .await
        .unwrap();
    assert!(!collected.labels.contains_key("ec2:network:public-ipv4"));
    assert!(collected.labels.contains_key("ec2:network:public-hostname"));
    assert_eq!(collected.partial, None);

    // 500 on one path: the rest is kept and the collection says what is missing.
    mock.fail("/latest/meta-data/ami-id", 500);
    let collected = collect(&ec2(&mock.url(), Enabled::Always, |_| {}))
        .await
        .unwrap();
    assert!(!collected.labels.contains_key("ec2:ami:id"));
    assert!(collected.labels.contains_key("ec2:instance:id"));
    let partial = collected.partial.unwrap();
    assert!(
        partial.contains("ami-id") && partial.contains("500"),
        "{partial}"
    );

    // 500 on the instance id: not an instance document at all.
    mock.fail("/latest/meta-data/instance-id", 500);
    let error = collect(&ec2(&mock.url(), Enabled::Always, |_| {}))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CollectError::Failed { .. } if error_chain(&error).contains("instance-id")),
        "{error:?}"
    );
    mock.heal();

    // Azure: a failing load balancer document keeps the instance labels, as partial; a 404
    // there is no load balancer.
    mock.fail("/metadata/loadbalancer", 500);
    let collected = collect(&azure(&mock.url(), Enabled::Always)).await.unwrap();
    assert_eq!(collected.labels.to_text(), expected("azure"));
    assert!(collected.partial.unwrap().contains("load balancer"));
    mock.heal();
    mock.fail("/metadata/loadbalancer", 404);
    let collected = collect(&azure(&mock.url(), Enabled::Always)).await.unwrap();
    assert_eq!(collected.partial, None);
    mock.fail("/metadata/instance", 500);
    let error = collect(&azure(&mock.url(), Enabled::Always))
        .await
        .unwrap_err();
    assert!(error_chain(&error).contains("500"), "{error}");
    mock.heal();
    // GCP: an answer without the flavor header (here an EC2-only service's) is refused.
    let not_google = imds_mock::spawn(MockOptions {
        cloud: CloudChoice::Ec2,
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let error = collect(&gcp(&not_google.url(), Enabled::Always, |_| {}))
        .await
        .unwrap_err();
    assert!(
        error_chain(&error).contains("Metadata-Flavor"),
        "an answer without the flavor header is refused: {error}"
    );
    // A failure the metadata server itself answers (flavored) names its status.
    mock.fail("/computeMetadata/v1/instance", 503);
    let error = collect(&gcp(&mock.url(), Enabled::Always, |_| {}))
        .await
        .unwrap_err();
    assert!(error_chain(&error).contains("503"), "{error}");

    // Slow: every request has a deadline.
    let slow = imds_mock::spawn(MockOptions {
        latency: Duration::from_millis(600),
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let fast = Duration::from_millis(200);
    let errors = [
        collect(&ec2(&slow.url(), Enabled::Always, |c| c.timeout = fast)).await,
        collect(&azure_with_timeout(&slow.url(), fast)).await,
        collect(&gcp(&slow.url(), Enabled::Always, |c| c.timeout = fast)).await,
    ];
    for error in errors {
        let error = error_chain(&error.unwrap_err());
        assert!(error.contains("within 200 ms"), "{error}");
    }
}

fn azure_with_timeout(url: &str, timeout: Duration) -> AzureCollector {
    let config = AzureConfig {
        enabled: Enabled::Always,
        endpoint: url.to_owned(),
        timeout,
        ..AzureConfig::default()
    };
    AzureCollector::with_env(&config, &no_dmi().1, |_| None).unwrap()
}

#[tokio::test]
async fn other_values_come_through_exactly() {
    // Values unlike the bundled ones: a 64-bit id beyond a float's precision, several groups,
    // tags, no load balancer, exported attributes.
    let mut fixtures = Fixtures::bundled();
    fixtures.gcp["instance"]["id"] = serde_json::from_str("18446744073709551557").unwrap();
    fixtures.gcp["instance"]["scheduling"]["preemptible"] = "TRUE".into();
    fixtures.ec2["meta-data"]["security-groups"] = serde_json::json!(["web", "ssh access"]);
    fixtures.ec2["meta-data"]["tags"] =
        serde_json::json!({"instance": {"Name": "builder", "cost center": "42"}});
    fixtures.azure["loadbalancer"] = serde_json::Value::Null;
    let mock = mock(MockOptions {
        fixtures,
        ..MockOptions::default()
    })
    .await;
    let labels = collect(&gcp(&mock.url(), Enabled::Always, |c| {
        c.export_attributes = vec!["ssh-keys".to_owned()]
    }))
    .await
    .unwrap()
    .labels;
    assert_eq!(labels.get("gcp:id"), ["18446744073709551557"]);
    assert_eq!(labels.get("gcp:scheduling:preemptible"), ["true"]);
    assert!(labels.contains_key("gcp:attributes:ssh-keys"));
    assert!(!labels.contains_key("gcp:attributes:startup-script"));

    let labels = collect(&ec2(&mock.url(), Enabled::Always, |_| {}))
        .await
        .unwrap()
        .labels;
    assert_eq!(labels.get("ec2:security-groups"), ["web", "ssh access"]);
    assert_eq!(labels.get("ec2:tag:Name"), ["builder"]);
    assert_eq!(labels.get("ec2:tag:cost\\x20center"), ["42"]);

    let collected = collect(&azure(&mock.url(), Enabled::Always)).await.unwrap();
    assert_eq!(collected.partial, None, "no load balancer is not a failure");
    assert_eq!(
        collected.labels.get("azure:network:public-ipv4"),
        ["51.0.0.1"]
    );
}

#[tokio::test]
async fn a_service_of_another_kind_is_not_taken_for_the_cloud() {
    // An EC2-only service: GCP gets answers without Metadata-Flavor, Azure gets 404s.
    let mock = mock(MockOptions {
        cloud: CloudChoice::Ec2,
        ..MockOptions::default()
    })
    .await;
    for collector in [
        Box::new(gcp(&mock.url(), Enabled::Auto, |_| {})) as Box<dyn Collector>,
        Box::new(azure(&mock.url(), Enabled::Auto)),
    ] {
        let error = collect(collector.as_ref()).await.unwrap_err();
        assert!(
            matches!(error, CollectError::Unavailable { .. }),
            "{error:?}"
        );
        let name = collector.name();
        let strict: Box<dyn Collector> = match name {
            "gcp" => Box::new(gcp(&mock.url(), Enabled::Always, |_| {})),
            _ => Box::new(azure(&mock.url(), Enabled::Always)),
        };
        let error = collect(strict.as_ref()).await.unwrap_err();
        assert!(
            matches!(error, CollectError::Failed { .. }),
            "{name}: {error:?}"
        );
    }
}

#[tokio::test]
async fn nothing_listening_is_unavailable_within_the_probe_time() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("http://{closed}");
    for collector in [
        Box::new(ec2(&url, Enabled::Auto, |_| {})) as Box<dyn Collector>,
        Box::new(azure(&url, Enabled::Auto)),
        Box::new(gcp(&url, Enabled::Auto, |_| {})),
    ] {
        let error = collect(collector.as_ref()).await.unwrap_err();
        let CollectError::Unavailable { .. } = &error else {
            panic!("{}: {error:?}", collector.name())
        };
        let reason = error_chain(&error);
        assert!(
            reason.contains("no DMI data") && reason.contains("cannot connect"),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_cloud_labels_as_stale() {
    use metadata_agent::metrics::Metrics;
    use metadata_agent::resolver::{Resolver, ResolverLimits};

    let mock = mock(MockOptions::default()).await;
    let (_dir, roots) = no_dmi();
    let mut registry = collectors::Registry::new();
    registry.register(
        Arc::new(gcp(&mock.url(), Enabled::Auto, |_| {})),
        true,
        Duration::from_secs(2),
    );
    let resolver = Resolver::new(
        roots,
        registry,
        ResolverLimits::default(),
        Arc::new(Metrics::new()),
    );
    resolver.refresh_node().await;
    assert_eq!(resolver.node().labels.to_text(), expected("gcp"));
    mock.fail("/computeMetadata", 500);
    resolver.refresh_node().await;
    let node = resolver.node();
    assert_eq!(
        node.labels.to_text(),
        expected("gcp"),
        "the last good labels are kept"
    );
    assert_eq!(node.reports[0].status.state(), "stale");
    mock.heal();
    resolver.refresh_node().await;
    assert_eq!(resolver.node().reports[0].status.state(), "ok");
}

/// `inspect self --json` with every cloud endpoint on a closed port and no DMI (an empty sysfs
/// root), with `env` added; the three cloud reports, in registration order.
fn inspect_with_closed_endpoints(env: &[(&str, String)]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("agent.yaml");
    let endpoints: String = ["ec2", "azure", "gcp"]
        .iter()
        .map(|cloud| format!("  {cloud}:\n    endpoint: http://{closed}\n"))
        .collect();
    std::fs::write(&config, format!("collectors:\n{endpoints}")).unwrap();
    let mut command = common::agent();
    command
        .args(["inspect", "self", "--json", "--config"])
        .arg(&config)
        .env("HOST_SYS", dir.path())
        .env_remove("no_proxy")
        .env_remove("NO_PROXY");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = common::run(&mut command);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    answer["collectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| ["ec2", "azure", "gcp"].contains(&c["name"].as_str().unwrap()))
        .cloned()
        .collect()
}

#[test]
fn inspect_off_cloud_reports_the_clouds_unavailable_quickly() {
    let reports = inspect_with_closed_endpoints(&[]);
    assert_eq!(reports.len(), 3, "{reports:?}");
    for report in reports {
        assert_eq!(report["status"]["state"], "unavailable", "{report}");
        // Well under the 2 s collection deadline: the probe decided.
        assert!(report["latency_ms"].as_f64().unwrap() < 1000.0, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_requests_never_go_through_an_http_proxy() {
    // The proxy is a working mock (it serves absolute-form requests); the endpoints are closed
    // ports. Through the proxy every cloud would answer; without it none does.
    let proxy = mock(MockOptions::default()).await;
    let env: Vec<(&str, String)> = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .into_iter()
        .map(|var| (var, proxy.url()))
        .collect();
    let reports = tokio::task::spawn_blocking(move || inspect_with_closed_endpoints(&env))
        .await
        .unwrap();
    let states: Vec<(&str, &str)> = reports
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["status"]["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("ec2", "unavailable"),
            ("azure", "unavailable"),
            ("gcp", "unavailable")
        ]
    );
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
}
