//! A process's evaluation compiled into what the kernel judges its connects by: a rule set — a
//! default, and per address prefix the rules that apply there, in precedence order.
//!
//! The matching policies of a process (in precedence order) are walked until the first one
//! without `to`, which decides everywhere else (its action is the rule set's default; without
//! one, the configured default). Every `to` entry before it becomes rules: one per address range
//! and port range. The kernel finds the longest prefix holding a destination and takes the
//! first of its rules that covers the port and protocol, so each prefix's list holds, in
//! precedence order, every rule whose range contains the prefix (a wider range's rules are
//! copied into each narrower prefix below it).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use kernel_hook::Verdict;
use kernel_hook::abi;
use kernel_hook::maps::{POLICY_NONE, Prefix, RULES_PER_PREFIX, Rule, RulesetEntry};
use labels::{LabelSet, TrustMap};
use selectors::{Action, Cidr, Evaluation, PolicySet, PortRange, Protocol, To};

use super::verdict_of;

/// Policy names by the numbers the kernel reports them by. A name keeps its number for the
/// agent's lifetime, across reloads, so an event is always attributed to the right policy.
#[derive(Debug, Default)]
pub struct PolicyTable {
    ids: HashMap<Arc<str>, u16>,
    names: Vec<Arc<str>>,
}

impl PolicyTable {
    /// The number of policy `name`, given on first sight; `POLICY_NONE` once 65 535 names
    /// were given.
    pub fn id(&mut self, name: &Arc<str>) -> u16 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        if self.names.len() >= usize::from(POLICY_NONE) {
            return POLICY_NONE;
        }
        let id = self.names.len() as u16;
        self.ids.insert(Arc::clone(name), id);
        self.names.push(Arc::clone(name));
        id
    }

    /// The policy numbered `id`.
    pub fn name(&self, id: u16) -> Option<&Arc<str>> {
        self.names.get(usize::from(id))
    }
}

/// A destination the node knows: who is at an address range (on one port, or on all).
#[derive(Debug, Clone, PartialEq)]
pub struct KnownDestination {
    /// Where: one address, or a range (a wildcard listener is reachable on all of loopback).
    pub prefix: Prefix,
    /// The port, when the identity is that of one listening socket.
    pub port: Option<u16>,
    /// The transport of that socket.
    pub protocol: Option<Protocol>,
    /// Who is there.
    pub labels: LabelSet,
    /// The trust classes of `labels`.
    pub trust: TrustMap,
    /// What it is, for logs and explanations (`process 42 listening on tcp/0.0.0.0:80`).
    pub what: String,
}

/// A rule set as the kernel holds it. Equal rule sets are one rule set, shared by every
/// process that has it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompiledRuleset {
    /// What applies where no rule covers a destination.
    pub default: RulesetEntry,
    /// Each prefix with its rules in precedence order, by prefix.
    pub prefixes: Vec<(Prefix, Vec<Rule>)>,
    /// Whether a prefix had more rules than the kernel holds: its list was cut and ends with a
    /// rule refusing everything (never more allowed than the policies say).
    pub truncated: bool,
}

impl CompiledRuleset {
    /// A rule set that decides `verdict` everywhere, by `policy`.
    pub fn everywhere(verdict: Verdict, policy: u16) -> Self {
        Self {
            default: RulesetEntry {
                default_verdict: verdict.value(),
                default_policy: u32::from(policy),
            },
            prefixes: Vec::new(),
            truncated: false,
        }
    }
}

/// Compiles `evaluation` (a process's matches, without a destination) against `set`.
pub fn compile(
    evaluation: &Evaluation,
    set: &PolicySet,
    table: &mut PolicyTable,
    destinations: &[KnownDestination],
) -> CompiledRuleset {
    let policies = set.policies();
    let mut ordered: Vec<(Prefix, Rule)> = Vec::new();
    let mut default = (verdict_of(set.default_action()), POLICY_NONE);
    for matched in &evaluation.matches {
        let Some(policy) = policies.get(matched.index) else {
            continue;
        };
        let id = table.id(&policy.name);
        let verdict = verdict_of(policy.action);
        if policy.to.is_empty() {
            default = (verdict, id);
            break;
        }
        for to in &policy.to {
            for (prefix, ports, protocol) in reaches(to, policy.require_trusted, destinations) {
                ordered.push((
                    prefix,
                    Rule {
                        port_first: ports.first,
                        port_last: ports.last,
                        protocol: protocol_number(protocol),
                        verdict: verdict.value() as u8,
                        policy: id,
                    },
                ));
            }
        }
    }
    // Rules after an identical earlier one can never decide.
    let mut seen = std::collections::HashSet::new();
    ordered.retain(|(prefix, rule)| {
        seen.insert((*prefix, rule.port_first, rule.port_last, rule.protocol))
    });
    let distinct: BTreeSet<Prefix> = ordered.iter().map(|(prefix, _)| *prefix).collect();
    let mut truncated = false;
    let prefixes = distinct
        .into_iter()
        .map(|narrow| {
            let mut rules: Vec<Rule> = ordered
                .iter()
                .filter(|(wide, _)| contains(wide, &narrow))
                .map(|(_, rule)| *rule)
                .collect();
            if rules.len() > RULES_PER_PREFIX {
                truncated = true;
                rules.truncate(RULES_PER_PREFIX - 1);
                rules.push(Rule {
                    port_first: 0,
                    port_last: u16::MAX,
                    protocol: 0,
                    verdict: abi::VERDICT_DENY as u8,
                    policy: POLICY_NONE,
                });
            }
            (narrow, rules)
        })
        .collect();
    CompiledRuleset {
        default: RulesetEntry {
            default_verdict: default.0.value(),
            default_policy: u32::from(default.1),
        },
        prefixes,
        truncated,
    }
}

/// What one `to` entry covers: (prefix, ports, protocol) triples.
fn reaches(
    to: &To,
    require_trusted: bool,
    destinations: &[KnownDestination],
) -> Vec<(Prefix, PortRange, Protocol)> {
    let ports = if to.ports.is_empty() {
        vec![PortRange::ALL]
    } else {
        to.ports.clone()
    };
    if to.selectors.is_empty() {
        let cidrs = if to.cidrs.is_empty() {
            vec![Cidr::ANY]
        } else {
            to.cidrs.clone()
        };
        return cidrs
            .iter()
            .flat_map(|cidr| {
                let prefix = Prefix {
                    address: cidr.network,
                    length: cidr.prefix,
                };
                ports.iter().map(move |ports| (prefix, *ports, to.protocol))
            })
            .collect();
    }
    // Destination identity: the known destinations whose labels one selector matches, within
    // the entry's ranges, ports and protocol.
    let mut reached = Vec::new();
    for destination in destinations {
        let within_a_cidr = to.cidrs.iter().any(|cidr| {
            let range = Prefix {
                address: cidr.network,
                length: cidr.prefix,
            };
            contains(&range, &destination.prefix)
        });
        if !to.cidrs.is_empty() && !within_a_cidr {
            continue;
        }
        let matched = to.selectors.iter().any(|selector| {
            selector.matches_with(
                &destination.labels,
                Some(&destination.trust),
                require_trusted,
            )
        });
        if !matched {
            continue;
        }
        let protocol = match (to.protocol, destination.protocol) {
            (Protocol::Any, Some(theirs)) => theirs,
            (ours, Some(theirs)) if ours != theirs && theirs != Protocol::Any => continue,
            (ours, _) => ours,
        };
        let prefix = destination.prefix;
        match destination.port {
            Some(port) => {
                if ports.iter().any(|range| range.contains(port)) {
                    reached.push((
                        prefix,
                        PortRange {
                            first: port,
                            last: port,
                        },
                        protocol,
                    ));
                }
            }
            None => reached.extend(ports.iter().map(|ports| (prefix, *ports, protocol))),
        }
    }
    reached
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => abi::PROTO_TCP as u8,
        Protocol::Udp => abi::PROTO_UDP as u8,
        Protocol::Any => 0,
    }
}

/// Whether `wide` holds every address of `narrow`.
fn contains(wide: &Prefix, narrow: &Prefix) -> bool {
    if wide.length > narrow.length {
        return false;
    }
    let bits = |address: std::net::Ipv6Addr, length: u8| {
        let value = u128::from(address);
        if length == 0 {
            0
        } else {
            value & (u128::MAX << (128 - u32::from(length)))
        }
    };
    bits(narrow.address, wide.length) == bits(wide.address, wide.length)
}

/// The action a rule set gives a connect to `address`:`port` over `protocol` (`None`: the
/// default), as the kernel finds it: for tests and `explain`.
pub fn decide(
    ruleset: &CompiledRuleset,
    address: IpAddr,
    port: u16,
    protocol: Protocol,
) -> (u32, u16) {
    let host = Prefix::host(address);
    let longest = ruleset
        .prefixes
        .iter()
        .filter(|(prefix, _)| contains(prefix, &host))
        .max_by_key(|(prefix, _)| prefix.length);
    if let Some((_, rules)) = longest {
        let number = protocol_number(protocol);
        for rule in rules {
            if (rule.port_first..=rule.port_last).contains(&port)
                && (rule.protocol == 0 || rule.protocol == number)
            {
                return (u32::from(rule.verdict), rule.policy);
            }
        }
    }
    (
        ruleset.default.default_verdict,
        ruleset.default.default_policy as u16,
    )
}

/// The action of `verdict` (`VERDICT_*`).
pub fn action_of(verdict: u32) -> Action {
    if verdict == abi::VERDICT_DENY {
        Action::Deny
    } else {
        Action::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selectors::{PolicyStore, Target};

    fn set(yaml: &str) -> Arc<PolicySet> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), yaml).unwrap();
        PolicyStore::load(vec![dir.path().to_owned()], Action::Allow)
            .unwrap()
            .current()
    }

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        let mut labels = LabelSet::new();
        for (key, value) in pairs {
            labels.insert(*key, *value);
        }
        labels
    }

    const POLICIES: &str = "policies:
  - name: web-to-db
    action: allow
    selectors: [{app: web}]
    to:
      - cidr: [10.0.0.0/8]
        ports: [5432]
        protocol: tcp
  - name: no-ten-slash-sixteen
    action: deny
    selectors: [{app: web}]
    to:
      - cidr: 10.1.0.0/16
  - name: dns
    action: allow
    selectors: [{app: web}]
    to:
      - ports: [53]
        protocol: udp
  - name: web-nowhere-else
    action: deny
    selectors: [{app: web}]
  - name: never-reached
    action: allow
    selectors: [{app: web}]
    to:
      - cidr: 192.168.0.0/16
";

    #[test]
    fn the_kernels_decision_is_the_evaluators_for_every_destination() {
        let set = set(POLICIES);
        let web = labels(&[("app", "web")]);
        let evaluation = set.evaluate(&web);
        let mut table = PolicyTable::default();
        let ruleset = compile(&evaluation, &set, &mut table, &[]);
        assert!(!ruleset.truncated);
        // The /16 holds the /8's rule, its own refusal, and the everywhere rule for DNS.
        let sixteen = ruleset
            .prefixes
            .iter()
            .find(|(p, _)| p.length == 96 + 16)
            .unwrap();
        assert_eq!(sixteen.1.len(), 3);
        for address in ["10.1.2.3", "10.9.9.9", "192.168.1.1", "8.8.8.8", "fd00::1"] {
            for port in [53, 5432, 443] {
                for protocol in [Protocol::Tcp, Protocol::Udp] {
                    let target = Target {
                        address: address.parse().unwrap(),
                        port,
                        protocol,
                        identity: None,
                    };
                    let expected = set.evaluate_to(&web, None, &target);
                    let (verdict, policy) = decide(&ruleset, target.address, port, protocol);
                    let expected_action = match expected.verdict {
                        Action::Deny => Action::Deny,
                        Action::Allow | Action::Log => Action::Allow,
                    };
                    assert_eq!(
                        action_of(verdict),
                        expected_action,
                        "{address}:{port}/{protocol:?}"
                    );
                    let decided_by = table.name(policy).map(|n| n.to_string());
                    assert_eq!(
                        decided_by,
                        expected.matches.first().map(|m| m.name.to_string()),
                        "{address}:{port}/{protocol:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn destination_identities_become_host_rules_and_too_many_rules_refuse() {
        let set = set("policies:
  - name: to-db
    action: allow
    selectors: [{app: web}]
    to:
      - selectors: [{app: db}]
        ports: [5432]
  - name: rest
    action: deny
    selectors: [{app: web}]
");
        let host = |address: &str| Prefix::host(address.parse().unwrap());
        let mut db = KnownDestination {
            prefix: host("172.18.0.3"),
            port: None,
            protocol: None,
            labels: labels(&[("app", "db")]),
            trust: TrustMap::new(),
            what: "db".to_owned(),
        };
        let other = KnownDestination {
            prefix: host("172.18.0.4"),
            labels: labels(&[("app", "cache")]),
            ..db.clone()
        };
        let listener = KnownDestination {
            prefix: host("127.0.0.1"),
            port: Some(5432),
            protocol: Some(Protocol::Tcp),
            ..db.clone()
        };
        let evaluation = set.evaluate(&labels(&[("app", "web")]));
        let mut table = PolicyTable::default();
        let ruleset = compile(
            &evaluation,
            &set,
            &mut table,
            &[db.clone(), other, listener],
        );
        let allow = abi::VERDICT_ALLOW;
        let deny = abi::VERDICT_DENY;
        let at =
            |address: &str, port| decide(&ruleset, address.parse().unwrap(), port, Protocol::Tcp).0;
        assert_eq!(at("172.18.0.3", 5432), allow);
        assert_eq!(at("172.18.0.3", 5433), deny);
        assert_eq!(at("172.18.0.4", 5432), deny);
        assert_eq!(at("127.0.0.1", 5432), allow);
        assert_eq!(at("127.0.0.2", 5432), deny);

        // 40 known databases on 40 ports each in one /16 rule: each host prefix holds its own
        // rules plus the /16's, at most RULES_PER_PREFIX.
        let mut many = Vec::new();
        for n in 0..40u8 {
            db.prefix = host(&format!("10.0.0.{n}"));
            many.push(db.clone());
        }
        let set = set_with_many_ports();
        let evaluation = set.evaluate(&labels(&[("app", "web")]));
        let ruleset = compile(&evaluation, &set, &mut table, &many);
        assert!(ruleset.truncated);
        assert!(
            ruleset
                .prefixes
                .iter()
                .all(|(_, r)| r.len() <= RULES_PER_PREFIX)
        );
    }

    fn set_with_many_ports() -> Arc<PolicySet> {
        let ports: Vec<String> = (1000..1040).map(|p| p.to_string()).collect();
        set(&format!(
            "policies:
  - name: many
    action: allow
    selectors: [{{app: web}}]
    to:
      - selectors: [{{app: db}}]
        ports: [{}]
",
            ports.join(", ")
        ))
    }

    #[test]
    fn policy_numbers_outlive_reloads() {
        let mut table = PolicyTable::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert_eq!(table.id(&a), 0);
        assert_eq!(table.id(&b), 1);
        assert_eq!(table.id(&a), 0);
        assert_eq!(table.name(1).map(|n| &**n), Some("b"));
        assert_eq!(table.name(7), None);
    }
}
