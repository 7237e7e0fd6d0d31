//! The mock's image (root, dockerd): built by `deploy/image/build --package imds-mock` from the
//! binary under test, run by the real Docker daemon as its default non-root user, answering
//! on the container's address with a scenario and the control API, as a CI service container.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use test_support::docker::Dockerd;

#[test]
fn the_image_serves_scenarios_and_control_as_a_ci_service_container() {
    if let Some(missing) = test_support::docker::missing_prerequisite() {
        test_support::require(false, missing);
        return;
    }
    let docker = Dockerd::start();
    let output = common::run(
        Command::new(common::repo_root().join("deploy/image/build"))
            .args(["--package", "imds-mock", "--tag", "imds-mock:e2e"])
            .args(["--binary", env!("CARGO_BIN_EXE_imds-mock")])
            .args([
                "--docker",
                &format!("/usr/bin/docker -H unix://{}", docker.socket.display()),
            ]),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let user = docker.ok(&["inspect", "-f", "{{.Config.User}}", "imds-mock:e2e"]);
    assert_eq!(user, "65532:65532");
    docker.ok(&["network", "create", "ci"]);
    docker.ok(&[
        "run",
        "-d",
        "--name",
        "imds",
        "--network",
        "ci",
        "--read-only",
        "--cap-drop",
        "ALL",
        "imds-mock:e2e",
        "--listen",
        "0.0.0.0:1338",
        "--control-listen",
        "0.0.0.0:1339",
        "--scenario",
        "gcp-preemption@1s",
    ]);
    let address = docker.ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        "imds",
    ]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = common::http_client();
    let get = |url: String, headers: &[(&str, &str)]| -> Option<(u16, String)> {
        runtime.block_on(async {
            let mut request = client.get(url).timeout(Duration::from_secs(5));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().await.ok()?;
            let status = response.status().as_u16();
            Some((status, response.text().await.ok()?))
        })
    };
    let preempted = format!("http://{address}:1338/computeMetadata/v1/instance/preempted");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(preempted.clone(), &[("Metadata-Flavor", "Google")]) {
            Some((200, body)) if body == "TRUE" => break,
            _ if Instant::now() > deadline => {
                let logs = docker.cli(&["logs", "imds"]);
                panic!(
                    "never preempted; logs:\n{}",
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let (status, state) = get(format!("http://{address}:1339/state"), &[]).unwrap();
    assert_eq!(status, 200);
    assert!(state.contains("\"fired\":true"), "{state}");
    let (status, instance) = get(
        format!("http://{address}:1338/latest/meta-data/instance-id"),
        &[],
    )
    .unwrap();
    assert_eq!((status, instance.as_str()), (200, "i-0214fc003bc83bcc1"));
}
