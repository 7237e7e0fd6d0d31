//! `docs/labels.md` lists exactly the keys the collectors declare.

use std::collections::BTreeSet;

#[test]
fn labels_reference_matches_declared_keys() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/labels.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let documented: BTreeSet<&str> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(key, _)| key))
        .collect();
    let declared: BTreeSet<&str> = [
        collectors::procfs::LABEL_KEYS,
        collectors::docker::LABEL_KEYS,
        collectors::kubernetes::LABEL_KEYS,
        collectors::linuxos::LABEL_KEYS,
        collectors::sysfsdmi::LABEL_KEYS,
        collectors::cloud::ec2::LABEL_KEYS,
        collectors::cloud::azure::LABEL_KEYS,
        collectors::cloud::gcp::LABEL_KEYS,
    ]
    .concat()
    .into_iter()
    .collect();
    let missing: Vec<_> = declared.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&declared).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/labels.md lacks {missing:?} and lists undeclared {extra:?}"
    );
}
