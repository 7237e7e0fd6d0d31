//! Policies with destinations (`to`): validation with positions, and the verdict of a connect
//! from a source's labels to an address, a port and a protocol, or a destination identity.

use std::path::Path;

use labels::{LabelSet, Trust, TrustMap};
use selectors::{Action, PolicySet, Target, compile_texts};

const POLICIES: &str = "\
policies:
  - name: checkout-to-payments
    action: allow
    priority: 10
    selectors: [{k8s:label:app: checkout}]
    to:
      - cidr: [10.0.0.0/8, \"fd00::/8\"]
        ports: [443, \"8000-8100\"]
        protocol: tcp
      - selectors: [{k8s:label:app: payments}]
        ports: [443]
  - name: checkout-dns
    action: allow
    selectors: [{k8s:label:app: checkout}]
    to:
      - cidr: 10.96.0.10
        ports: 53
        protocol: udp
  - name: checkout-nowhere-else
    action: deny
    selectors: [{k8s:label:app: checkout}]
";

fn set() -> PolicySet {
    PolicySet::new(
        compile_texts(&[(Path::new("p.yaml"), POLICIES)]).unwrap(),
        Action::Allow,
    )
}

fn checkout() -> LabelSet {
    let mut labels = LabelSet::new();
    labels.insert("k8s:label:app", "checkout");
    labels
}

fn verdict(set: &PolicySet, to: &str) -> (Action, Option<String>) {
    let target = Target::parse(to).unwrap();
    let evaluation = set.evaluate_to(&checkout(), None, &target);
    (
        evaluation.verdict,
        evaluation.matches.first().map(|m| m.name.to_string()),
    )
}

#[test]
fn the_first_policy_that_covers_the_destination_decides() {
    let set = set();
    let allowed = Some("checkout-to-payments".to_owned());
    assert_eq!(
        verdict(&set, "10.1.2.3:443/tcp"),
        (Action::Allow, allowed.clone())
    );
    assert_eq!(
        verdict(&set, "10.1.2.3:8050/tcp"),
        (Action::Allow, allowed.clone())
    );
    assert_eq!(verdict(&set, "[fd00::7]:443/tcp"), (Action::Allow, allowed));
    let denied = Some("checkout-nowhere-else".to_owned());
    // Wrong port, wrong protocol, outside the ranges: the catch-all deny.
    assert_eq!(
        verdict(&set, "10.1.2.3:80/tcp"),
        (Action::Deny, denied.clone())
    );
    assert_eq!(
        verdict(&set, "10.1.2.3:443/udp"),
        (Action::Deny, denied.clone())
    );
    assert_eq!(
        verdict(&set, "192.168.1.1:443/tcp"),
        (Action::Deny, denied.clone())
    );
    assert_eq!(
        verdict(&set, "10.96.0.10:53/udp"),
        (Action::Allow, Some("checkout-dns".to_owned()))
    );
    assert_eq!(verdict(&set, "10.96.0.11:53/udp"), (Action::Deny, denied));

    // By the destination's identity: a payments pod at another address, on 443 only.
    let mut payments = LabelSet::new();
    payments.insert("k8s:label:app", "payments");
    let trust: TrustMap = [("k8s:label:app".to_owned(), Trust::Runtime)]
        .into_iter()
        .collect();
    let mut target = Target::parse("192.168.7.7:443/tcp").unwrap();
    target.identity = Some((payments, trust));
    let evaluation = set.evaluate_to(&checkout(), None, &target);
    assert_eq!(evaluation.verdict, Action::Allow);
    assert_eq!(evaluation.matches[0].to, Some(1));
    target.port = 8443;
    assert_eq!(
        set.evaluate_to(&checkout(), None, &target).verdict,
        Action::Deny
    );

    // Without a destination, only the policies that apply everywhere decide; the others are
    // listed, marked.
    let evaluation = set.evaluate(&checkout());
    assert_eq!(evaluation.verdict, Action::Deny);
    assert!(evaluation.matches[0].per_destination);
    // The explanation says which `to` entry covered the destination, and why the others not.
    let target = Target::parse("10.1.2.3:80/tcp").unwrap();
    let explanation = set.explain_to(&checkout(), None, &target);
    let first = explanation
        .destinations
        .iter()
        .find(|d| &*d.policy == "checkout-to-payments" && d.to == 0)
        .unwrap();
    assert!(!first.matched);
    assert!(
        first.reason.as_deref().unwrap().contains("port 80"),
        "{first:?}"
    );
    assert_eq!(first.location, "p.yaml:7:9");
}

#[test]
fn destinations_are_validated_with_positions_and_every_error_is_listed() {
    let text = "\
policies:
  - name: a
    action: allow
    selectors: [{k: v}]
    to:
      - cidr: [10.0.0.1/8, 10.0.0.0/40, nonsense]
        ports: [80-20, 70000, 443]
        protocol: icmp
      - hosts: [x]
  - name: a
    action: allow
    selectors:
      - k: {between: [1, 2]}
  - name: b
    action: deny
    selectors: [{k: v}]
    to: []
";
    let errors = compile_texts(&[(Path::new("p.yaml"), text)])
        .unwrap_err()
        .to_string();
    let expected = [
        "p.yaml:6:16: CIDR \"10.0.0.1/8\" has host bits set",
        "p.yaml:6:28: invalid prefix length \"40\"",
        "p.yaml:6:41: invalid address \"nonsense\"",
        "p.yaml:7:17: invalid port range \"80-20\"",
        "p.yaml:7:24: invalid port \"70000\"",
        "p.yaml:8:19: invalid protocol `icmp`, expected one of tcp, udp, any",
        "p.yaml:9:9: unknown field `hosts` in a `to` entry",
        // The second `a` has an error of its own and is still reported as a duplicate.
        "p.yaml:10:5: duplicate policy name `a` (first defined at p.yaml:2:5)",
        "p.yaml:13:13: unknown operator `between`",
        "p.yaml:17:9: `to` is empty",
    ];
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{errors}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(want),
            "{line:?} does not start with {want:?}\n{errors}"
        );
    }
}

/// What the kernel knows at exec decides a process's policies only when no selector depends on
/// anything else.
#[test]
fn an_evaluation_is_determined_by_known_keys_only_when_no_selector_needs_another() {
    let text = "\
policies:
  - name: quarantine
    action: deny
    selectors: [{docker:label:policy: quarantined}]
  - name: root-shells
    action: deny
    selectors: [{docker:label:policy: shells, process:uid: 0}]
";
    let set = PolicySet::new(
        compile_texts(&[(Path::new("p.yaml"), text)]).unwrap(),
        Action::Allow,
    );
    let known = |key: &str| key.starts_with("docker:");
    let mut container = LabelSet::new();
    container.insert("docker:label:policy", "quarantined");
    // `root-shells` fails on its docker constraint whatever the uid: determined.
    let evaluation = set.evaluate_determined(&container, None, &known).unwrap();
    assert_eq!(evaluation.verdict, Action::Deny);
    assert_eq!(evaluation.matches[0].name.as_ref(), "quarantine");
    // A process's uid, not known at exec, never counts, even when given.
    container.insert("process:uid", "0");
    let evaluation = set.evaluate_determined(&container, None, &known).unwrap();
    assert_eq!(evaluation.matches.len(), 1);
    // For a `shells` container the uid decides: not determined.
    let mut shells = LabelSet::new();
    shells.insert("docker:label:policy", "shells");
    assert!(set.evaluate_determined(&shells, None, &known).is_none());
    // Other containers: every selector fails on a docker constraint.
    let mut other = LabelSet::new();
    other.insert("docker:label:policy", "none");
    let evaluation = set.evaluate_determined(&other, None, &known).unwrap();
    assert!(evaluation.default_applied);
}
