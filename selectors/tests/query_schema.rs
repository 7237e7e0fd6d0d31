//! The one-line selector grammar the agent accepts and the pattern its OpenAPI document
//! publishes for `/processes?selector=` agree: a string is accepted exactly when it matches.
//! (An API checker sends strings of both kinds and fails on any disagreement.)

use proptest::prelude::*;
use selectors::Selector;

static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(published_pattern);

fn published_pattern() -> regex::Regex {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../metadata-agent/openapi.json"
    );
    let openapi: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pattern = openapi["paths"]["/processes"]["get"]["parameters"][0]["schema"]["pattern"]
        .as_str()
        .unwrap()
        .to_owned();
    regex::Regex::new(&pattern).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn the_grammar_and_the_published_pattern_agree(
        text in proptest::collection::vec(
            prop::sample::select(vec![
                "a", "b", "k8s:label:app", "=", "!", "|", ",", " ", "\t", "*", "[", "{", "?",
                "\u{5}", "\u{80}", "é", ".", "/", "\u{1c}", "\u{85}", "\u{3000}", "\u{a0}",
            ]),
            0..8,
        ).prop_map(|parts| parts.concat())
    ) {
        let pattern = &*PATTERN;
        prop_assert_eq!(
            Selector::parse_query(&text).is_ok(),
            pattern.is_match(&text),
            "{:?}", text
        );
    }
}
