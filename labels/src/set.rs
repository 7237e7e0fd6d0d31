//! [`LabelSet`]: the sorted, multi-valued label set, its text rendering and its parser.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

/// A sorted set of labels in which a key may carry several values.
///
/// ```
/// use labels::LabelSet;
/// let mut labels = LabelSet::new();
/// labels.insert("process:gid:additional", "27");
/// labels.insert("process:gid:additional", "999");
/// labels.insert("process:pid", "42");
/// labels.insert("process:cwd", ""); // empty: not stored
/// assert_eq!(labels.to_text(), "process:gid:additional: 27\nprocess:gid:additional: 999\nprocess:pid: 42\n");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSet {
    pub(crate) labels: BTreeMap<String, Vec<String>>,
}

impl LabelSet {
    /// An empty label set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value to `key`. Empty values and values already present under `key` are ignored.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let value = value.into();
        if value.is_empty() {
            return;
        }
        let values = self.labels.entry(key.into()).or_default();
        if !values.contains(&value) {
            values.push(value);
        }
    }

    /// Adds every value of `values` to `key`, in order (duplicates and empty values ignored),
    /// in time linear in the number of values, however many.
    pub fn insert_all<I, V>(&mut self, key: &str, values: I)
    where
        I: IntoIterator<Item = V>,
        V: Into<String>,
    {
        /// Below this many values a scan is cheaper than a hash set.
        const SCAN: usize = 16;
        let mut values = values.into_iter().peekable();
        if values.peek().is_none() {
            return;
        }
        let few = values.size_hint().1.is_some_and(|n| n < SCAN);
        let existing = self.labels.entry(key.to_owned()).or_default();
        if few && existing.len() < SCAN {
            for value in values {
                let value = value.into();
                if !value.is_empty() && !existing.contains(&value) {
                    existing.push(value);
                }
            }
        } else {
            let mut seen: std::collections::HashSet<String> = existing.iter().cloned().collect();
            for value in values {
                let value = value.into();
                if !value.is_empty() && seen.insert(value.clone()) {
                    existing.push(value);
                }
            }
        }
        if existing.is_empty() {
            self.labels.remove(key);
        }
    }

    /// Adds every pair of `other`, keeping the values already here first.
    pub fn merge(&mut self, other: &LabelSet) {
        for (key, values) in &other.labels {
            self.insert_all(key, values.iter().cloned());
        }
    }

    /// [`LabelSet::merge`], taking `other`'s keys and values instead of copying them.
    pub fn absorb(&mut self, other: LabelSet) {
        if self.labels.is_empty() {
            *self = other;
            return;
        }
        for (key, values) in other.labels {
            match self.labels.entry(key) {
                // A set's values are already distinct and not empty.
                Entry::Vacant(vacant) => {
                    vacant.insert(values);
                }
                Entry::Occupied(occupied) => {
                    let key = occupied.key().clone();
                    self.insert_all(&key, values);
                }
            }
        }
    }

    /// The values of `key`, in insertion order (empty when the key is absent).
    pub fn get(&self, key: &str) -> &[String] {
        self.labels.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The first value of `key`.
    pub fn first(&self, key: &str) -> Option<&str> {
        self.get(key).first().map(String::as_str)
    }

    /// Whether `key` holds at least one value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.labels.contains_key(key)
    }

    /// Removes `key` and its values.
    pub fn remove(&mut self, key: &str) -> Option<Vec<String>> {
        self.labels.remove(key)
    }

    /// About how many bytes it holds (keys, values and their bookkeeping), for caches bounded
    /// in bytes.
    pub fn byte_size(&self) -> usize {
        self.labels
            .iter()
            .map(|(key, values)| {
                key.len() + 48 + values.iter().map(|v| v.len() + 24).sum::<usize>()
            })
            .sum()
    }

    /// Number of distinct keys.
    pub fn key_count(&self) -> usize {
        self.labels.len()
    }

    /// Number of `key: value` pairs.
    pub fn pair_count(&self) -> usize {
        self.labels.values().map(Vec::len).sum()
    }

    /// Whether the set holds no label.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Keys with their values, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.labels
            .iter()
            .map(|(key, values)| (key.as_str(), values.as_slice()))
    }

    /// Every `(key, value)` pair, sorted by key, values in insertion order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels
            .iter()
            .flat_map(|(key, values)| values.iter().map(move |v| (key.as_str(), v.as_str())))
    }

    /// The reference's text rendering: one `key: value` line per pair, sorted by key.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (key, value) in self.pairs() {
            let _ = writeln!(out, "{key}: {value}");
        }
        out
    }

    /// Parses the text rendering back (`key: value` lines; blank lines and `#` comments skipped).
    ///
    /// The key ends at the first `": "` (keys never contain a space), so values may contain `: `.
    /// Linear in the size of the text, however many values a key has.
    pub fn from_text(text: &str) -> Result<Self, LabelParseError> {
        let mut labels = LabelSet::new();
        let mut seen: std::collections::HashSet<(&str, &str)> = std::collections::HashSet::new();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim_end();
            if trimmed.trim_start().is_empty() || trimmed.trim_start().starts_with('#') {
                continue;
            }
            let (key, value) = trimmed
                .split_once(": ")
                .or_else(|| trimmed.strip_suffix(':').map(|k| (k, "")))
                .ok_or_else(|| LabelParseError {
                    line: index + 1,
                    message: format!("expected `key: value`, found {trimmed:?}"),
                })?;
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(LabelParseError {
                    line: index + 1,
                    message: format!("invalid key {key:?}: keys are non-empty and have no spaces"),
                });
            }
            if !value.is_empty() && seen.insert((key, value)) {
                labels
                    .labels
                    .entry(key.to_owned())
                    .or_default()
                    .push(value.to_owned());
            }
        }
        Ok(labels)
    }

    /// The labels as a map from key to values, e.g. to serialize them without the `labels`
    /// wrapper.
    pub fn as_map(&self) -> &BTreeMap<String, Vec<String>> {
        &self.labels
    }

    /// The JSON rendering: `{"labels": {"key": ["v1", "v2"]}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Serializes a label set as its bare map (`{"key": ["value"]}`), for a field named `labels`
/// inside a larger document: `#[serde(serialize_with = "labels::serialize_map")]`.
pub fn serialize_map<S: serde::Serializer>(labels: &LabelSet, s: S) -> Result<S::Ok, S::Error> {
    labels.labels.serialize(s)
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// A line of a text label set that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LabelParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorbing_a_set_is_merging_it() {
        let set = |pairs: &[(&str, &str)]| {
            let mut set = LabelSet::new();
            for (key, value) in pairs {
                set.insert(*key, *value);
            }
            set
        };
        let here = set(&[("a", "1"), ("b", "2"), ("b", "3")]);
        let other = set(&[("b", "3"), ("b", "4"), ("c", "5"), ("a", "0")]);
        for base in [here.clone(), LabelSet::new()] {
            let mut merged = base.clone();
            merged.merge(&other);
            let mut absorbed = base;
            absorbed.absorb(other.clone());
            assert_eq!(absorbed, merged);
        }
        let mut absorbed = here.clone();
        absorbed.absorb(other);
        assert_eq!(absorbed.get("b"), ["2", "3", "4"]);
        assert_eq!(absorbed.get("a"), ["1", "0"]);
    }

    #[test]
    fn empty_values_are_not_stored_and_duplicates_collapse() {
        let mut labels = LabelSet::new();
        labels.insert("a", "");
        labels.insert("b", "1");
        labels.insert("b", "1");
        labels.insert("b", "0");
        assert!(!labels.contains_key("a"));
        assert_eq!(labels.get("b"), ["1", "0"]);
        assert_eq!(labels.pair_count(), 2);
    }

    #[test]
    fn text_is_sorted_by_key_with_values_in_source_order() {
        let mut labels = LabelSet::new();
        labels.insert("z:key", "1");
        labels.insert("a:key", "second");
        labels.insert("a:key", "first");
        assert_eq!(labels.to_text(), "a:key: second\na:key: first\nz:key: 1\n");
    }

    #[test]
    fn json_rendering_has_a_labels_object_of_arrays() {
        let mut labels = LabelSet::new();
        labels.insert("gcp:tag", "tag-1");
        labels.insert("gcp:tag", "tag-2");
        assert_eq!(
            labels.to_json(),
            serde_json::json!({"labels": {"gcp:tag": ["tag-1", "tag-2"]}})
        );
        let back: LabelSet = serde_json::from_value(labels.to_json()).unwrap();
        assert_eq!(back, labels);
    }

    #[test]
    fn text_round_trips_and_values_may_contain_colon_space() {
        let mut labels = LabelSet::new();
        labels.insert("docker:label:maintainer", "NGINX: <a@b.c>");
        labels.insert("k8s:annotation:x", "y");
        assert_eq!(LabelSet::from_text(&labels.to_text()).unwrap(), labels);
        let err = LabelSet::from_text("ok: 1\nnot a label\n").unwrap_err();
        assert_eq!(err.line, 2);
    }
}

#[cfg(test)]
mod scale_tests {
    use super::*;

    #[test]
    fn many_values_of_one_key_are_deduplicated_in_order() {
        let text: String = (0..50_000)
            .map(|n| format!("k: {}\n", n % 40_000))
            .collect();
        let labels = LabelSet::from_text(&text).unwrap();
        assert_eq!(labels.get("k").len(), 40_000);
        assert_eq!(labels.get("k")[..3], ["0", "1", "2"]);
        let mut merged = LabelSet::new();
        merged.insert("k", "39999");
        merged.insert_all("k", labels.get("k").iter().cloned());
        assert_eq!(merged.get("k").len(), 40_000);
        assert_eq!(merged.get("k")[0], "39999");
        merged.insert_all("empty", [""]);
        assert!(!merged.contains_key("empty"));
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text parses to a label set or to an error naming a line.
        #[test]
        fn text_of_any_content(text in "[ -~\n\t:#]{0,400}") {
            if let Err(error) = LabelSet::from_text(&text) {
                prop_assert!(error.line >= 1 && error.line <= text.lines().count().max(1));
            }
        }

        /// What is written reads back the same.
        #[test]
        fn the_text_rendering_reads_back(pairs in prop::collection::vec(("[a-z:]{1,8}", "[ -~]{1,12}"), 0..20)) {
            let mut labels = LabelSet::new();
            for (key, value) in &pairs {
                let value = value.trim();
                if !value.is_empty() && !key.starts_with(':') && !key.ends_with(':') && !key.contains("::") {
                    labels.insert(key.as_str(), value);
                }
            }
            let back = LabelSet::from_text(&labels.to_text()).unwrap();
            prop_assert_eq!(back, labels);
        }
    }
}
