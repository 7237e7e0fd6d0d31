//! Matching, precedence, explanations and validation of policy files.

use std::path::Path;

use labels::LabelSet;
use selectors::{Action, PolicySet, compile_texts};

fn labels(pairs: &[(&str, &str)]) -> LabelSet {
    let mut set = LabelSet::new();
    for (key, value) in pairs {
        set.insert(*key, *value);
    }
    set
}

fn set_of(yaml: &str) -> PolicySet {
    let policies = compile_texts(&[(Path::new("p.yaml"), yaml)])
        .unwrap_or_else(|e| panic!("{e}\n--- in ---\n{yaml}"));
    PolicySet::new(policies, Action::Log)
}

/// A one-policy set whose single selector is `key: <value>`.
fn one(value: &str) -> PolicySet {
    set_of(&format!(
        "policies:\n  - name: p\n    action: deny\n    selectors:\n      - k: {value}\n"
    ))
}

#[test]
fn operators() {
    // (selector value, label values of `k`, expected)
    let cases: &[(&str, &[&str], bool)] = &[
        ("web", &["web"], true),
        ("web", &["api"], false),
        ("web", &[], false),
        ("web", &["api", "web"], true), // multi-valued: any value
        ("1000", &["1000"], true),
        ("true", &["true"], true),
        ("1.5", &["1.5"], true),
        ("[1000, 1001]", &["1001"], true),
        ("[1000, 1001]", &["1002"], false),
        ("[1000, 1001]", &["7", "1000"], true),
        ("{in: [a, b]}", &["b"], true),
        ("{notIn: [kube-system]}", &["default"], true),
        ("{notIn: [kube-system]}", &["kube-system"], false),
        ("{notIn: [kube-system]}", &[], true), // absent: none is in the list
        ("{notIn: [a]}", &["b", "a"], false),  // multi-valued: only when none is
        ("{exists: true}", &["x"], true),
        ("{exists: true}", &[], false),
        ("{exists: false}", &[], true),
        ("{exists: false}", &["x"], false),
        (
            "{glob: \"/usr/local/bin/*\"}",
            &["/usr/local/bin/app"],
            true,
        ),
        ("{glob: \"/usr/local/bin/*\"}", &["/usr/bin/app"], false),
        (
            "{glob: \"*nginx*\"}",
            &["docker.io/library/nginx:1.25"],
            true,
        ),
        ("{glob: \"/bin/?ash\"}", &["/bin/bash"], true),
        ("{glob: \"{a,b}-*\"}", &["b-1"], true),
        ("{glob: \"x*\"}", &["other", "x1"], true),
        ("{regex: \"nginx-[0-9]+\"}", &["nginx-12"], true),
        ("{regex: \"nginx-[0-9]+\"}", &["my-nginx-12"], false), // whole value
        ("{regex: \"nginx-[0-9]+\"}", &["nginx-12x"], false),
        ("{regex: \".*\"}", &[], false),
    ];
    for (value, found, expected) in cases {
        let set = one(value);
        let mut label_set = LabelSet::new();
        label_set.insert_all("k", found.iter().copied());
        let evaluation = set.evaluate(&label_set);
        assert_eq!(
            !evaluation.matches.is_empty(),
            *expected,
            "k: {value} against {found:?}"
        );
        assert_eq!(
            set.evaluate_indexed(&label_set),
            set.evaluate_naive(&label_set),
            "k: {value}"
        );
    }
}

#[test]
fn selectors_are_or_and_constraints_are_and() {
    let set = set_of(
        "policies:\n  - name: p\n    action: allow\n    selectors:\n      - a: 1\n        b: 2\n      - c: 3\n",
    );
    assert!(set.evaluate(&labels(&[("a", "1"), ("b", "2")])).verdict == Action::Allow);
    assert!(set.evaluate(&labels(&[("a", "1")])).default_applied);
    assert!(!set.evaluate(&labels(&[("c", "3")])).default_applied);
}

#[test]
fn precedence_priority_then_specificity_then_file_order() {
    let first = "policies:
  - name: broad-deny
    action: deny
    selectors:
      - app: web
  - name: specific-allow
    action: allow
    selectors:
      - app: web
        env: prod
  - name: tie-a
    action: log
    selectors:
      - app: web
";
    let second = "policies:
  - name: urgent
    action: deny
    priority: 10
    selectors:
      - {}
  - name: tie-b
    action: allow
    selectors:
      - app: web
";
    let policies =
        compile_texts(&[(Path::new("a.yaml"), first), (Path::new("b.yaml"), second)]).unwrap();
    let set = PolicySet::new(policies, Action::Allow);
    let evaluation = set.evaluate(&labels(&[("app", "web"), ("env", "prod")]));
    let order: Vec<(&str, usize)> = evaluation
        .matches
        .iter()
        .map(|m| (&*m.name, m.specificity))
        .collect();
    assert_eq!(
        order,
        [
            ("urgent", 0),
            ("specific-allow", 2),
            ("broad-deny", 1),
            ("tie-a", 1),
            ("tie-b", 1),
        ]
    );
    assert_eq!(evaluation.verdict, Action::Deny);
    assert_eq!(
        evaluation,
        set.evaluate_naive(&labels(&[("app", "web"), ("env", "prod")]))
    );
    // No match: the configured default.
    let none = PolicySet::new(Vec::new(), Action::Allow).evaluate(&labels(&[("x", "y")]));
    assert!(none.default_applied && none.verdict == Action::Allow && none.matches.is_empty());
}

#[test]
fn a_policy_ranks_by_its_most_specific_matching_selector() {
    let set = set_of(
        "policies:
  - name: two
    selectors:
      - a: 1
      - a: 1
        b: 2
        c: {exists: false}
",
    );
    let evaluation = set.evaluate(&labels(&[("a", "1"), ("b", "2")]));
    assert_eq!(evaluation.matches.len(), 1);
    assert_eq!(
        (
            evaluation.matches[0].selector,
            evaluation.matches[0].specificity
        ),
        (1, 3)
    );
    assert_eq!(evaluation.verdict, Action::Log); // default action of a policy
}

const ISSUE_EXAMPLE: &str = "policies:
  - name: web-frontends            # required, unique across all files
    action: allow                  # allow | deny | log (default: log)
    priority: 10                   # optional; higher wins before specificity
    selectors:                     # OR of selector maps
      - k8s:label:app: web         # AND within one map
        process:uid: [1000, 1001]  # a list: any of these values
      - docker:label:tier: frontend
        process:binary:path: {glob: \"/usr/local/bin/*\"}
        k8s:pod:namespace: {notIn: [kube-system]}
        process:env:DEBUG: {exists: false}
";

#[test]
fn the_reference_example_policy() {
    let set = set_of(ISSUE_EXAMPLE);
    let web = labels(&[("k8s:label:app", "web"), ("process:uid", "1001")]);
    let evaluation = set.evaluate(&web);
    assert_eq!(evaluation.verdict, Action::Allow);
    assert_eq!(evaluation.matches[0].specificity, 2);
    let wrong_uid = labels(&[("k8s:label:app", "web"), ("process:uid", "0")]);
    assert!(set.evaluate(&wrong_uid).default_applied);
    let frontend = labels(&[
        ("docker:label:tier", "frontend"),
        ("process:binary:path", "/usr/local/bin/server"),
        ("k8s:pod:namespace", "shop"),
    ]);
    let evaluation = set.evaluate(&frontend);
    assert_eq!(
        (
            evaluation.matches[0].selector,
            evaluation.matches[0].specificity
        ),
        (1, 4)
    );
    let mut debugging = frontend.clone();
    debugging.insert("process:env:DEBUG", "1");
    assert!(set.evaluate(&debugging).default_applied);
    let mut system = frontend.clone();
    system.remove("k8s:pod:namespace");
    system.insert("k8s:pod:namespace", "kube-system");
    assert!(set.evaluate(&system).default_applied);
}

#[test]
fn explain_shows_matches_and_the_failing_constraint_of_near_misses() {
    let set = set_of(ISSUE_EXAMPLE);
    let explanation = set.explain(&labels(&[("k8s:label:app", "web"), ("process:uid", "0")]));
    assert!(explanation.matched.is_empty());
    let closest = &explanation.near_misses[0];
    assert_eq!((&*closest.policy, closest.selector), ("web-frontends", 0));
    assert_eq!(closest.location, "p.yaml:6:9");
    let failed: Vec<_> = closest.constraints.iter().filter(|c| !c.matched).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].key, "process:uid");
    assert_eq!(failed[0].test, r#"in ["1000", "1001"]"#);
    assert_eq!(failed[0].found, ["0"]);
    let explanation = set.explain(&labels(&[
        ("k8s:label:app", "web"),
        ("process:uid", "1000"),
    ]));
    assert_eq!(explanation.matched.len(), 1);
    assert!(explanation.matched[0].constraints.iter().all(|c| c.matched));
}

/// Every validation error, with its exact position.
#[test]
fn validation_errors_name_file_line_and_column() {
    let cases: &[(&str, &str)] = &[
        (
            "policies:\n  - name: a\n    actoin: deny\n    selectors: [{a: 1}]\n",
            "p.yaml:3:5: unknown field `actoin`, expected one of name, action, priority, selectors, to, requireTrusted, description",
        ),
        (
            "policies:\n  - name: a\n    action: reject\n    selectors: [{a: 1}]\n",
            "p.yaml:3:13: invalid action `reject`, expected one of allow, deny, log",
        ),
        (
            "policies:\n  - name: a\n    priority: high\n    selectors: [{a: 1}]\n",
            "p.yaml:3:15: `priority` must be an integer",
        ),
        (
            "policies:\n  - action: deny\n    selectors: [{a: 1}]\n",
            "p.yaml:2:5: policy has no `name`",
        ),
        (
            "policies:\n  - name: a\n",
            "p.yaml:2:5: policy `a` has no `selectors`",
        ),
        (
            "policies:\n  - name: a\n    selectors: []\n",
            "p.yaml:3:16: `selectors` is empty: the policy would never match",
        ),
        (
            "policies:\n  - name: a\n    selectors:\n      -\n",
            "p.yaml:4:8: empty selector: it would match every process; write `{}` to mean that on purpose",
        ),
        (
            "policies:\n  - name: a\n    selectors:\n      - a: {between: [1, 2]}\n",
            "p.yaml:4:13: unknown operator `between` for `a`, expected one of in, notIn, exists, glob, regex",
        ),
        (
            "policies:\n  - name: a\n    selectors:\n      - a: {glob: x, regex: y}\n",
            "p.yaml:4:12: `a` needs exactly one operator (in, notIn, exists, glob, regex), found 2",
        ),
        (
            "policies:\n  - name: a\n    selectors:\n      - a: {regex: \"(unclosed\"}\n",
            "p.yaml:4:20: invalid regex \"(unclosed\" for `a`: regex parse error: (unclosed ^ error: unclosed group",
        ),
        (
            "policies:\n  - name: a\n    selectors:\n      - a: {glob: \"[z-a]\"}\n",
            "p.yaml:4:19: invalid glob \"[z-a]\" for `a`: invalid range; 'z' > 'a'",
        ),
        (
            "policies:\n  - name: a\n    selectors:\n      - a: {exists: yes please}\n",
            "p.yaml:4:21: `exists` of `a` takes true or false, found a scalar",
        ),
        (
            "policies:\n  - name: a\n    selectors:\n      - a: {notIn: []}\n",
            "p.yaml:4:20: empty list of values for `a`: it would never match",
        ),
        (
            "policies:\n  - name: a\n    selectors:\n      - a:\n",
            "p.yaml:4:9: `a` has no value; to require the label write `{exists: true}`",
        ),
        (
            "policies:\n  - name: a\n    selectors:\n      - a: [x, [y]]\n",
            "p.yaml:4:16: values of `a` must be scalars, found a list",
        ),
        (
            "policies:\n  - name: a\n    selectors:\n      - a: 1\n        a: 2\n",
            "p.yaml:5:9: duplicate key `a` in one selector",
        ),
        (
            "policies:\n  - name: a\n    selectors: [{a: 1}]\n  - name: a\n    selectors: [{b: 1}]\n",
            "p.yaml:4:5: duplicate policy name `a` (first defined at p.yaml:2:5)",
        ),
        (
            "policy:\n  - name: a\n",
            "p.yaml:1:1: unknown field `policy`, expected `policies`",
        ),
        (
            "policies: {name: a}\n",
            "p.yaml:1:11: `policies` must be a list, found a mapping",
        ),
        (
            "- a\n",
            "p.yaml:1:1: expected a mapping with a `policies` list, found a list",
        ),
        (
            "policies:\n  - name: a\n    selectors: {a: 1}\n",
            "p.yaml:3:16: `selectors` must be a list of selector maps, found a mapping",
        ),
        (
            "policies:\n  - name: a\n    selectors:\n      - just-a-string\n",
            "p.yaml:4:9: a selector must be a mapping of label keys, found a scalar",
        ),
    ];
    for (yaml, expected) in cases {
        let errors = compile_texts(&[(Path::new("p.yaml"), yaml)]).unwrap_err();
        assert_eq!(errors.to_string(), *expected, "--- for ---\n{yaml}");
    }
}

#[test]
fn every_error_of_a_file_is_listed() {
    let yaml = "policies:\n  - name: a\n    action: nope\n    selectors:\n      - x: {regex: \"[\"}\n      -\n";
    let errors = compile_texts(&[(Path::new("p.yaml"), yaml)]).unwrap_err();
    assert_eq!(errors.0.len(), 3, "{errors}");
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let errors = compile_texts(&[(Path::new("p.yaml"), "policies:\n  - name: [a\n")]).unwrap_err();
    let text = errors.to_string();
    assert!(text.starts_with("p.yaml:"), "{text}");
    assert!(!text.starts_with("p.yaml:0:0"), "{text}");
}

#[test]
fn an_explicit_empty_selector_matches_everything() {
    let set = set_of("policies:\n  - name: all\n    action: deny\n    selectors:\n      - {}\n");
    assert_eq!(set.evaluate(&LabelSet::new()).verdict, Action::Deny);
}
