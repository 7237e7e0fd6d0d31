//! The trust class of each key of an answer: declared by the collector that emits the key,
//! lowered to `self` where a collection says its value could have been chosen by the process,
//! and raised to `runtime` for the container id a runtime vouched for.

use std::collections::HashMap;

use collectors::{KeySpec, Registry};
use labels::{LabelSet, Trust, TrustMap};

/// Keys lowered to `self` for a process in a mount namespace of its own, which a container's
/// does not make.
const PATHS_IN_CONTAINERS: &[&str] = &["process:binary:path", "process:parent:binary:path"];

/// The declared class of every key the registered collectors can emit.
pub(super) struct TrustTable {
    exact: HashMap<&'static str, Trust>,
    /// Declarations with a variable part (`process:env:<KEY>`).
    patterns: Vec<KeySpec>,
}

impl TrustTable {
    pub fn new(registry: &Registry) -> Self {
        let mut table = Self {
            exact: HashMap::new(),
            patterns: Vec::new(),
        };
        for registered in registry.collectors() {
            for spec in registered.collector.label_keys() {
                if spec.key.contains('<') {
                    table.patterns.push(*spec);
                } else {
                    table.exact.insert(spec.key, spec.trust);
                }
            }
        }
        table
    }

    /// The declared class of `key`; `self` when no collector declares it.
    pub fn declared(&self, key: &str) -> Trust {
        self.exact.get(key).copied().unwrap_or_else(|| {
            self.patterns
                .iter()
                .find(|spec| spec.matches(key))
                .map_or(Trust::SelfReported, |spec| spec.trust)
        })
    }

    /// The class of every key of `labels`: as declared, except the `untrusted` keys (`self`)
    /// and, when a runtime confirmed the container, `process:container:id` (`runtime`) and the
    /// binary paths, which a verified container's mount namespace does not make the process's
    /// own choice.
    pub fn classify(
        &self,
        labels: &LabelSet,
        untrusted: &[&str],
        container_confirmed: bool,
    ) -> TrustMap {
        labels
            .iter()
            .map(|(key, _)| {
                let container_path = container_confirmed && PATHS_IN_CONTAINERS.contains(&key);
                let trust = if untrusted.contains(&key) && !container_path {
                    Trust::SelfReported
                } else if key == "process:container:id" && container_confirmed {
                    Trust::Runtime
                } else {
                    self.declared(key)
                };
                (key.to_owned(), trust)
            })
            .collect()
    }
}
