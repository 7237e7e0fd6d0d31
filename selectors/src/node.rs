//! A YAML document as a tree of nodes that remember where they are, so that every validation
//! error can say `file:line:column`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Line and column (1-based) of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

/// A YAML node.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `~`, `null` or nothing.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number or a string, as its string form.
    Scalar(String),
    /// A sequence.
    List(Vec<Located<Node>>),
    /// A mapping, in source order (duplicate keys kept, for the validator to report).
    Map(Vec<(Located<String>, Located<Node>)>),
}

/// A value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it is.
    pub at: Position,
}

impl Node {
    /// What kind of node this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Null => "nothing",
            Node::Bool(_) => "a boolean",
            Node::Scalar(_) => "a scalar",
            Node::List(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }

    /// The string form of a scalar or boolean (`true`, `1000`, `web`).
    pub fn scalar_text(&self) -> Option<String> {
        match self {
            Node::Bool(b) => Some(b.to_string()),
            Node::Scalar(s) => Some(s.clone()),
            _ => None,
        }
    }
}

fn position(location: &serde_saphyr::Location) -> Position {
    Position {
        line: location.line(),
        column: location.column(),
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<T>::deserialize(deserializer)?;
        Ok(Located {
            at: position(&spanned.referenced),
            value: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Located<Node>>()? {
            items.push(item);
        }
        Ok(Node::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Located<Node>>()? {
            let value = map.next_value::<Located<Node>>()?;
            let text = key.value.scalar_text().unwrap_or_default();
            entries.push((
                Located {
                    value: text,
                    at: key.at,
                },
                value,
            ));
        }
        Ok(Node::Map(entries))
    }
}

/// Parses a YAML document. The error carries the parser's message and position.
pub fn parse_document(text: &str) -> Result<Located<Node>, (Position, String)> {
    if text.trim().is_empty() {
        return Ok(Located {
            value: Node::Null,
            at: Position { line: 1, column: 1 },
        });
    }
    // Duplicate keys reach the validator, which reports them in its own words.
    let options = serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
    };
    serde_saphyr::from_str_with_options::<Located<Node>>(text, options).map_err(|e| {
        let at = e.location().map(|l| position(&l)).unwrap_or_default();
        let message = e.to_string();
        let message = message.lines().next().unwrap_or_default();
        let message = message.strip_prefix("error: ").unwrap_or(message);
        // Drop the "line L column C: " prefix: the position is reported separately.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if prefix.starts_with("line ") => rest,
            _ => message,
        };
        (at, message.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_keep_positions_and_scalar_text() {
        let doc = parse_document("a:\n  - 1000\n  - true\n  - web\nb: ~\n").unwrap();
        let Node::Map(entries) = doc.value else {
            panic!()
        };
        assert_eq!(entries[0].0.value, "a");
        assert_eq!(entries[0].0.at, Position { line: 1, column: 1 });
        let Node::List(items) = &entries[0].1.value else {
            panic!()
        };
        assert_eq!(items[0].value, Node::Scalar("1000".into()));
        assert_eq!(items[1].value, Node::Bool(true));
        assert_eq!(items[2].at, Position { line: 4, column: 5 });
        assert_eq!(entries[1].1.value, Node::Null);
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let (at, message) = parse_document("a: [1, 2\nb: c\n").unwrap_err();
        assert!(at.line >= 1, "{at:?} {message}");
        assert!(!message.is_empty());
    }
}
