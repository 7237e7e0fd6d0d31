//! `requireTrusted`: policies that only match labels a process could not have chosen, checked
//! against what the collectors declare (at load), and matched against trust maps.

use std::path::Path;

use labels::{LabelSet, Trust, TrustCatalog, TrustMap};
use selectors::{Action, PolicySet, check_trust, compile_texts};

/// A catalog like the collectors': `process:name` is the process's own, `process:uid` the
/// kernel's, `k8s:label:*` the runtime's.
struct Catalog;

impl TrustCatalog for Catalog {
    fn best(&self, key: &str) -> Option<Trust> {
        match key {
            "process:name" | "process:cmdline" => Some(Trust::SelfReported),
            "process:uid" => Some(Trust::Kernel),
            key if key.starts_with("k8s:label:") => Some(Trust::Runtime),
            _ => None,
        }
    }
}

const POLICIES: &str = "\
policies:
  - name: web-may-connect
    action: allow
    requireTrusted: true
    selectors:
      - k8s:label:app: web
        process:uid: {notIn: [0]}
  - name: root-shells
    action: deny
    selectors:
      - process:name: [sh, bash]
";

fn set() -> PolicySet {
    PolicySet::new(
        compile_texts(&[(Path::new("p.yaml"), POLICIES)]).unwrap(),
        Action::Log,
    )
}

fn labels(pairs: &[(&str, &str)]) -> LabelSet {
    let mut set = LabelSet::new();
    for (key, value) in pairs {
        set.insert(*key, *value);
    }
    set
}

fn trust(pairs: &[(&str, Trust)]) -> TrustMap {
    pairs.iter().map(|(k, t)| (k.to_string(), *t)).collect()
}

#[test]
fn a_trusted_policy_matches_only_values_nobody_could_choose() {
    let set = set();
    let web = labels(&[("k8s:label:app", "web"), ("process:uid", "1000")]);
    let vouched = trust(&[
        ("k8s:label:app", Trust::Runtime),
        ("process:uid", Trust::Kernel),
    ]);
    assert_eq!(set.evaluate_with(&web, &vouched).verdict, Action::Allow);
    // The same values claimed by the process (a label from a cgroup nobody vouched for).
    let claimed = trust(&[
        ("k8s:label:app", Trust::SelfReported),
        ("process:uid", Trust::Kernel),
    ]);
    assert_eq!(set.evaluate_with(&web, &claimed).verdict, Action::Log);
    // Labels without trust classes (a client's own label set): every value is `self`.
    assert_eq!(set.evaluate(&web).verdict, Action::Log);
    // The explanation says which constraint did not count, and why.
    let explanation = set.explain_with(&web, &claimed);
    let miss = explanation
        .near_misses
        .iter()
        .find(|m| &*m.policy == "web-may-connect")
        .unwrap();
    let app = miss
        .constraints
        .iter()
        .find(|c| c.key == "k8s:label:app")
        .unwrap();
    assert!(!app.matched && app.untrusted, "{app:?}");
    // A policy without `requireTrusted` matches claims as before.
    let shell = labels(&[("process:name", "sh")]);
    assert_eq!(set.evaluate(&shell).verdict, Action::Deny);
    // The index agrees with the scan, with and without trust (many policies: indexed).
    let many: String = (0..80)
        .map(|i| {
            format!(
                "  - name: p{i}\n    action: allow\n    requireTrusted: true\n    selectors:\n      - k8s:label:app: web{i}\n"
            )
        })
        .collect();
    let big = PolicySet::new(
        compile_texts(&[(Path::new("many.yaml"), &format!("policies:\n{many}"))]).unwrap(),
        Action::Log,
    );
    let web7 = labels(&[("k8s:label:app", "web7")]);
    let runtime = trust(&[("k8s:label:app", Trust::Runtime)]);
    assert_eq!(big.evaluate_with(&web7, &runtime).verdict, Action::Allow);
    assert_eq!(
        big.evaluate_with(&web7, &TrustMap::new()).verdict,
        Action::Log
    );
}

#[test]
fn a_trusted_policy_on_a_key_that_is_always_self_is_refused_with_its_position() {
    let text = "\
policies:
  - name: shells-allowed
    action: allow
    requireTrusted: true
    selectors:
      - process:uid: 0
        process:name: sh
  - name: by-name
    action: allow
    selectors:
      - process:cmdline: {glob: '*--trusted*'}
  - name: logged
    action: log
    selectors:
      - process:name: sh
";
    let policies = compile_texts(&[(Path::new("p.yaml"), text)]).unwrap();
    let findings = check_trust(&policies, &Catalog);
    let errors: Vec<String> = findings.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("p.yaml:7:9: ") && errors[0].contains("`process:name`"),
        "{errors:?}"
    );
    let warnings: Vec<String> = findings.warnings.iter().map(ToString::to_string).collect();
    // The allow policy on `process:cmdline`; not the `log` one.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("p.yaml:11:9: warning: policy `by-name`"),
        "{warnings:?}"
    );
    // A key nobody declares is refused too: its values could only be `self`.
    let unknown = compile_texts(&[(
        Path::new("q.yaml"),
        "policies:\n  - name: q\n    action: allow\n    requireTrusted: true\n    selectors:\n      - made:up: x\n",
    )])
    .unwrap();
    let findings = check_trust(&unknown, &Catalog);
    assert!(
        findings.errors[0]
            .to_string()
            .contains("no collector declares it"),
        "{:?}",
        findings.errors
    );
    let bad = compile_texts(&[(
        Path::new("r.yaml"),
        "policies:\n  - name: r\n    action: allow\n    requireTrusted: yes please\n    selectors:\n      - process:uid: 0\n",
    )])
    .unwrap_err();
    assert!(bad.to_string().contains("requireTrusted"), "{bad}");
}
