//! Validation errors of policy files.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::node::Position;

/// One problem in a policy file, shown as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The file.
    pub file: PathBuf,
    /// Where in it (line 0 when the whole file is concerned).
    pub at: Position,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    /// An error at `at` in `file`.
    pub fn new(file: &Path, at: Position, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            at,
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.at.line,
            self.at.column,
            self.message
        )
    }
}

/// Every error found while loading policies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}
