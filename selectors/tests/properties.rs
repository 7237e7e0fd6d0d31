//! The indexed matcher and the naive one agree on random policies and label sets.

use std::path::Path;

use labels::LabelSet;
use proptest::prelude::*;
use selectors::{Action, PolicySet, compile_texts};

const KEYS: &[&str] = &["app", "env", "process:uid", "k8s:pod:namespace", "tier"];
const VALUES: &[&str] = &[
    "web",
    "api",
    "prod",
    "dev",
    "1000",
    "0",
    "kube-system",
    "x y",
];

fn value() -> impl Strategy<Value = String> {
    prop::sample::select(VALUES).prop_map(|v| format!("{v:?}"))
}

/// The operator side of one `key: <operator>` constraint, in YAML.
fn operator() -> impl Strategy<Value = String> {
    let list = || prop::collection::vec(value(), 1..3).prop_map(|vs| vs.join(", "));
    let op = prop_oneof![
        value(),
        list().prop_map(|l| format!("[{l}]")),
        list().prop_map(|l| format!("{{in: [{l}]}}")),
        list().prop_map(|l| format!("{{notIn: [{l}]}}")),
        any::<bool>().prop_map(|b| format!("{{exists: {b}}}")),
        prop::sample::select(&["\"*e*\"", "\"w?b\"", "\"1*\""][..])
            .prop_map(|g| format!("{{glob: {g}}}")),
        prop::sample::select(&["\"[a-z]+\"", "\"1.*\"", "\"(web|api)\""][..])
            .prop_map(|r| format!("{{regex: {r}}}")),
    ];
    op
}

fn policies_yaml() -> impl Strategy<Value = String> {
    // Distinct keys per selector: a repeated key is a validation error, tested elsewhere.
    let selector = prop::sample::subsequence(KEYS, 0..4)
        .prop_flat_map(|keys| {
            keys.into_iter()
                .map(|k| operator().prop_map(move |op| format!("{k:?}: {op}")))
                .collect::<Vec<_>>()
        })
        .prop_map(|c| format!("{{{}}}", c.join(", ")));
    let policy = (
        prop::collection::vec(selector, 1..3),
        prop::sample::select(&["allow", "deny", "log"][..]),
        -2i64..3,
    );
    prop::collection::vec(policy, 0..25).prop_map(|policies| {
        let mut yaml = String::from("policies:\n");
        for (i, (selectors, action, priority)) in policies.into_iter().enumerate() {
            yaml.push_str(&format!(
                "  - name: p{i}\n    action: {action}\n    priority: {priority}\n    selectors: [{}]\n",
                selectors.join(", ")
            ));
        }
        yaml
    })
}

fn label_set() -> impl Strategy<Value = LabelSet> {
    prop::collection::vec(
        (prop::sample::select(KEYS), prop::sample::select(VALUES)),
        0..8,
    )
    .prop_map(|pairs| {
        let mut labels = LabelSet::new();
        for (k, v) in pairs {
            labels.insert(k, v);
        }
        labels
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn indexed_and_naive_matchers_agree(yaml in policies_yaml(), labels in prop::collection::vec(label_set(), 1..6)) {
        // Duplicate keys in one selector map are collapsed by the btree_map above.
        let policies = compile_texts(&[(Path::new("p.yaml"), yaml.as_str())])
            .map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        let set = PolicySet::new(policies, Action::Allow);
        for labels in &labels {
            prop_assert_eq!(set.evaluate_indexed(labels), set.evaluate_naive(labels), "{}\n{:?}", yaml, labels);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any text, and YAML-shaped text in particular, compiles to policies or to errors with
    /// positions: never a panic.
    #[test]
    fn policy_files_of_any_text(text in "[ -~\n]{0,300}") {
        let _ = compile_texts(&[(Path::new("p.yaml"), text.as_str())]);
    }

    #[test]
    fn policy_files_of_yaml_shaped_text(
        lines in prop::collection::vec(
            prop_oneof![
                Just("policies:".to_owned()),
                Just("  - name: x".to_owned()),
                Just("    action: deny".to_owned()),
                Just("    selectors:".to_owned()),
                Just("      - k: {regex: \"(a|b)*c\"}".to_owned()),
                Just("    to:".to_owned()),
                Just("      - cidr: [10.0.0.0/8, \"::/0\"]".to_owned()),
                Just("        ports: [1, \"2-3\", \"9-1\"]".to_owned()),
                "[ -~]{0,30}",
                "( {0,8})(- )?[a-z]{1,8}: (\\[|\\{)?[ -~]{0,12}",
            ],
            0..30,
        )
    ) {
        let text = lines.join("\n");
        if let Err(errors) = compile_texts(&[(Path::new("p.yaml"), text.as_str())]) {
            prop_assert!(!errors.to_string().is_empty());
        }
    }
}
