//! `docs/labels.md` lists exactly the keys the built-in collectors declare, each with its
//! declared trust class: the test goes through the collector table, so a new collector's labels
//! are checked without anyone listing them here.

use std::collections::BTreeMap;

use collectors::{CollectorsConfig, HostRoots, build_registry};

#[test]
fn labels_reference_matches_declared_keys_and_trust() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/labels.md");
    let doc = std::fs::read_to_string(path).unwrap();
    // `| `key` | trust | source |` rows.
    let documented: BTreeMap<&str, &str> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| {
            let (key, rest) = rest.split_once('`')?;
            // Label keys are namespaced; other tables (the trust classes) are not keys.
            key.contains(':').then_some(())?;
            let trust = rest.strip_prefix(" | ")?.split(" |").next()?;
            Some((key, trust.trim()))
        })
        .collect();
    let registry = build_registry(&CollectorsConfig::default(), &HostRoots::default()).unwrap();
    let mut declared = BTreeMap::new();
    for registered in registry.collectors() {
        let collector = &registered.collector;
        assert!(
            !collector.label_keys().is_empty(),
            "{} declares no label key",
            collector.name()
        );
        for spec in collector.label_keys() {
            declared.insert(spec.key, spec.trust.as_str());
        }
    }
    assert_eq!(registry.collectors().len(), collectors::SECTIONS.len());
    let missing: Vec<_> = declared
        .keys()
        .filter(|key| !documented.contains_key(*key))
        .collect();
    let extra: Vec<_> = documented
        .keys()
        .filter(|key| !declared.contains_key(*key))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/labels.md lacks {missing:?} and lists undeclared {extra:?}"
    );
    let wrong: Vec<String> = declared
        .iter()
        .filter(|(key, trust)| documented[*key] != **trust)
        .map(|(key, trust)| format!("{key} is {trust}, documented {}", documented[key]))
        .collect();
    assert!(wrong.is_empty(), "docs/labels.md: {wrong:?}");
}
