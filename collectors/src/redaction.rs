//! Redaction of secret-looking environment values (`process:env:*`, `docker:env:*`): which keys
//! are hidden, by `*`-wildcard patterns with an allow list.

/// What a redacted value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Key patterns redacted by default (`*` matches any run of characters, case-insensitive).
pub const DEFAULT_REDACT_PATTERNS: &[&str] = &[
    "*TOKEN*",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*KEY*",
    "*CREDENTIAL*",
];

/// [`DEFAULT_REDACT_PATTERNS`] as configuration values, the default of every `redactEnvPatterns`.
pub fn default_redact_patterns() -> Vec<String> {
    DEFAULT_REDACT_PATTERNS
        .iter()
        .map(|pattern| (*pattern).to_owned())
        .collect()
}

/// Decides which environment values are shown.
#[derive(Debug, Clone)]
pub struct Redactor {
    patterns: Vec<String>,
    allowed: Vec<String>,
}

impl Redactor {
    /// Values of keys matching one of `patterns` are redacted unless the key is in `allowed`
    /// (exact, case-insensitive).
    pub fn new(patterns: &[String], allowed: &[String]) -> Self {
        Self {
            patterns: patterns.iter().map(|p| p.to_ascii_uppercase()).collect(),
            allowed: allowed.iter().map(|a| a.to_ascii_uppercase()).collect(),
        }
    }

    /// Whether the value of (upper-cased) `key` must be hidden.
    pub fn redacts(&self, key: &str) -> bool {
        let key = key.to_ascii_uppercase();
        !self.allowed.contains(&key) && self.patterns.iter().any(|p| wildcard_match(p, &key))
    }
}

/// `*`-wildcard match of the whole text.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if first.len() + last.len() > text.len() {
        return false;
    }
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*TOKEN*", "GITHUB_TOKEN"));
        assert!(wildcard_match("*TOKEN*", "TOKEN"));
        assert!(wildcard_match("AWS_*_KEY", "AWS_SECRET_ACCESS_KEY"));
        assert!(!wildcard_match("AWS_*_KEY", "AWS_KEY"));
        assert!(!wildcard_match("*TOKEN*", "PATH"));
        assert!(wildcard_match("HOME", "HOME"));
    }

    #[test]
    fn redaction_with_allow_list() {
        let redactor = Redactor::new(
            &default_redact_patterns(),
            &["SSH_AUTH_SOCK_KEY".to_owned()],
        );
        assert!(redactor.redacts("DB_PASSWORD"));
        assert!(redactor.redacts("api_key"));
        assert!(!redactor.redacts("PATH"));
        assert!(!redactor.redacts("ssh_auth_sock_key"));
    }
}
