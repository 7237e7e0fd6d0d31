//! The node collectors on fixture trees (`tests/fixtures/node/<case>/`): exact labels in
//! `expected.txt`, each collector's state in `expected-status.txt`. Adding a case needs no code.

use std::path::PathBuf;

use collectors::linuxos::LinuxOsCollector;
use collectors::sysfsdmi::SysfsDmiCollector;
use collectors::{HostRoots, Registry, Scope, Subject, merge_labels};

fn registry(roots: &HostRoots) -> Registry {
    let mut registry = Registry::new();
    registry
        .register(
            Arc::new(LinuxOsCollector::new(roots.clone())),
            true,
            collectors::config::DEFAULT_TIMEOUT,
        )
        .register(
            Arc::new(SysfsDmiCollector::new(roots.clone())),
            true,
            collectors::config::DEFAULT_TIMEOUT,
        );
    registry
}

use std::sync::Arc;

#[tokio::test]
async fn every_node_fixture_gives_its_expected_labels() {
    let cases = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/node");
    let mut checked = 0;
    for case in std::fs::read_dir(&cases).unwrap() {
        let case = case.unwrap().path();
        let roots = HostRoots::under(&case);
        let reports = registry(&roots)
            .collect(Some(Scope::Node), &Subject::node())
            .await;
        let want = std::fs::read_to_string(case.join("expected.txt")).unwrap();
        assert_eq!(merge_labels(&reports).to_text(), want, "{}", case.display());
        let statuses = std::fs::read_to_string(case.join("expected-status.txt")).unwrap();
        for line in statuses.lines() {
            let (name, state) = line.split_once(": ").unwrap();
            let report = reports.iter().find(|r| r.name == name).unwrap();
            assert_eq!(
                report.status.state(),
                state,
                "{}: {name}: {:?}",
                case.display(),
                report.status
            );
        }
        checked += 1;
    }
    assert!(checked >= 5);
}
