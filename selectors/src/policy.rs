//! Policies, selectors and constraints, compiled from YAML nodes with every validation error
//! collected (not just the first).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use labels::{LabelSet, TrustMap};
use serde::Serialize;

use crate::destination::{To, compile_to};
use crate::error::PolicyError;
use crate::node::{Located, Node, Position, parse_document};

/// What a matching policy asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the connection through.
    Allow,
    /// Refuse the connection.
    Deny,
    /// Only record it (the default).
    #[default]
    Log,
}

impl Action {
    /// Parses `allow`, `deny` or `log`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(Self::Allow),
            "deny" => Some(Self::Deny),
            "log" => Some(Self::Log),
            _ => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid action {text:?}: expected `allow`, `deny` or `log`"
            ))
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Log => "log",
        })
    }
}

/// How one label key is tested.
#[derive(Debug, Clone)]
pub enum Operator {
    /// One of the label's values equals this (a scalar in YAML).
    Equals(String),
    /// One of the label's values is in this list (a YAML list, or `{in: [...]}`).
    AnyOf(Vec<String>),
    /// None of the label's values is in this list (an absent label matches).
    NotIn(Vec<String>),
    /// The label is present (`true`) or absent (`false`).
    Exists(bool),
    /// One of the label's values matches this glob (`*` matches any run of characters, `/`
    /// included; `?` one character; `[...]` a class; `{a,b}` alternatives).
    Glob(String, globset::GlobMatcher),
    /// One of the label's values matches this regular expression in full (linear-time engine).
    Regex(String, regex::Regex),
}

impl Operator {
    /// Whether `values` (the label's values; empty when absent) satisfy the operator.
    pub fn matches(&self, values: &[String]) -> bool {
        match self {
            Self::Equals(expected) => values.iter().any(|v| v == expected),
            Self::AnyOf(list) => values.iter().any(|v| list.contains(v)),
            Self::NotIn(list) => !values.iter().any(|v| list.contains(v)),
            Self::Exists(wanted) => values.is_empty() != *wanted,
            Self::Glob(_, glob) => values.iter().any(|v| glob.is_match(v)),
            Self::Regex(_, regex) => values.iter().any(|v| regex.is_match(v)),
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Equals(v) => write!(f, "= {v:?}"),
            Self::AnyOf(list) => write!(f, "in {list:?}"),
            Self::NotIn(list) => write!(f, "notIn {list:?}"),
            Self::Exists(true) => f.write_str("exists"),
            Self::Exists(false) => f.write_str("does not exist"),
            Self::Glob(pattern, _) => write!(f, "glob {pattern:?}"),
            Self::Regex(pattern, _) => write!(f, "regex {pattern:?}"),
        }
    }
}

/// One `key: test` entry of a selector map.
#[derive(Debug, Clone)]
pub struct Constraint {
    /// The label key.
    pub key: String,
    /// The test.
    pub operator: Operator,
    /// Where the key was written.
    pub at: Position,
}

impl Constraint {
    /// Whether `labels` satisfy this constraint.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.operator.matches(labels.get(&self.key))
    }

    /// Whether `labels` satisfy this constraint with values a process could not have chosen:
    /// a present label whose class in `trust` is `self` satisfies nothing (an absent one is
    /// tested as absent).
    pub fn matches_trusted(&self, labels: &LabelSet, trust: Option<&TrustMap>) -> bool {
        let values = labels.get(&self.key);
        if !values.is_empty() && trust.is_none_or(|trust| trust.get(&self.key).is_self()) {
            return false;
        }
        self.operator.matches(values)
    }
}

/// A selector map: all constraints must hold (AND).
#[derive(Debug, Clone)]
pub struct Selector {
    /// The constraints; empty only when written `{}` on purpose (matches everything).
    pub constraints: Vec<Constraint>,
    /// Where it was written.
    pub at: Position,
}

impl Selector {
    /// Whether every constraint holds for `labels`.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.constraints.iter().all(|c| c.matches(labels))
    }

    /// Whether every constraint holds for `labels`, with trusted values only when
    /// `require_trusted` (see [`Constraint::matches_trusted`]).
    pub fn matches_with(
        &self,
        labels: &LabelSet,
        trust: Option<&TrustMap>,
        require_trusted: bool,
    ) -> bool {
        if require_trusted {
            self.constraints
                .iter()
                .all(|c| c.matches_trusted(labels, trust))
        } else {
            self.matches(labels)
        }
    }
}

impl Selector {
    /// Whether the selector holds for every process whose labels on the `known` keys are
    /// `labels` (with `trust`), whatever its other labels: `Some(true)` when every constraint
    /// is on a known key and holds, `Some(false)` when one on a known key fails, `None` when
    /// the other labels decide.
    pub fn determined_by(
        &self,
        labels: &LabelSet,
        trust: Option<&TrustMap>,
        require_trusted: bool,
        known: &dyn Fn(&str) -> bool,
    ) -> Option<bool> {
        let mut open = false;
        for constraint in &self.constraints {
            if !known(&constraint.key) {
                open = true;
                continue;
            }
            let holds = if require_trusted {
                constraint.matches_trusted(labels, trust)
            } else {
                constraint.matches(labels)
            };
            if !holds {
                return Some(false);
            }
        }
        (!open).then_some(true)
    }
}

/// A named policy: an action for processes matching any of its selectors (OR).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Unique name.
    pub name: Arc<str>,
    /// What to do on a match.
    pub action: Action,
    /// Higher wins before specificity (default 0).
    pub priority: i64,
    /// The selector maps.
    pub selectors: Vec<Selector>,
    /// `requireTrusted: true`: its constraints are satisfied only by values the process could
    /// not have chosen (trust class other than `self`).
    pub require_trusted: bool,
    /// Where it applies (any of these destinations); empty: everywhere.
    pub to: Vec<To>,
    /// The file it came from.
    pub file: Arc<PathBuf>,
    /// The file's path as text, shared by every match report.
    pub source: Arc<str>,
    /// Where it was written.
    pub at: Position,
}

/// Accepted fields of a policy entry.
const POLICY_FIELDS: &str = "name, action, priority, selectors, to, requireTrusted, description";
/// Accepted operators of a selector value written as a mapping.
const OPERATORS: &str = "in, notIn, exists, glob, regex";

/// Compiles the policies of one file's text. `file` names it in errors.
pub fn compile_file(text: &str, file: &Path) -> Result<Vec<Policy>, Vec<PolicyError>> {
    let compiled = compile_file_named(text, file);
    if compiled.errors.is_empty() {
        Ok(compiled.policies)
    } else {
        Err(compiled.errors)
    }
}

/// What one file compiled to: its valid policies, the name of every policy entry (valid or
/// not, for duplicate names to be reported along with other errors), and its errors.
pub(crate) struct CompiledFile {
    pub policies: Vec<Policy>,
    pub names: Vec<(String, Arc<PathBuf>, Position)>,
    pub errors: Vec<PolicyError>,
}

/// Compiles one file's text, keeping every policy's name even when the policy has errors.
pub(crate) fn compile_file_named(text: &str, file: &Path) -> CompiledFile {
    let file = Arc::new(file.to_owned());
    let mut errors = Vec::new();
    let mut names = Vec::new();
    let document = match parse_document(text) {
        Ok(document) => document,
        Err((at, message)) => {
            return CompiledFile {
                policies: Vec::new(),
                names,
                errors: vec![PolicyError::new(&file, at, message)],
            };
        }
    };
    let mut policies = Vec::new();
    let mut error =
        |at: Position, message: String| errors.push(PolicyError::new(&file, at, message));
    match &document.value {
        Node::Null => {}
        Node::Map(entries) => {
            for (key, value) in entries {
                if key.value != "policies" {
                    error(
                        key.at,
                        format!("unknown field `{}`, expected `policies`", key.value),
                    );
                    continue;
                }
                // `policies:` with every entry commented out: no policies, not an error.
                if value.value == Node::Null {
                    continue;
                }
                let Node::List(items) = &value.value else {
                    error(
                        value.at,
                        format!("`policies` must be a list, found {}", value.value.kind()),
                    );
                    continue;
                };
                for item in items {
                    if let Some(name) = policy_name(item) {
                        names.push((name, Arc::clone(&file), item.at));
                    }
                    if let Some(policy) = compile_policy(item, &file, &mut error) {
                        policies.push(policy);
                    }
                }
            }
        }
        other => error(
            document.at,
            format!(
                "expected a mapping with a `policies` list, found {}",
                other.kind()
            ),
        ),
    }
    CompiledFile {
        policies,
        names,
        errors,
    }
}

/// The `name` of a policy entry, when it has a usable one.
fn policy_name(item: &Located<Node>) -> Option<String> {
    let Node::Map(entries) = &item.value else {
        return None;
    };
    entries.iter().find_map(|(key, value)| match &value.value {
        Node::Scalar(text) if key.value == "name" && !text.trim().is_empty() => Some(text.clone()),
        _ => None,
    })
}

fn compile_policy(
    item: &Located<Node>,
    file: &Arc<PathBuf>,
    error: &mut impl FnMut(Position, String),
) -> Option<Policy> {
    let Node::Map(entries) = &item.value else {
        error(
            item.at,
            format!("a policy must be a mapping, found {}", item.value.kind()),
        );
        return None;
    };
    let (mut name, mut action, mut priority, mut selectors) = (None, Action::default(), 0, None);
    let mut require_trusted = false;
    let mut to = Vec::new();
    let mut ok = true;
    for (key, value) in entries {
        match key.value.as_str() {
            "name" => match &value.value {
                Node::Scalar(text) if !text.trim().is_empty() => name = Some(text.clone()),
                other => {
                    error(
                        value.at,
                        format!("`name` must be a non-empty string, found {}", other.kind()),
                    );
                    ok = false;
                }
            },
            "action" => match value.value.scalar_text().as_deref().and_then(Action::parse) {
                Some(parsed) => action = parsed,
                None => {
                    let found = value
                        .value
                        .scalar_text()
                        .unwrap_or_else(|| value.value.kind().to_owned());
                    error(
                        value.at,
                        format!("invalid action `{found}`, expected one of allow, deny, log"),
                    );
                    ok = false;
                }
            },
            "priority" => match value
                .value
                .scalar_text()
                .and_then(|t| t.parse::<i64>().ok())
            {
                Some(parsed) if matches!(value.value, Node::Scalar(_)) => priority = parsed,
                _ => {
                    error(value.at, "`priority` must be an integer".to_owned());
                    ok = false;
                }
            },
            "selectors" => selectors = Some(value),
            "to" => match compile_to(value, error) {
                Some(compiled) => to = compiled,
                None => ok = false,
            },
            "requireTrusted" => match value.value {
                Node::Bool(wanted) => require_trusted = wanted,
                _ => {
                    error(
                        value.at,
                        format!(
                            "`requireTrusted` takes true or false, found {}",
                            value.value.kind()
                        ),
                    );
                    ok = false;
                }
            },
            "description" => {}
            other => {
                error(
                    key.at,
                    format!("unknown field `{other}`, expected one of {POLICY_FIELDS}"),
                );
                ok = false;
            }
        }
    }
    if name.is_none() && !entries.iter().any(|(k, _)| k.value == "name") {
        error(item.at, "policy has no `name`".to_owned());
        ok = false;
    }
    let compiled = match selectors {
        None => {
            error(
                item.at,
                format!(
                    "policy `{}` has no `selectors`",
                    name.as_deref().unwrap_or("?")
                ),
            );
            None
        }
        Some(selectors) => compile_selectors(selectors, error),
    };
    match (ok, name, compiled) {
        (true, Some(name), Some(selectors)) => Some(Policy {
            name: Arc::from(name),
            source: Arc::from(file.display().to_string()),
            action,
            priority,
            selectors,
            require_trusted,
            to,
            file: Arc::clone(file),
            at: item.at,
        }),
        _ => None,
    }
}

pub(crate) fn compile_selectors(
    selectors: &Located<Node>,
    error: &mut impl FnMut(Position, String),
) -> Option<Vec<Selector>> {
    let Node::List(items) = &selectors.value else {
        error(
            selectors.at,
            format!(
                "`selectors` must be a list of selector maps, found {}",
                selectors.value.kind()
            ),
        );
        return None;
    };
    if items.is_empty() {
        error(
            selectors.at,
            "`selectors` is empty: the policy would never match".to_owned(),
        );
        return None;
    }
    let mut compiled = Vec::new();
    let mut ok = true;
    for item in items {
        match &item.value {
            Node::Null => {
                error(
                    item.at,
                    "empty selector: it would match every process; write `{}` to mean that on purpose".to_owned(),
                );
                ok = false;
            }
            Node::Map(entries) => {
                let mut constraints = Vec::new();
                for (index, (key, value)) in entries.iter().enumerate() {
                    if entries[..index].iter().any(|(k, _)| k.value == key.value) {
                        error(
                            key.at,
                            format!("duplicate key `{}` in one selector", key.value),
                        );
                        ok = false;
                        continue;
                    }
                    match compile_constraint(key, value) {
                        Ok(constraint) => constraints.push(constraint),
                        Err((at, message)) => {
                            error(at, message);
                            ok = false;
                        }
                    }
                }
                compiled.push(Selector {
                    constraints,
                    at: item.at,
                });
            }
            other => {
                error(
                    item.at,
                    format!(
                        "a selector must be a mapping of label keys, found {}",
                        other.kind()
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(compiled)
}

fn compile_constraint(
    key: &Located<String>,
    value: &Located<Node>,
) -> Result<Constraint, (Position, String)> {
    if key.value.is_empty() || key.value.chars().any(char::is_whitespace) {
        return Err((
            key.at,
            format!(
                "invalid label key {:?}: keys are non-empty and have no spaces",
                key.value
            ),
        ));
    }
    let operator = match &value.value {
        Node::Null => {
            return Err((
                key.at,
                format!(
                    "`{}` has no value; to require the label write `{{exists: true}}`",
                    key.value
                ),
            ));
        }
        Node::Bool(_) | Node::Scalar(_) => {
            Operator::Equals(value.value.scalar_text().unwrap_or_default())
        }
        Node::List(_) => Operator::AnyOf(scalar_list(&key.value, value)?),
        Node::Map(entries) => {
            let [(op, arg)] = entries.as_slice() else {
                return Err((
                    value.at,
                    format!(
                        "`{}` needs exactly one operator ({OPERATORS}), found {}",
                        key.value,
                        entries.len()
                    ),
                ));
            };
            compile_operator(&key.value, op, arg)?
        }
    };
    Ok(Constraint {
        key: key.value.clone(),
        operator,
        at: key.at,
    })
}

fn compile_operator(
    key: &str,
    op: &Located<String>,
    arg: &Located<Node>,
) -> Result<Operator, (Position, String)> {
    let text = || match &arg.value {
        Node::Scalar(text) => Ok(text.clone()),
        other => Err((
            arg.at,
            format!(
                "`{}` of `{key}` takes a string, found {}",
                op.value,
                other.kind()
            ),
        )),
    };
    match op.value.as_str() {
        "in" => Ok(Operator::AnyOf(scalar_list(key, arg)?)),
        "notIn" => Ok(Operator::NotIn(scalar_list(key, arg)?)),
        "exists" => match arg.value {
            Node::Bool(wanted) => Ok(Operator::Exists(wanted)),
            _ => Err((
                arg.at,
                format!(
                    "`exists` of `{key}` takes true or false, found {}",
                    arg.value.kind()
                ),
            )),
        },
        "glob" => {
            let pattern = text()?;
            let glob = globset::GlobBuilder::new(&pattern)
                .literal_separator(false)
                .build()
                .map_err(|e| {
                    (
                        arg.at,
                        format!("invalid glob {pattern:?} for `{key}`: {}", e.kind()),
                    )
                })?;
            Ok(Operator::Glob(pattern, glob.compile_matcher()))
        }
        "regex" => {
            let pattern = text()?;
            let invalid = |e: regex::Error| {
                (
                    arg.at,
                    format!(
                        "invalid regex {pattern:?} for `{key}`: {}",
                        one_line(&e.to_string())
                    ),
                )
            };
            // Checked as written, so that errors quote the user's pattern; matched in full.
            regex::Regex::new(&pattern).map_err(invalid)?;
            let regex = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)?;
            Ok(Operator::Regex(pattern, regex))
        }
        other => Err((
            op.at,
            format!("unknown operator `{other}` for `{key}`, expected one of {OPERATORS}"),
        )),
    }
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn scalar_list(key: &str, node: &Located<Node>) -> Result<Vec<String>, (Position, String)> {
    let Node::List(items) = &node.value else {
        return Err((
            node.at,
            format!(
                "`{key}` expects a list of values, found {}",
                node.value.kind()
            ),
        ));
    };
    if items.is_empty() {
        return Err((
            node.at,
            format!("empty list of values for `{key}`: it would never match"),
        ));
    }
    items
        .iter()
        .map(|item| {
            item.value.scalar_text().ok_or_else(|| {
                (
                    item.at,
                    format!(
                        "values of `{key}` must be scalars, found {}",
                        item.value.kind()
                    ),
                )
            })
        })
        .collect()
}
