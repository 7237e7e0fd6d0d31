//! Trust classes: who could have chosen a label's value. Policies that must not be fooled by a
//! process's own claims ask for values that are not [`Trust::SelfReported`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Who could have chosen a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Reported by the kernel about the process, not choosable without privilege: ids,
    /// capabilities, start time, the executable's content hash when hashing is sound.
    Kernel,
    /// From a container runtime or the kubelet, for a container whose membership was verified.
    Runtime,
    /// A node-scope fact: the OS, the firmware, the cloud instance.
    Node,
    /// What the process says about itself or could arrange: its name, arguments, environment,
    /// working directory; a container id from a cgroup nobody vouched for.
    #[serde(rename = "self")]
    SelfReported,
}

impl Trust {
    /// `kernel`, `runtime`, `node` or `self`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Runtime => "runtime",
            Self::Node => "node",
            Self::SelfReported => "self",
        }
    }

    /// Parses `kernel`, `runtime`, `node` or `self`.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Kernel, Self::Runtime, Self::Node, Self::SelfReported]
            .into_iter()
            .find(|trust| trust.as_str() == text)
    }

    /// Whether the process (or its owner) could have chosen the value.
    pub fn is_self(self) -> bool {
        self == Self::SelfReported
    }
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the collectors declare about label keys, as policies need it.
pub trait TrustCatalog: Send + Sync {
    /// The highest class the values of `key` can have, whatever the process; `None` when no
    /// collector declares the key (its values would be `self`).
    fn best(&self, key: &str) -> Option<Trust>;
}

/// A catalog that knows no key: every value is `self`.
pub struct UnknownKeys;

impl TrustCatalog for UnknownKeys {
    fn best(&self, _key: &str) -> Option<Trust> {
        None
    }
}

/// The trust class of each key of a label set. A key it does not list is `self`: nothing vouches
/// for it (labels given by a client, for instance).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrustMap(BTreeMap<String, Trust>);

impl TrustMap {
    /// An empty map: every key is `self`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the class of `key`.
    pub fn insert(&mut self, key: impl Into<String>, trust: Trust) {
        self.0.insert(key.into(), trust);
    }

    /// The class of `key` (`self` when not listed).
    pub fn get(&self, key: &str) -> Trust {
        self.0.get(key).copied().unwrap_or(Trust::SelfReported)
    }

    /// Keys with their class, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Trust)> {
        self.0.iter().map(|(key, trust)| (key.as_str(), *trust))
    }

    /// Number of keys listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Comment lines for the text rendering, one per class with its keys:
    /// `# trust kernel: process:pid process:uid`. Parsers of the text rendering skip them.
    pub fn to_text_comments(&self) -> String {
        let mut out = String::new();
        for class in [
            Trust::Kernel,
            Trust::Runtime,
            Trust::Node,
            Trust::SelfReported,
        ] {
            let keys: Vec<&str> = self
                .iter()
                .filter(|(_, trust)| *trust == class)
                .map(|(key, _)| key)
                .collect();
            if !keys.is_empty() {
                out.push_str("# trust ");
                out.push_str(class.as_str());
                out.push_str(": ");
                out.push_str(&keys.join(" "));
                out.push('\n');
            }
        }
        out
    }
}

impl FromIterator<(String, Trust)> for TrustMap {
    fn from_iter<I: IntoIterator<Item = (String, Trust)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_trip_and_unlisted_keys_are_self() {
        for trust in [
            Trust::Kernel,
            Trust::Runtime,
            Trust::Node,
            Trust::SelfReported,
        ] {
            assert_eq!(Trust::parse(trust.as_str()), Some(trust));
            let json = serde_json::to_string(&trust).unwrap();
            assert_eq!(json, format!("\"{trust}\""));
        }
        assert_eq!(Trust::parse("root"), None);
        let mut map = TrustMap::new();
        map.insert("process:pid", Trust::Kernel);
        map.insert("process:name", Trust::SelfReported);
        map.insert("process:uid", Trust::Kernel);
        assert_eq!(map.get("process:pid"), Trust::Kernel);
        assert_eq!(map.get("docker:id"), Trust::SelfReported);
        assert_eq!(
            serde_json::to_value(&map).unwrap(),
            serde_json::json!({"process:name": "self", "process:pid": "kernel", "process:uid": "kernel"})
        );
        assert_eq!(
            map.to_text_comments(),
            "# trust kernel: process:pid process:uid\n# trust self: process:name\n"
        );
    }
}
