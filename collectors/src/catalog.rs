//! The trust class of each label key: declared by the collector that emits the key, lowered to
//! `self` where a collection says a value could have been chosen by the process, and raised to
//! `runtime` for the container id a runtime vouched for. One place holds these rules, for the
//! answers (the trust map) and for the policies that demand trusted labels.

use std::collections::HashMap;

use labels::{LabelSet, Trust, TrustCatalog, TrustMap};

use crate::{KeySpec, Registry, Scope};

/// Keys lowered to `self` for a process in a mount namespace of its own, which a verified
/// container's does not make the process's own choice.
const PATHS_IN_CONTAINERS: &[&str] = &["process:binary:path", "process:parent:binary:path"];

/// Keys declared `self` that become `runtime` once a runtime confirms the container.
const CONFIRMED_BY_A_RUNTIME: &[&str] = &["process:container:id"];

/// The declared class of every key the registered collectors can emit.
#[derive(Debug, Default)]
pub struct KeyCatalog {
    exact: HashMap<&'static str, Trust>,
    /// Declarations with a variable part (`process:env:<KEY>`).
    patterns: Vec<KeySpec>,
    /// The collector that declares each key (exact keys and patterns), and its scope.
    owners: Vec<(KeySpec, &'static str, Scope)>,
}

impl KeyCatalog {
    /// The declarations of every collector of `registry`.
    pub fn new(registry: &Registry) -> Self {
        let mut catalog = Self::default();
        for registered in registry.collectors() {
            for spec in registered.collector.label_keys() {
                let collector = &registered.collector;
                catalog
                    .owners
                    .push((*spec, collector.name(), collector.scope()));
                if spec.key.contains('<') {
                    catalog.patterns.push(*spec);
                } else {
                    catalog.exact.insert(spec.key, spec.trust);
                }
            }
        }
        catalog
    }

    /// The declared class of `key`; `None` when no collector declares it.
    pub fn declared(&self, key: &str) -> Option<Trust> {
        self.exact.get(key).copied().or_else(|| {
            self.patterns
                .iter()
                .find(|spec| spec.matches(key))
                .map(|spec| spec.trust)
        })
    }

    /// The collector that declares `key`, when one does.
    pub fn owner(&self, key: &str) -> Option<&'static str> {
        self.owners
            .iter()
            .find(|(spec, _, _)| spec.matches(key))
            .map(|(_, owner, _)| *owner)
    }

    /// The scope of the collector that declares `key`, when one does.
    pub fn scope(&self, key: &str) -> Option<Scope> {
        self.owners
            .iter()
            .find(|(spec, _, _)| spec.matches(key))
            .map(|(_, _, scope)| *scope)
    }

    /// The class of every key of `labels`: as declared (`self` when undeclared), except the
    /// `untrusted` keys (`self`) and, when a runtime confirmed the container, the container id
    /// (`runtime`) and the binary paths (as declared).
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
                } else if container_confirmed && CONFIRMED_BY_A_RUNTIME.contains(&key) {
                    Trust::Runtime
                } else {
                    self.declared(key).unwrap_or(Trust::SelfReported)
                };
                (key.to_owned(), trust)
            })
            .collect()
    }
}

impl TrustCatalog for KeyCatalog {
    fn best(&self, key: &str) -> Option<Trust> {
        if CONFIRMED_BY_A_RUNTIME.contains(&key) {
            return Some(Trust::Runtime);
        }
        self.declared(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CollectorsConfig, HostRoots, build_registry};

    #[test]
    fn declared_lowered_and_raised_classes() {
        let registry = build_registry(&CollectorsConfig::default(), &HostRoots::default()).unwrap();
        let catalog = KeyCatalog::new(&registry);
        assert_eq!(catalog.best("process:uid"), Some(Trust::Kernel));
        assert_eq!(catalog.best("process:name"), Some(Trust::SelfReported));
        assert_eq!(catalog.best("process:env:HOME"), Some(Trust::SelfReported));
        assert_eq!(catalog.best("k8s:label:app"), Some(Trust::Runtime));
        assert_eq!(catalog.best("process:container:id"), Some(Trust::Runtime));
        assert_eq!(catalog.best("nobody:declares"), None);
        assert_eq!(catalog.owner("k8s:label:app"), Some("kubernetes"));
        assert_eq!(catalog.owner("process:uid"), Some("procfs"));
        assert_eq!(catalog.owner("nobody:declares"), None);
        assert_eq!(catalog.scope("docker:label:x"), Some(Scope::Container));
        assert_eq!(catalog.scope("process:uid"), Some(Scope::Process));

        let mut labels = LabelSet::new();
        for key in [
            "process:uid",
            "process:binary:path",
            "process:container:id",
            "x:y",
        ] {
            labels.insert(key, "v");
        }
        let host = catalog.classify(&labels, &[], false);
        assert_eq!(host.get("process:uid"), Trust::Kernel);
        assert_eq!(host.get("process:container:id"), Trust::SelfReported);
        assert_eq!(host.get("x:y"), Trust::SelfReported);
        let own_namespace = catalog.classify(&labels, &["process:binary:path"], false);
        assert_eq!(
            own_namespace.get("process:binary:path"),
            Trust::SelfReported
        );
        let container = catalog.classify(&labels, &["process:binary:path"], true);
        assert_eq!(container.get("process:binary:path"), Trust::Kernel);
        assert_eq!(container.get("process:container:id"), Trust::Runtime);
    }
}
