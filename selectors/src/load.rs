//! Loading policies from files and directories.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{PolicyError, PolicyErrors};
use crate::node::Position;
use std::sync::Arc;

use crate::policy::{Policy, compile_file_named};

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
/// together, including names used twice across files (also when one of the two policies has
/// another error).
pub fn load_policies(paths: &[PathBuf]) -> Result<Vec<Policy>, PolicyErrors> {
    let files = policy_files(paths)?;
    let mut texts = Vec::new();
    let mut errors = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => texts.push((file.as_path(), text)),
            Err(e) => errors.push(PolicyError::new(
                file,
                Position::default(),
                format!("cannot read: {e}"),
            )),
        }
    }
    let texts: Vec<(&Path, &str)> = texts.iter().map(|(f, t)| (*f, t.as_str())).collect();
    match compile_texts(&texts) {
        Ok(policies) if errors.is_empty() => Ok(policies),
        Ok(_) => Err(PolicyErrors(errors)),
        Err(PolicyErrors(mut more)) => {
            errors.append(&mut more);
            Err(PolicyErrors(errors))
        }
    }
}

/// Compiles policies from texts (for tests and dry runs): `(origin, text)` pairs in file order.
pub fn compile_texts(texts: &[(&Path, &str)]) -> Result<Vec<Policy>, PolicyErrors> {
    let mut policies = Vec::new();
    let mut names = Vec::new();
    let mut errors = Vec::new();
    for (origin, text) in texts {
        let mut compiled = compile_file_named(text, origin);
        policies.append(&mut compiled.policies);
        names.append(&mut compiled.names);
        errors.append(&mut compiled.errors);
    }
    errors.extend(duplicate_names(&names));
    if errors.is_empty() {
        Ok(policies)
    } else {
        errors.sort_by(|a, b| {
            (&a.file, a.at.line, a.at.column).cmp(&(&b.file, b.at.line, b.at.column))
        });
        Err(PolicyErrors(errors))
    }
}

/// Names given to two policies, each reported at the later one.
fn duplicate_names(names: &[(String, Arc<PathBuf>, Position)]) -> Vec<PolicyError> {
    let mut first: HashMap<&str, (&Arc<PathBuf>, Position)> = HashMap::new();
    let mut errors = Vec::new();
    for (name, file, at) in names {
        if let Some((earlier_file, earlier)) = first.get(name.as_str()) {
            errors.push(PolicyError::new(
                file,
                *at,
                format!(
                    "duplicate policy name `{name}` (first defined at {}:{}:{})",
                    earlier_file.display(),
                    earlier.line,
                    earlier.column
                ),
            ));
        } else {
            first.insert(name, (file, *at));
        }
    }
    errors
}
