//! Policies and selectors: the matcher that policy engines and firewalls query.
//!
//! A policy file holds a list of policies; each has a name, an action (`allow`, `deny`, `log`),
//! an optional priority and selectors — an OR of selector maps, each an AND of constraints on
//! label keys. See `docs/policies.md` for the file format and the precedence rules.
//!
//! ```
//! use labels::LabelSet;
//! use selectors::{Action, PolicySet, compile_texts};
//! let yaml = "policies:\n  - name: web\n    action: allow\n    selectors:\n      - k8s:label:app: web\n";
//! let policies = compile_texts(&[(std::path::Path::new("inline.yaml"), yaml)]).unwrap();
//! let set = PolicySet::new(policies, Action::Log);
//! let mut labels = LabelSet::new();
//! labels.insert("k8s:label:app", "web");
//! assert_eq!(set.evaluate(&labels).verdict, Action::Allow);
//! ```

pub mod destination;
pub mod error;
pub mod load;
pub mod matcher;
pub mod node;
pub mod policy;
pub mod query;
pub mod store;
pub mod trust;

pub use destination::{Cidr, PortRange, Protocol, Target, To};
pub use error::{PolicyError, PolicyErrors};
pub use load::{compile_texts, load_policies, policy_files};
pub use matcher::{Evaluation, Explanation, PolicyMatch, PolicySet, ToExplanation};
pub use policy::{Action, Constraint, Operator, Policy, Selector};
pub use store::{PolicyStore, ReloadStatus};
pub use trust::{TrustFindings, check_trust};
