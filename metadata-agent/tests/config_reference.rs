//! The example configuration and the configuration reference are checked against the
//! configuration types, whose collector sections come from the collector table: a new field or
//! a new collector that is not shown in `config/agent.example.yaml` with its default, or not
//! documented in `docs/configuration.md`, fails here.

mod common;

use std::collections::BTreeSet;

use metadata_agent::config::Config;
use serde_json::Value;

/// Every dotted path to a leaf of `value` (`collectors.procfs.timeout`, ...).
fn leaf_paths(value: &Value, prefix: &str, paths: &mut BTreeSet<String>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(child, &path, paths);
            }
        }
        _ => {
            paths.insert(prefix.to_owned());
        }
    }
}

fn defaults() -> Value {
    serde_json::to_value(Config::default()).unwrap()
}

#[test]
fn the_example_shows_every_field_with_its_default() {
    let path = common::repo_root().join("config/agent.example.yaml");
    assert_eq!(Config::load(&path).unwrap(), Config::default());
    let text = std::fs::read_to_string(&path).unwrap();
    let example: Value = serde_saphyr::from_str(&text).unwrap();
    let (mut shown, mut fields) = (BTreeSet::new(), BTreeSet::new());
    leaf_paths(&example, "", &mut shown);
    leaf_paths(&defaults(), "", &mut fields);
    let missing: Vec<_> = fields.difference(&shown).collect();
    let unknown: Vec<_> = shown.difference(&fields).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "config/agent.example.yaml lacks {missing:?} and shows {unknown:?}, which are not fields \
         with a default"
    );
    for section in collectors::SECTIONS {
        assert!(example["collectors"][section].is_object(), "{section}");
    }
}

/// The first backticked word of each table row under each `## ` heading, by heading.
fn documented_fields(doc: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut sections: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            sections.push((heading.to_owned(), BTreeSet::new()));
        } else if let (Some(rest), Some((_, fields))) =
            (line.strip_prefix("| `"), sections.last_mut())
            && let Some((field, _)) = rest.split_once('`')
        {
            fields.insert(field.to_owned());
        }
    }
    sections
}

#[test]
fn the_reference_documents_every_section_and_field() {
    let doc = std::fs::read_to_string(common::repo_root().join("docs/configuration.md")).unwrap();
    let documented = documented_fields(&doc);
    let defaults = defaults();
    let mut sections: Vec<(String, &Value)> = Vec::new();
    for (name, section) in defaults.as_object().unwrap() {
        if name == "collectors" {
            for collector in collectors::SECTIONS {
                sections.push((format!("collectors.{collector}"), &section[collector]));
            }
        } else {
            sections.push((name.clone(), section));
        }
    }
    // Fields that are unset by default (and so not serialized) are documented too.
    let optional = [
        "server.tokenFile",
        "server.opsListen",
        "server.opsTokenFile",
        "events.file",
        "events.otlp",
        "policies.path",
        "hook.cgroupRoot",
    ];
    for (path, section) in &sections {
        let heading = format!("`{path}`");
        let Some((_, fields)) = documented
            .iter()
            .find(|(title, _)| title.split(", ").any(|part| part == heading))
        else {
            panic!("docs/configuration.md has no `## ` heading naming {heading}")
        };
        let mut expected: BTreeSet<String> = section.as_object().unwrap().keys().cloned().collect();
        for field in optional {
            if let Some(field) = field.strip_prefix(&format!("{path}.")) {
                expected.insert(field.to_owned());
            }
        }
        let missing: Vec<_> = expected.difference(fields).collect();
        assert!(
            missing.is_empty(),
            "docs/configuration.md does not document {missing:?} of {path}"
        );
    }
    // No row documents a field that does not exist.
    for (title, fields) in &documented {
        let under: Vec<&Value> = sections
            .iter()
            .filter(|(path, _)| title.split(", ").any(|part| part == format!("`{path}`")))
            .map(|(_, section)| *section)
            .collect();
        if under.is_empty() {
            continue;
        }
        for field in fields {
            let known = under.iter().any(|section| section.get(field).is_some())
                || optional.iter().any(|o| o.ends_with(&format!(".{field}")));
            assert!(
                known,
                "docs/configuration.md, {title}: `{field}` is not a field"
            );
        }
    }
}
