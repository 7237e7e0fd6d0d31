//! `docs/labels.md` lists exactly the keys the built-in collectors declare: the test goes
//! through the collector table, so a new collector's labels are checked without anyone listing
//! them here.

use std::collections::BTreeSet;

use collectors::{CollectorsConfig, HostRoots, build_registry};

#[test]
fn labels_reference_matches_declared_keys() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/labels.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let documented: BTreeSet<&str> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(key, _)| key))
        .collect();
    let registry = build_registry(&CollectorsConfig::default(), &HostRoots::default()).unwrap();
    let mut declared = BTreeSet::new();
    for registered in registry.collectors() {
        let collector = &registered.collector;
        assert!(
            !collector.label_keys().is_empty(),
            "{} declares no label key",
            collector.name()
        );
        declared.extend(collector.label_keys().iter().copied());
    }
    assert_eq!(registry.collectors().len(), collectors::SECTIONS.len());
    let missing: Vec<_> = declared.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&declared).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/labels.md lacks {missing:?} and lists undeclared {extra:?}"
    );
}
