//! Policies checked against what the collectors declare about label keys: a policy that
//! requires trusted labels (`requireTrusted: true`) cannot rest on a key whose values are always
//! the process's own claim; any other allow or deny policy with a selector that depends on such
//! keys is worth a warning, as a process can satisfy it (or escape it) by its own choice.

use labels::{Trust, TrustCatalog};

use crate::error::PolicyError;
use crate::policy::{Action, Policy};

/// What [`check_trust`] found.
#[derive(Debug, Default)]
pub struct TrustFindings {
    /// Constraints a `requireTrusted` policy can never satisfy: the policy set is refused.
    pub errors: Vec<PolicyError>,
    /// Selectors of other allow and deny policies that depend on `self` labels.
    pub warnings: Vec<PolicyError>,
}

/// Why `key` can only hold `self` values, if it can.
fn only_self(catalog: &dyn TrustCatalog, key: &str) -> Option<&'static str> {
    match catalog.best(key) {
        None => Some("no collector declares it, so its values are `self`"),
        Some(Trust::SelfReported) => Some("its values are always `self`: the process chooses them"),
        Some(_) => None,
    }
}

/// Checks `policies` against `catalog`.
pub fn check_trust(policies: &[Policy], catalog: &dyn TrustCatalog) -> TrustFindings {
    let mut findings = TrustFindings::default();
    for policy in policies {
        for selector in &policy.selectors {
            if policy.require_trusted {
                for constraint in &selector.constraints {
                    if let Some(why) = only_self(catalog, &constraint.key) {
                        findings.errors.push(PolicyError::new(
                            &policy.file,
                            constraint.at,
                            format!(
                                "policy `{}` requires trusted labels, but `{}` can never be \
                                 trusted: {why}",
                                policy.name, constraint.key
                            ),
                        ));
                    }
                }
                continue;
            }
            let chosen: Vec<&str> = selector
                .constraints
                .iter()
                .filter(|c| only_self(catalog, &c.key).is_some())
                .map(|c| c.key.as_str())
                .collect();
            if !chosen.is_empty() && matches!(policy.action, Action::Allow | Action::Deny) {
                findings.warnings.push(PolicyError::new(
                    &policy.file,
                    selector.at,
                    format!(
                        "warning: policy `{}` ({}) depends on labels a process chooses for \
                         itself ({}): a process can match it, or avoid it, by its own choice; \
                         rest it on trusted labels, or set `requireTrusted: true`",
                        policy.name,
                        policy.action,
                        chosen.join(", ")
                    ),
                ));
            }
        }
    }
    findings
}
