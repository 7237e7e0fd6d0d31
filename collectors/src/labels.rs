//! The label model: a sorted, multi-valued set of `key: value` pairs and its two renderings.
//!
//! A key may hold several values (`process:gid:additional`, `gcp:tag`, ...). Keys are sorted;
//! values keep the order in which a collector produced them, without duplicates. An empty value
//! is never stored, so no collector can emit `key: ""`.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

/// A sorted set of labels in which a key may carry several values.
///
/// ```
/// use collectors::LabelSet;
/// let mut labels = LabelSet::new();
/// labels.insert("process:gid:additional", "27");
/// labels.insert("process:gid:additional", "999");
/// labels.insert("process:pid", "42");
/// labels.insert("process:cwd", ""); // empty: not stored
/// assert_eq!(labels.to_text(), "process:gid:additional: 27\nprocess:gid:additional: 999\nprocess:pid: 42\n");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSet {
    labels: BTreeMap<String, Vec<String>>,
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

    /// Adds every value of `values` to `key`, in order.
    pub fn insert_all<I, V>(&mut self, key: &str, values: I)
    where
        I: IntoIterator<Item = V>,
        V: Into<String>,
    {
        for value in values {
            self.insert(key, value);
        }
    }

    /// Adds every pair of `other`, keeping the values already here first.
    pub fn merge(&mut self, other: &LabelSet) {
        for (key, values) in &other.labels {
            self.insert_all(key, values.iter().cloned());
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
    pub fn from_text(text: &str) -> Result<Self, LabelParseError> {
        let mut labels = LabelSet::new();
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
            labels.insert(key, value);
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

/// A [`LabelSet`] frozen into two allocations, for caches that hold many: the same labels in a
/// fraction of the memory (no allocation per key and per value, no tree nodes).
/// [`FrozenLabels::thaw`] gives the label set back.
///
/// ```
/// use collectors::LabelSet;
/// let mut labels = LabelSet::new();
/// labels.insert("process:gid:additional", "27");
/// labels.insert("process:gid:additional", "999");
/// labels.insert("process:pid", "42");
/// assert_eq!(labels.freeze().thaw(), labels);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrozenLabels {
    /// Each key followed by its values, end to end.
    text: Box<str>,
    /// Where each key and each value ends in `text`, in order; keys carry [`KEY_MARK`].
    ends: Box<[usize]>,
}

/// Marks a key's end in [`FrozenLabels::ends`]. No text reaches this length (an allocation
/// never exceeds `isize::MAX` bytes), so the bit is free.
const KEY_MARK: usize = 1 << (usize::BITS - 1);

impl LabelSet {
    /// The same labels, frozen (see [`FrozenLabels`]).
    pub fn freeze(&self) -> FrozenLabels {
        let mut text = String::new();
        let mut ends = Vec::new();
        for (key, values) in &self.labels {
            text.push_str(key);
            ends.push(text.len() | KEY_MARK);
            for value in values {
                text.push_str(value);
                ends.push(text.len());
            }
        }
        FrozenLabels {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

impl FrozenLabels {
    /// The label set again.
    pub fn thaw(&self) -> LabelSet {
        let mut labels = BTreeMap::new();
        let mut current: Option<(&str, Vec<String>)> = None;
        let mut start = 0;
        for &end in &*self.ends {
            let stop = end & !KEY_MARK;
            let piece = &self.text[start..stop];
            start = stop;
            if end & KEY_MARK != 0 {
                if let Some((key, values)) = current.replace((piece, Vec::new())) {
                    labels.insert(key.to_owned(), values);
                }
            } else if let Some((_, values)) = &mut current {
                values.push(piece.to_owned());
            }
        }
        if let Some((key, values)) = current {
            labels.insert(key.to_owned(), values);
        }
        LabelSet { labels }
    }

    /// Whether it holds no label.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Serializes a label set as its bare map (`{"key": ["value"]}`), for a field named `labels`
/// inside a larger document: `#[serde(serialize_with = "collectors::labels::serialize_map")]`.
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

/// A label key segment from free text (a Docker or Kubernetes label key): escaped like values,
/// and spaces too, since keys have none.
pub fn escape_key(key: &str) -> String {
    escape_bytes(key.as_bytes()).replace(' ', "\\x20")
}

/// Turns raw bytes (a path, an argument, an environment value) into a label value, losslessly.
///
/// Valid UTF-8 is kept as is, except that a backslash is written `\\`, and control characters
/// and bytes that are not valid UTF-8 are written `\xNN`. Decoding `\\` and `\xNN` gives back
/// the exact bytes, and a value can never break the one-pair-a-line text rendering.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() && (c as u32) < 0x100 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// Escapes `bytes` like [`escape_bytes`], cutting the raw input at `limit` bytes.
///
/// A cut value ends with the visible marker `...[truncated: N bytes total]`, so nobody mistakes
/// it for the whole value.
pub fn escape_bytes_limited(bytes: &[u8], limit: usize) -> String {
    if bytes.len() <= limit {
        return escape_bytes(bytes);
    }
    // Cut on a character boundary when the cut would split a UTF-8 sequence.
    let mut cut = limit;
    while cut > 0 && cut < bytes.len() && (bytes[cut] & 0xC0) == 0x80 && limit - cut < 4 {
        cut -= 1;
    }
    let mut out = escape_bytes(&bytes[..cut]);
    let _ = write!(out, "{TRUNCATION_MARKER}{} bytes total]", bytes.len());
    out
}

/// The start of the marker appended to values cut at their size limit.
pub const TRUNCATION_MARKER: &str = "...[truncated: ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_labels_thaw_to_the_same_set() {
        let mut labels = LabelSet::new();
        assert!(labels.freeze().is_empty());
        assert_eq!(labels.freeze().thaw(), labels);
        labels.insert("process:name", "nginx: worker");
        labels.insert("process:gid:additional", "27");
        labels.insert("process:gid:additional", "4");
        labels.insert("k8s:pod:label:app", "ünïcode ✓");
        labels.insert("a", "x");
        let frozen = labels.freeze();
        assert!(!frozen.is_empty());
        assert_eq!(frozen.thaw(), labels);
        assert_eq!(frozen.thaw().get("process:gid:additional"), ["27", "4"]);
        assert_eq!(frozen.thaw().to_text(), labels.to_text());
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

    #[test]
    fn escaping_is_lossless_for_invalid_utf8_backslash_and_controls() {
        assert_eq!(escape_bytes(b"plain /usr/bin/x"), "plain /usr/bin/x");
        assert_eq!(escape_bytes("h\u{e9}llo".as_bytes()), "h\u{e9}llo");
        assert_eq!(escape_bytes(b"a\xffb"), "a\\xffb");
        assert_eq!(escape_bytes(b"a\\xffb"), "a\\\\xffb");
        assert_eq!(escape_bytes(b"line1\nline2\t"), "line1\\x0aline2\\x09");
    }

    #[test]
    fn truncation_is_visible_and_keeps_characters_whole() {
        let value = escape_bytes_limited(&[b'a'; 10], 4);
        assert_eq!(value, "aaaa...[truncated: 10 bytes total]");
        // "é" is two bytes: a cut in its middle keeps it out entirely.
        let value = escape_bytes_limited("aé-------".as_bytes(), 2);
        assert!(value.starts_with("a...[truncated: "), "{value}");
        assert_eq!(escape_bytes_limited(b"abc", 3), "abc");
    }
}
