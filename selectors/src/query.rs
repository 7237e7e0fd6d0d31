//! Selectors written on one line, for queries (`/processes?selector=…`, `/events?selector=…`,
//! the client's `--selector`): comma-separated tests, all of which must hold.
//!
//! | item | holds when the label |
//! |---|---|
//! | `key=value` | has that value (a value with `*`, `?`, `[` or `{` that is a valid glob is one, as in policies; else it is taken literally) |
//! | `key=a\|b` | has one of the values (taken literally) |
//! | `key!=value`, `key!=a\|b` | has none of them (absent included) |
//! | `key` | is present |
//! | `!key` | is absent |
//!
//! Values cannot hold `,` or `|`; write a policy file for those. Spaces around items, keys and
//! values are ignored; empty items are skipped, and a selector with none matches everything.
//! Keys hold no spaces, control characters, `=`, `!` or `|`.

use crate::node::Position;
use crate::policy::{Constraint, Operator, Selector};

fn glob_chars(value: &str) -> bool {
    value.contains(['*', '?', '[', '{'])
}

fn check_key(key: &str, item: &str) -> Result<String, String> {
    let key = key.trim();
    let bad = |c: char| c.is_whitespace() || c.is_control() || matches!(c, '=' | '!' | '|');
    if key.is_empty() || key.contains(bad) {
        return Err(format!(
            "{item:?}: a label key is needed, without spaces, control characters, `=`, `!` or `|`"
        ));
    }
    Ok(key.to_owned())
}

fn values(text: &str, item: &str) -> Result<Vec<String>, String> {
    let values: Vec<String> = text.split('|').map(|v| v.trim().to_owned()).collect();
    if values.iter().any(String::is_empty) {
        return Err(format!("{item:?}: an empty value"));
    }
    Ok(values)
}

impl Selector {
    /// Parses a one-line selector; the error names the item that is wrong. One without items
    /// matches everything.
    pub fn parse_query(text: &str) -> Result<Self, String> {
        let mut constraints = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            // The first `=` ends the key; a `!` just before it negates.
            let split = item
                .split_once('=')
                .map(|(key, value)| match key.strip_suffix('!') {
                    Some(key) => (key, value, true),
                    None => (key, value, false),
                });
            let (key, operator) = if let Some((key, value, true)) = split {
                (check_key(key, item)?, Operator::NotIn(values(value, item)?))
            } else if let Some((key, value, false)) = split {
                let key = check_key(key, item)?;
                let mut list = values(value, item)?;
                let operator = if list.len() > 1 {
                    Operator::AnyOf(list)
                } else {
                    let value = list.remove(0);
                    let glob = glob_chars(&value)
                        .then(|| {
                            globset::GlobBuilder::new(&value)
                                .literal_separator(false)
                                .build()
                                .ok()
                        })
                        .flatten();
                    match glob {
                        Some(glob) => Operator::Glob(value, glob.compile_matcher()),
                        None => Operator::Equals(value),
                    }
                };
                (key, operator)
            } else if let Some(key) = item.strip_prefix('!') {
                (check_key(key, item)?, Operator::Exists(false))
            } else {
                (check_key(item, item)?, Operator::Exists(true))
            };
            constraints.push(Constraint {
                key,
                operator,
                at: Position::default(),
            });
        }
        Ok(Self {
            constraints,
            at: Position::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use labels::LabelSet;

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        let mut set = LabelSet::new();
        for (k, v) in pairs {
            set.insert(*k, *v);
        }
        set
    }

    #[test]
    fn one_line_selectors_match_as_policies_do() {
        let web = labels(&[
            ("k8s:label:app", "web"),
            ("process:uid", "1000"),
            ("process:binary:path", "/usr/local/bin/server"),
        ]);
        let holds = |text: &str| Selector::parse_query(text).unwrap().matches(&web);
        assert!(holds("k8s:label:app=web,process:uid=1000"));
        assert!(!holds("k8s:label:app=web,process:uid=0"));
        assert!(holds("process:uid=0|1000"));
        assert!(holds("process:binary:path=/usr/local/bin/*"));
        assert!(holds("process:uid!=0"));
        assert!(!holds("process:uid!=1000|0"));
        assert!(holds("k8s:label:app"));
        assert!(holds("!docker:container:id"));
        assert!(!holds("!k8s:label:app"));
        assert!(holds(" k8s:label:app = web , "));
        // No items: everything; an invalid glob or a glob in a list: literally.
        assert!(holds("") && holds(" , "));
        assert!(!holds("k8s:label:app=["));
        assert!(holds("k8s:label:app=w*|web"));
        // The first `=` ends the key: the rest is the value.
        assert!(!holds("k8s:label:app=web!=x"));
        assert!(holds("k8s:label:app!=web!=x"));
        assert!(!holds("k8s:label:app=w*|x"));
    }

    #[test]
    fn bad_selectors_name_the_item() {
        for (text, says) in [
            ("=web", "\"=web\""),
            ("app=", "empty value"),
            ("app=a| ", "empty value"),
            ("a b=c", "without spaces"),
            ("a\u{5}", "control characters"),
            ("a!b=c", "`=`, `!` or `|`"),
            ("|a", "`=`, `!` or `|`"),
        ] {
            let error = Selector::parse_query(text).unwrap_err();
            assert!(error.contains(says), "{text:?}: {error}");
        }
    }
}
