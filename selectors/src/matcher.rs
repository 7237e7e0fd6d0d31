//! Matching a label set against a set of policies, through an index, and explaining the result.
//!
//! Each selector is filed in the index under one "driver" constraint: an exact or any-of
//! constraint files it under each (key, value) it accepts; else a glob, regex or `exists: true`
//! constraint files it under its key; else (only `notIn` / `exists: false`, or `{}`) it is always a
//! candidate. A lookup walks the label set's keys and values once, collects the candidate
//! selectors, and evaluates only those. [`PolicySet::evaluate_naive`] checks every selector and
//! is kept as the reference the index is tested and benchmarked against.

use std::sync::Arc;

use labels::{LabelSet, TrustMap};
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::destination::Target;
use crate::policy::{Action, Operator, Policy};

/// A policy that matched, with why it ranks where it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyMatch {
    /// The policy's name.
    pub name: Arc<str>,
    /// Its action.
    pub action: Action,
    /// Its priority.
    pub priority: i64,
    /// Number of constraints of the best matching selector.
    pub specificity: usize,
    /// Index (from 0) of that selector in the policy.
    pub selector: usize,
    /// The file the policy is in.
    pub file: Arc<str>,
    /// Whether the policy applies only to some destinations (it has `to`). Without a
    /// destination such a policy is listed but does not decide the verdict.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub per_destination: bool,
    /// With a destination: the index (from 0) of the `to` entry that covers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<usize>,
    /// The policy's index in [`PolicySet::policies`].
    #[serde(skip)]
    pub index: usize,
}

/// The matching policies in precedence order, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    /// The first match's action, or the default.
    pub verdict: Action,
    /// Whether no policy matched and the default decided.
    pub default_applied: bool,
    /// Every matching policy: priority (high first), then specificity (high first), then file
    /// order.
    pub matches: Vec<PolicyMatch>,
}

/// The outcome of one constraint, for explanations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConstraintResult {
    /// The label key.
    pub key: String,
    /// The test, e.g. `in ["1000", "1001"]`.
    pub test: String,
    /// Whether it held.
    pub matched: bool,
    /// The label's values (empty: absent).
    pub found: Vec<String>,
    /// Set when the policy requires trusted labels and the values are `self`: they did not
    /// count.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub untrusted: bool,
}

/// One selector checked in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SelectorExplanation {
    /// The policy.
    pub policy: Arc<str>,
    /// The selector's index in it.
    pub selector: usize,
    /// `file:line:column` of the selector.
    pub location: String,
    /// Whether all constraints held.
    pub matched: bool,
    /// Each constraint.
    pub constraints: Vec<ConstraintResult>,
}

/// An evaluation with the selectors that matched and the closest ones that did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The evaluation.
    #[serde(flatten)]
    pub evaluation: Evaluation,
    /// Every selector that matched.
    pub matched: Vec<SelectorExplanation>,
    /// Selectors that did not match, fewest failed constraints first.
    pub near_misses: Vec<SelectorExplanation>,
    /// With a destination: each `to` entry of the policies whose source matched, and whether
    /// it covers the destination (or why not).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<ToExplanation>,
}

/// One `to` entry checked against a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToExplanation {
    /// The policy.
    pub policy: Arc<str>,
    /// The entry's index in its `to` list.
    pub to: usize,
    /// `file:line:column` of the entry.
    pub location: String,
    /// Whether it covers the destination.
    pub matched: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How many near misses an explanation lists.
pub const NEAR_MISS_LIMIT: usize = 10;

/// Where selectors are filed in the index: one entry per label key.
#[derive(Default)]
struct Index {
    keys: FxHashMap<String, KeyEntry>,
    always: Vec<u32>,
}

/// The selectors filed under one label key.
#[derive(Default)]
struct KeyEntry {
    /// Selectors needing one of the key's values to be a given value.
    by_value: FxHashMap<String, Vec<u32>>,
    /// Selectors needing only the key to be present (glob, regex, `exists: true`).
    present: Vec<u32>,
}

/// Below this many selectors, checking each is cheaper than walking the label set through the
/// index (measured: at 10 policies the scan is ~3× faster).
const INDEX_THRESHOLD: usize = 64;

/// Compiled policies, ready to match.
pub struct PolicySet {
    policies: Vec<Policy>,
    /// (policy, selector) of every selector, indexed by selector id.
    selectors: Vec<(u32, u32)>,
    index: Index,
    default_action: Action,
}

impl PolicySet {
    /// Indexes `policies` (in file order). `default_action` is the verdict when none matches.
    pub fn new(policies: Vec<Policy>, default_action: Action) -> Self {
        let mut selectors = Vec::new();
        let mut index = Index::default();
        for (p, policy) in policies.iter().enumerate() {
            for (s, selector) in policy.selectors.iter().enumerate() {
                let id = selectors.len() as u32;
                selectors.push((p as u32, s as u32));
                let exact = selector.constraints.iter().find_map(|c| match &c.operator {
                    Operator::Equals(v) => Some((&c.key, std::slice::from_ref(v))),
                    Operator::AnyOf(list) => Some((&c.key, list.as_slice())),
                    _ => None,
                });
                if let Some((key, values)) = exact {
                    let by_value = &mut index.keys.entry(key.clone()).or_default().by_value;
                    for value in values {
                        let ids = by_value.entry(value.clone()).or_default();
                        if ids.last() != Some(&id) {
                            ids.push(id);
                        }
                    }
                    continue;
                }
                let keyed = selector.constraints.iter().find(|c| {
                    matches!(
                        c.operator,
                        Operator::Glob(..) | Operator::Regex(..) | Operator::Exists(true)
                    )
                });
                match keyed {
                    Some(c) => index
                        .keys
                        .entry(c.key.clone())
                        .or_default()
                        .present
                        .push(id),
                    None => index.always.push(id),
                }
            }
        }
        Self {
            policies,
            selectors,
            index,
            default_action,
        }
    }

    /// The policies, in file order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The verdict when no policy matches.
    pub fn default_action(&self) -> Action {
        self.default_action
    }

    /// The matching policies and the verdict for labels nobody vouched for (a policy with
    /// `requireTrusted` takes every present value as `self`): through the index, or by checking
    /// every selector when there are so few that the index cannot pay off.
    pub fn evaluate(&self, labels: &LabelSet) -> Evaluation {
        self.evaluate_trusted(labels, None, None)
    }

    /// [`PolicySet::evaluate`] for labels with their trust classes (an agent's answer).
    pub fn evaluate_with(&self, labels: &LabelSet, trust: &TrustMap) -> Evaluation {
        self.evaluate_trusted(labels, Some(trust), None)
    }

    /// The evaluation shared by every process whose labels on the `known` keys are `labels`
    /// (with `trust`): `Some` only when no selector of any policy depends on another key (each
    /// holds or fails on the known keys alone), so that no other label could change which
    /// policies match or their order. For judging a process by what the kernel knows at
    /// `exec` (its container's cgroup, its binary) before its labels are collected.
    pub fn evaluate_determined(
        &self,
        labels: &LabelSet,
        trust: Option<&TrustMap>,
        known: &dyn Fn(&str) -> bool,
    ) -> Option<Evaluation> {
        let determined = self.policies.iter().all(|policy| {
            policy.selectors.iter().all(|selector| {
                selector
                    .determined_by(labels, trust, policy.require_trusted, known)
                    .is_some()
            })
        });
        if !determined {
            return None;
        }
        let mut only_known = LabelSet::new();
        for (key, values) in labels.iter() {
            if known(key) {
                for value in values {
                    only_known.insert(key, value.as_str());
                }
            }
        }
        Some(self.evaluate_trusted(&only_known, trust, None))
    }

    /// The evaluation of one connect: the source's labels (with their trust classes, when
    /// known) and its destination. A policy with `to` counts only when one of its entries
    /// covers the destination.
    pub fn evaluate_to(
        &self,
        labels: &LabelSet,
        trust: Option<&TrustMap>,
        target: &Target,
    ) -> Evaluation {
        self.evaluate_trusted(labels, trust, Some(target))
    }

    fn evaluate_trusted(
        &self,
        labels: &LabelSet,
        trust: Option<&TrustMap>,
        target: Option<&Target>,
    ) -> Evaluation {
        let hits = if self.selectors.len() < INDEX_THRESHOLD {
            self.naive(labels, trust)
        } else {
            self.indexed(labels, trust)
        };
        self.rank(hits, target)
    }

    /// Whether selector `s` of policy `p` matches.
    fn selector_matches(
        &self,
        p: u32,
        s: u32,
        labels: &LabelSet,
        trust: Option<&TrustMap>,
    ) -> bool {
        let policy = &self.policies[p as usize];
        policy.selectors[s as usize].matches_with(labels, trust, policy.require_trusted)
    }

    /// [`PolicySet::evaluate`] through the index, whatever the number of selectors.
    pub fn evaluate_indexed(&self, labels: &LabelSet) -> Evaluation {
        let hits = self.indexed(labels, None);
        self.rank(hits, None)
    }

    /// The selectors matching the source: (policy, selector, specificity).
    fn indexed(&self, labels: &LabelSet, trust: Option<&TrustMap>) -> Vec<(u32, u32, usize)> {
        let mut seen = vec![0u64; self.selectors.len().div_ceil(64)];
        let mut hits: Vec<(u32, u32, usize)> = Vec::new();
        let mut consider = |id: u32, hits: &mut Vec<(u32, u32, usize)>| {
            let (word, bit) = ((id / 64) as usize, id % 64);
            if seen[word] & (1 << bit) != 0 {
                return;
            }
            seen[word] |= 1 << bit;
            let (p, s) = self.selectors[id as usize];
            if self.selector_matches(p, s, labels, trust) {
                let selector = &self.policies[p as usize].selectors[s as usize];
                hits.push((p, s, selector.constraints.len()));
            }
        };
        for (key, values) in labels.iter() {
            let Some(entry) = self.index.keys.get(key) else {
                continue;
            };
            if !entry.by_value.is_empty() {
                for value in values {
                    if let Some(ids) = entry.by_value.get(value.as_str()) {
                        for &id in ids {
                            consider(id, &mut hits);
                        }
                    }
                }
            }
            for &id in &entry.present {
                consider(id, &mut hits);
            }
        }
        for &id in &self.index.always {
            consider(id, &mut hits);
        }
        hits
    }

    /// The same result as [`PolicySet::evaluate`], checking every selector of every policy.
    pub fn evaluate_naive(&self, labels: &LabelSet) -> Evaluation {
        let hits = self.naive(labels, None);
        self.rank(hits, None)
    }

    fn naive(&self, labels: &LabelSet, trust: Option<&TrustMap>) -> Vec<(u32, u32, usize)> {
        let mut hits = Vec::new();
        for (p, policy) in self.policies.iter().enumerate() {
            for (s, selector) in policy.selectors.iter().enumerate() {
                if self.selector_matches(p as u32, s as u32, labels, trust) {
                    hits.push((p as u32, s as u32, selector.constraints.len()));
                }
            }
        }
        hits
    }

    /// Orders matching selectors into the evaluation: one entry per policy (its most specific
    /// selector, the first on ties), then precedence. With a `target`, a policy with `to`
    /// stays only when an entry covers it; without one, such a policy does not decide.
    fn rank(&self, mut hits: Vec<(u32, u32, usize)>, target: Option<&Target>) -> Evaluation {
        hits.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)).then(a.1.cmp(&b.1)));
        hits.dedup_by_key(|h| h.0);
        hits.sort_by(|a, b| {
            let (pa, pb) = (&self.policies[a.0 as usize], &self.policies[b.0 as usize]);
            pb.priority
                .cmp(&pa.priority)
                .then(b.2.cmp(&a.2))
                .then(a.0.cmp(&b.0))
        });
        let matches: Vec<PolicyMatch> =
            hits.into_iter()
                .filter_map(|(p, s, specificity)| {
                    let policy = &self.policies[p as usize];
                    let to = match (target, policy.to.is_empty()) {
                        (Some(target), false) => Some(policy.to.iter().position(|to| {
                            to.mismatch(target, policy.require_trusted).is_none()
                        })?),
                        _ => None,
                    };
                    Some(PolicyMatch {
                        name: Arc::clone(&policy.name),
                        action: policy.action,
                        priority: policy.priority,
                        specificity,
                        selector: s as usize,
                        file: Arc::clone(&policy.source),
                        per_destination: !policy.to.is_empty(),
                        to,
                        index: p as usize,
                    })
                })
                .collect();
        // Without a destination, only the policies that apply everywhere decide.
        let deciding = matches
            .iter()
            .find(|m| target.is_some() || !m.per_destination);
        Evaluation {
            verdict: deciding.map_or(self.default_action, |m| m.action),
            default_applied: deciding.is_none(),
            matches,
        }
    }

    /// The evaluation, every matching selector, and the selectors that came closest to matching
    /// with the constraints that failed, for labels nobody vouched for.
    pub fn explain(&self, labels: &LabelSet) -> Explanation {
        self.explain_trusted(labels, None, None)
    }

    /// [`PolicySet::explain`] for labels with their trust classes.
    pub fn explain_with(&self, labels: &LabelSet, trust: &TrustMap) -> Explanation {
        self.explain_trusted(labels, Some(trust), None)
    }

    /// [`PolicySet::evaluate_to`], explained: with each `to` entry of the matching policies.
    pub fn explain_to(
        &self,
        labels: &LabelSet,
        trust: Option<&TrustMap>,
        target: &Target,
    ) -> Explanation {
        self.explain_trusted(labels, trust, Some(target))
    }

    fn explain_trusted(
        &self,
        labels: &LabelSet,
        trust: Option<&TrustMap>,
        target: Option<&Target>,
    ) -> Explanation {
        let evaluation = self.evaluate_trusted(labels, trust, target);
        let mut matched = Vec::new();
        let mut misses = Vec::new();
        for policy in &self.policies {
            for (s, selector) in policy.selectors.iter().enumerate() {
                let constraints: Vec<ConstraintResult> = selector
                    .constraints
                    .iter()
                    .map(|c| {
                        let matched = c.matches(labels);
                        let trusted = !policy.require_trusted || c.matches_trusted(labels, trust);
                        ConstraintResult {
                            key: c.key.clone(),
                            test: c.operator.to_string(),
                            matched: matched && trusted,
                            found: labels.get(&c.key).to_vec(),
                            untrusted: matched && !trusted,
                        }
                    })
                    .collect();
                let failed = constraints.iter().filter(|c| !c.matched).count();
                let explanation = SelectorExplanation {
                    policy: Arc::clone(&policy.name),
                    selector: s,
                    location: format!(
                        "{}:{}:{}",
                        policy.file.display(),
                        selector.at.line,
                        selector.at.column
                    ),
                    matched: failed == 0,
                    constraints,
                };
                if failed == 0 {
                    matched.push(explanation);
                } else {
                    let total = explanation.constraints.len();
                    misses.push((failed, total, explanation));
                }
            }
        }
        // Fewest failures first; among equals, the selector that got furthest.
        misses.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut destinations = Vec::new();
        if let Some(target) = target {
            let sources: Vec<&str> = matched.iter().map(|m| &*m.policy).collect();
            for policy in self.policies.iter().filter(|p| sources.contains(&&*p.name)) {
                for (index, to) in policy.to.iter().enumerate() {
                    let reason = to.mismatch(target, policy.require_trusted);
                    destinations.push(ToExplanation {
                        policy: Arc::clone(&policy.name),
                        to: index,
                        location: format!(
                            "{}:{}:{}",
                            policy.file.display(),
                            to.at.line,
                            to.at.column
                        ),
                        matched: reason.is_none(),
                        reason,
                    });
                }
            }
        }
        Explanation {
            evaluation,
            destinations,
            matched,
            near_misses: misses
                .into_iter()
                .take(NEAR_MISS_LIMIT)
                .map(|(_, _, e)| e)
                .collect(),
        }
    }
}
