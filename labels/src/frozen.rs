//! [`FrozenLabels`]: a label set packed into two allocations, for caches that hold many.

use std::collections::BTreeMap;

use crate::LabelSet;

/// A [`LabelSet`] frozen into two allocations, for caches that hold many: the same labels in a
/// fraction of the memory (no allocation per key and per value, no tree nodes, and keys named
/// by their number in a table shared by every set).
/// [`FrozenLabels::thaw`] gives the label set back.
///
/// ```
/// use labels::LabelSet;
/// let mut labels = LabelSet::new();
/// labels.insert("process:gid:additional", "27");
/// labels.insert("process:gid:additional", "999");
/// labels.insert("process:pid", "42");
/// assert_eq!(labels.freeze().thaw(), labels);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrozenLabels {
    /// The values (and the keys not in the [key table](keys)), end to end.
    text: Box<str>,
    /// In order, one entry per key and per value: a key is [`KEY`] with either [`INTERNED`]
    /// and its number in the key table, or the end of its text in `text`; a value is the end
    /// of its text in `text`.
    entries: Box<[u32]>,
}

/// Marks a key in [`FrozenLabels::entries`].
const KEY: u32 = 1 << 31;
/// Marks a key kept in the key table, by number.
const INTERNED: u32 = 1 << 30;
/// The rest of an entry: a number in the key table, or an end in the text.
const VALUE: u32 = INTERNED - 1;

/// The key table: label keys are few and shared by every process (`process:pid`,
/// `k8s:pod:name`, ...), so a frozen set names them by number instead of holding their text.
/// Keys are added as met, up to [`MAX_KEYS`] (keys come from sources a workload controls too,
/// such as environment variable names: past the cap, a key is kept in the set's own text).
/// The table only grows; it holds at most `MAX_KEYS` keys of at most [`MAX_KEY_BYTES`].
mod keys {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};

    /// Keys the table holds at most.
    pub const MAX_KEYS: usize = 4096;
    /// Longer keys are never put in the table.
    pub const MAX_KEY_BYTES: usize = 256;

    #[derive(Default)]
    struct Table {
        names: Vec<&'static str>,
        numbers: HashMap<&'static str, u32>,
    }

    fn table() -> &'static RwLock<Table> {
        static TABLE: OnceLock<RwLock<Table>> = OnceLock::new();
        TABLE.get_or_init(RwLock::default)
    }

    /// The number of `key`, added to the table when there is room.
    pub fn number(key: &str) -> Option<u32> {
        if key.len() > MAX_KEY_BYTES {
            return None;
        }
        if let Some(&n) = table()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .numbers
            .get(key)
        {
            return Some(n);
        }
        let mut table = table().write().unwrap_or_else(|e| e.into_inner());
        if let Some(&n) = table.numbers.get(key) {
            return Some(n);
        }
        if table.names.len() >= MAX_KEYS {
            return None;
        }
        // Bounded by MAX_KEYS: leaked once, shared by every set for the process's lifetime.
        let name: &'static str = Box::leak(key.to_owned().into_boxed_str());
        let n = table.names.len() as u32;
        table.names.push(name);
        table.numbers.insert(name, n);
        Some(n)
    }

    /// The key numbered `n`.
    pub fn name(n: u32) -> &'static str {
        table()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .names
            .get(n as usize)
            .copied()
            .unwrap_or_default()
    }
}

impl LabelSet {
    /// The same labels, frozen (see [`FrozenLabels`]).
    pub fn freeze(&self) -> FrozenLabels {
        let mut text = String::new();
        let mut entries = Vec::new();
        for (key, values) in &self.labels {
            match keys::number(key) {
                Some(n) => entries.push(KEY | INTERNED | n),
                None => {
                    text.push_str(key);
                    entries.push(KEY | end(&text));
                }
            }
            for value in values {
                text.push_str(value);
                entries.push(end(&text));
            }
        }
        FrozenLabels {
            text: text.into_boxed_str(),
            entries: entries.into_boxed_slice(),
        }
    }
}

/// The end of `text` as an entry. A process's or container's labels are capped far below
/// 1 GiB (values are cut at a few KiB, labels per collection counted), so it always fits.
fn end(text: &str) -> u32 {
    u32::try_from(text.len())
        .ok()
        .filter(|&n| n <= VALUE)
        .expect("frozen labels of 1 GiB or more")
}

impl FrozenLabels {
    /// Bytes held on the heap.
    pub fn byte_size(&self) -> usize {
        self.text.len() + self.entries.len() * std::mem::size_of::<u32>()
    }

    /// The label set back.
    pub fn thaw(&self) -> LabelSet {
        let mut labels = BTreeMap::new();
        let mut current: Option<(String, Vec<String>)> = None;
        let mut start = 0;
        for &entry in &*self.entries {
            if entry & KEY != 0 {
                let key = if entry & INTERNED != 0 {
                    keys::name(entry & VALUE).to_owned()
                } else {
                    let stop = (entry & VALUE) as usize;
                    let key = self.text[start..stop].to_owned();
                    start = stop;
                    key
                };
                if let Some((key, values)) = current.replace((key, Vec::new())) {
                    labels.insert(key, values);
                }
            } else {
                let stop = (entry & VALUE) as usize;
                if let Some((_, values)) = &mut current {
                    values.push(self.text[start..stop].to_owned());
                }
                start = stop;
            }
        }
        if let Some((key, values)) = current {
            labels.insert(key, values);
        }
        LabelSet { labels }
    }

    /// Whether it holds no label.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

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
    fn keys_past_the_table_stay_in_the_set_and_thaw_the_same() {
        // More distinct keys than the table takes (as a workload choosing environment
        // variable names could make), a key too long for it, and a shared one.
        let mut labels = LabelSet::new();
        for n in 0..keys::MAX_KEYS + 10 {
            labels.insert(format!("test:key:{n}"), format!("v{n}"));
        }
        labels.insert("x".repeat(keys::MAX_KEY_BYTES + 1), "long");
        labels.insert("process:pid", "7");
        let frozen = labels.freeze();
        assert_eq!(frozen.thaw(), labels);
        // Interned keys cost no text: a set of one shared key holds its value only.
        let mut small = LabelSet::new();
        small.insert("process:pid", "42");
        let frozen = small.freeze();
        assert_eq!(frozen.byte_size(), 2 + 4 * 2);
        assert_eq!(frozen.thaw(), small);
    }
}
