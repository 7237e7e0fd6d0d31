//! [`FrozenLabels`]: a label set packed into one allocation, for caches that hold many.

use std::collections::BTreeMap;

use crate::LabelSet;

/// A [`LabelSet`] frozen into one allocation, for caches that hold many: the same labels in a
/// fraction of the memory (no allocation per key and per value, no tree nodes, keys named by
/// their number in a table shared by every set, and two bytes per key and value when the set's
/// text is under 16 KiB, as a process's is).
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
    /// The entries, then the text. In order, one entry per key and per value: a key is [`KEY`]
    /// with either [`INTERNED`] and its number in the key table, or the end of its text; a
    /// value is the end of its text. The text holds the values (and the keys not in the [key
    /// table](keys)), end to end. Entries are 2 bytes when every one fits (see [`narrow`]),
    /// else 4 (little-endian).
    data: Box<[u8]>,
    /// How many entries, with [`WIDE`] when they take 4 bytes.
    entries: u32,
}

/// Marks a key in an entry (as decoded to 32 bits).
const KEY: u32 = 1 << 31;
/// Marks a key kept in the key table, by number.
const INTERNED: u32 = 1 << 30;
/// The rest of an entry: a number in the key table, or an end in the text.
const VALUE: u32 = INTERNED - 1;
/// In [`FrozenLabels::entries`]: the entries take 4 bytes each.
const WIDE: u32 = 1 << 31;

/// The 2-byte form of an entry: the same two flags in its top bits, 14 bits for the rest.
mod narrow {
    pub const KEY: u16 = 1 << 15;
    pub const INTERNED: u16 = 1 << 14;
    pub const VALUE: u16 = INTERNED - 1;
}

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

    /// The number of `key` when the table holds it (never adds it).
    pub fn known(key: &str) -> Option<u32> {
        table()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .numbers
            .get(key)
            .copied()
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
        // Key numbers are below MAX_KEYS, which fits in 14 bits: the text's length decides.
        let wide = text.len() > usize::from(narrow::VALUE);
        let mut data = Vec::with_capacity(entries.len() * if wide { 4 } else { 2 } + text.len());
        for &entry in &entries {
            if wide {
                data.extend_from_slice(&entry.to_le_bytes());
            } else {
                let mut short = (entry & VALUE) as u16;
                if entry & KEY != 0 {
                    short |= narrow::KEY;
                }
                if entry & INTERNED != 0 {
                    short |= narrow::INTERNED;
                }
                data.extend_from_slice(&short.to_le_bytes());
            }
        }
        data.extend_from_slice(text.as_bytes());
        let count = u32::try_from(entries.len())
            .ok()
            .filter(|&n| n < WIDE)
            .expect("frozen labels of 2^31 entries or more");
        FrozenLabels {
            data: data.into_boxed_slice(),
            entries: if wide { count | WIDE } else { count },
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
        self.data.len()
    }

    /// The entries, decoded to 32 bits, and the text.
    fn parts(&self) -> (impl Iterator<Item = u32> + '_, &str) {
        let wide = self.entries & WIDE != 0;
        let count = (self.entries & !WIDE) as usize;
        let width = if wide { 4 } else { 2 };
        let (entries, text) = self.data.split_at(count * width);
        let entries = entries.chunks_exact(width).map(move |bytes| {
            if let Ok(bytes) = <[u8; 4]>::try_from(bytes) {
                return u32::from_le_bytes(bytes);
            }
            let short = u16::from_le_bytes([bytes[0], bytes[1]]);
            let mut entry = u32::from(short & narrow::VALUE);
            if short & narrow::KEY != 0 {
                entry |= KEY;
            }
            if short & narrow::INTERNED != 0 {
                entry |= INTERNED;
            }
            entry
        });
        // Made from a `str` by `freeze`: always UTF-8.
        (entries, std::str::from_utf8(text).unwrap_or_default())
    }

    /// The label set back.
    pub fn thaw(&self) -> LabelSet {
        let mut labels = BTreeMap::new();
        let mut current: Option<(String, Vec<String>)> = None;
        let mut start = 0;
        let (entries, text) = self.parts();
        for entry in entries {
            if entry & KEY != 0 {
                let key = if entry & INTERNED != 0 {
                    keys::name(entry & VALUE).to_owned()
                } else {
                    let stop = (entry & VALUE) as usize;
                    let key = text[start..stop].to_owned();
                    start = stop;
                    key
                };
                if let Some((key, values)) = current.replace((key, Vec::new())) {
                    labels.insert(key, values);
                }
            } else {
                let stop = (entry & VALUE) as usize;
                if let Some((_, values)) = &mut current {
                    values.push(text[start..stop].to_owned());
                }
                start = stop;
            }
        }
        if let Some((key, values)) = current {
            labels.insert(key, values);
        }
        LabelSet { labels }
    }

    /// The first value of `key`, without thawing the set.
    pub fn first(&self, key: &str) -> Option<&str> {
        let number = keys::known(key);
        let (entries, text) = self.parts();
        let mut start = 0;
        let mut in_key = false;
        for entry in entries {
            if entry & KEY != 0 {
                if in_key {
                    // The key had no value.
                    return None;
                }
                in_key = if entry & INTERNED != 0 {
                    Some(entry & VALUE) == number
                } else {
                    let stop = (entry & VALUE) as usize;
                    let this = &text[start..stop];
                    start = stop;
                    this == key
                };
            } else {
                let stop = (entry & VALUE) as usize;
                if in_key {
                    return Some(&text[start..stop]);
                }
                start = stop;
            }
        }
        None
    }

    /// Whether it holds no label.
    pub fn is_empty(&self) -> bool {
        self.entries & !WIDE == 0
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
        assert_eq!(frozen.first("process:gid:additional"), Some("27"));
        assert_eq!(frozen.first("k8s:pod:label:app"), Some("ünïcode ✓"));
        assert_eq!(frozen.first("a"), Some("x"));
        assert_eq!(frozen.first("process:pid"), None);
        assert_eq!(frozen.first("never:seen:key"), None);
        assert_eq!(frozen.thaw().get("process:gid:additional"), ["27", "4"]);
        assert_eq!(frozen.thaw().to_text(), labels.to_text());
    }

    #[test]
    fn sets_either_side_of_the_narrow_entries_limit_thaw_the_same() {
        // Text of 16 383 bytes: 2-byte entries; one more byte: 4-byte entries.
        for extra in [0, 1, 2] {
            let mut labels = LabelSet::new();
            labels.insert("process:pid", "1");
            labels.insert("process:cmdline", "x".repeat(16_382 + extra));
            let frozen = labels.freeze();
            let narrow = frozen.entries & WIDE == 0;
            assert_eq!(narrow, extra == 0, "{extra}");
            assert_eq!(
                frozen.byte_size(),
                16_383 + extra + 4 * if narrow { 2 } else { 4 }
            );
            assert_eq!(frozen.thaw(), labels);
        }
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
        // Keys in the set's own text are found as well as keys of the table.
        assert_eq!(frozen.first("test:key:4100"), Some("v4100"));
        assert_eq!(
            frozen.first(&"x".repeat(keys::MAX_KEY_BYTES + 1)),
            Some("long")
        );
        assert_eq!(frozen.first("process:pid"), Some("7"));
        // Interned keys cost no text: a set of one shared key holds its value only.
        let mut small = LabelSet::new();
        small.insert("process:pid", "42");
        let frozen = small.freeze();
        assert_eq!(frozen.byte_size(), 2 + 2 * 2);
        assert_eq!(frozen.thaw(), small);
    }
}
