//! Loading policies from files and directories.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{PolicyError, PolicyErrors};
use crate::node::Position;
use crate::policy::{Policy, compile_file};

/// The policy files under `paths`: a file as is; a directory's `*.yaml` and `*.yml` files
/// (not recursive), sorted by name so that file order is stable.
pub fn policy_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, PolicyErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let whole = |message: String| PolicyError::new(path, Position::default(), message);
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| {
                            p.extension().is_some_and(|e| e == "yaml" || e == "yml") && p.is_file()
                        })
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => errors.push(whole(format!("cannot read directory: {e}"))),
            },
            Ok(_) => files.push(path.clone()),
            Err(e) => errors.push(whole(format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(PolicyErrors(errors))
    }
}

/// Loads and validates every policy under `paths`. All errors of all files are returned
/// together, including names used twice across files.
pub fn load_policies(paths: &[PathBuf]) -> Result<Vec<Policy>, PolicyErrors> {
    let files = policy_files(paths)?;
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => match compile_file(&text, file) {
                Ok(compiled) => policies.extend(compiled),
                Err(found) => errors.extend(found),
            },
            Err(e) => errors.push(PolicyError::new(
                file,
                Position::default(),
                format!("cannot read: {e}"),
            )),
        }
    }
    errors.extend(duplicate_names(&policies));
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(PolicyErrors(errors))
    }
}

/// Compiles policies from texts (for tests and dry runs): `(origin, text)` pairs in file order.
pub fn compile_texts(texts: &[(&Path, &str)]) -> Result<Vec<Policy>, PolicyErrors> {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for (origin, text) in texts {
        match compile_file(text, origin) {
            Ok(compiled) => policies.extend(compiled),
            Err(found) => errors.extend(found),
        }
    }
    errors.extend(duplicate_names(&policies));
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(PolicyErrors(errors))
    }
}

fn duplicate_names(policies: &[Policy]) -> Vec<PolicyError> {
    let mut first: HashMap<&str, &Policy> = HashMap::new();
    let mut errors = Vec::new();
    for policy in policies {
        if let Some(earlier) = first.get(&*policy.name) {
            errors.push(PolicyError::new(
                &policy.file,
                policy.at,
                format!(
                    "duplicate policy name `{}` (first defined at {}:{}:{})",
                    policy.name,
                    earlier.file.display(),
                    earlier.at.line,
                    earlier.at.column
                ),
            ));
        } else {
            first.insert(&policy.name, policy);
        }
    }
    errors
}
