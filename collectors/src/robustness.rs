//! Property tests over hostile input, for every parser of what the agent reads from outside:
//! cgroup lines, `/proc` files (`stat`, `status`, `cmdline`, `environ`, `net/*`), a whole
//! process directory of arbitrary bytes, kubelet, Docker and cloud metadata JSON, and the
//! redaction of values. Each must answer (a value or an error), never panic or loop. The budget
//! is fixed (`PROPTEST_CASES` overrides it), so CI runs them on every build.

use proptest::prelude::*;
use serde_json::Value;

use crate::redaction::{REDACTED, default_secret_flags, redact_args, redact_shapes};

/// Arbitrary JSON, nested a few levels, with the keys the parsers look for among others.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("metadata".to_owned()),
        Just("name".to_owned()),
        Just("labels".to_owned()),
        Just("annotations".to_owned()),
        Just("status".to_owned()),
        Just("spec".to_owned()),
        Just("compute".to_owned()),
        Just("network".to_owned()),
        Just("tags".to_owned()),
        Just("attributes".to_owned()),
        Just("Config".to_owned()),
        Just("Env".to_owned()),
        Just("Labels".to_owned()),
        "[a-zA-Z_.:/-]{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::hash_map(key.clone(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn cgroup_files_of_any_text(text in ".{0,400}", lines in prop::collection::vec("[0-9]{0,2}:[a-z=,_]{0,12}:/[ -~]{0,120}", 0..8)) {
        let _ = crate::cgroup::parse_cgroup_file(&text);
        let info = crate::cgroup::parse_cgroup_file(&lines.join("\n"));
        if let Some(identity) = info.identity() {
            prop_assert!(lines.join("\n").contains(&identity.id));
        }
    }

    #[test]
    fn proc_files_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = crate::process::parse_start_ticks(&bytes);
        let _ = crate::process::status_field(&bytes, "Uid");
        let _ = crate::process::stat_field(&bytes, 22);
        let _ = crate::procfs::environment::parse_environ(&bytes).count();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let found = crate::procfs::sockets::listening(|_| Ok(text.clone().into_bytes()));
        for socket in found {
            let _ = socket.binding();
        }
        let _ = crate::linuxos::parse_env_file(&text);
    }

    #[test]
    fn docker_and_kubelet_answers_of_any_shape(value in json()) {
        if let Ok(container) = serde_json::from_value::<bollard::models::ContainerInspectResponse>(value.clone()) {
            let disclosure = crate::docker::Disclosure {
                extract_envs: true,
                ..crate::docker::Disclosure::of(&crate::docker::DockerConfig::default())
            };
            let _ = crate::docker::labels_of(&container, &disclosure);
        }
        if let Ok(pod) = serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(value.clone()) {
            let _ = crate::kubernetes::labels::labels_of(&pod, "abc", None, &[]);
        }
        let _ = crate::cloud::azure::labels_of(&value, Some(&value));
        let _ = crate::cloud::ec2::account_of(&value.to_string());
        let _ = crate::cloud::gcp::labels_of(&value, &["*".to_owned()]);
    }

    #[test]
    fn values_of_any_text_are_redacted_without_surprises(text in "[ -~\\n]{0,200}", args in prop::collection::vec("[ -~]{0,30}", 0..10)) {
        let shown = redact_shapes(&text);
        let suspicious = ["://", "eyJ", "AKIA", "ASIA", "-----BEGIN ", "earer", "asic", "EARER", "ASIC"];
        if !suspicious.iter().any(|s| text.contains(s)) {
            prop_assert_eq!(shown.as_ref(), text.as_str());
        }
        // Redacting twice changes nothing more.
        let again = redact_shapes(&shown).into_owned();
        prop_assert_eq!(again.as_str(), shown.as_ref());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let shown = redact_args(&args, &default_secret_flags());
        prop_assert_eq!(shown.len(), args.len());
        for (shown, arg) in shown.iter().zip(&args) {
            if shown.as_ref() != *arg {
                prop_assert!(shown.contains(REDACTED));
            }
        }
    }
}

/// A process directory of arbitrary bytes: the whole procfs collection answers.
#[test]
fn a_process_directory_of_arbitrary_bytes_is_collected_or_refused() {
    use proptest::test_runner::{Config, TestRunner};
    let files = ["stat", "status", "cmdline", "environ", "cgroup", "comm"];
    let strategy = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), files.len());
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runner
        .run(&strategy, |contents| {
            let root = tempfile::tempdir().unwrap();
            let proc = root.path().join("proc");
            let dir = proc.join("4242");
            std::fs::create_dir_all(&dir).unwrap();
            for (name, content) in files.iter().zip(&contents) {
                std::fs::write(dir.join(name), content).unwrap();
            }
            let roots = crate::HostRoots::resolve(&crate::host::HostRootsConfig {
                proc_root: proc.clone(),
                sys_root: root.path().join("sys"),
                etc_root: root.path().join("etc"),
            });
            let config = crate::procfs::ProcfsConfig {
                extract_envs: true,
                ..Default::default()
            };
            let collector = crate::procfs::ProcfsCollector::new(roots.clone(), &config);
            let process = crate::process::ProcessRef {
                pid: 4242,
                start_ticks: None,
            };
            let subject = crate::Subject {
                process: Some(process),
                ..Default::default()
            };
            runtime.block_on(async {
                let _ = crate::Collector::collect(&collector, &subject).await;
            });
            Ok(())
        })
        .unwrap();
}
