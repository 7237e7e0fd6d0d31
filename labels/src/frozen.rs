//! [`FrozenLabels`]: a label set packed into two allocations, for caches that hold many.

use std::collections::BTreeMap;

use crate::LabelSet;

/// A [`LabelSet`] frozen into two allocations, for caches that hold many: the same labels in a
/// fraction of the memory (no allocation per key and per value, no tree nodes).
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
    /// The bytes it holds (its text and its index), for caches bounded in bytes.
    pub fn byte_size(&self) -> usize {
        self.text.len() + self.ends.len() * std::mem::size_of::<usize>()
    }

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
}
