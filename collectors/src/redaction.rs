//! Redaction of secrets in labels:
//!
//! - environment values (`process:env:*`, `docker:env:*`) of keys that look secret, by
//!   `*`-wildcard patterns with an allow list;
//! - by the shape of a value, whatever its key (env values, command-line arguments,
//!   annotations): the password of a URL (`postgres://u:<redacted>@db/x`), bearer and basic
//!   credentials, JWT-shaped tokens, PEM blocks, AWS access key ids;
//! - command-line arguments that follow a secret flag (`--password=…`, `--token …`, and
//!   configured ones such as `-p…`).

/// What a redacted value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Key patterns redacted by default (`*` matches any run of characters, case-insensitive).
pub const DEFAULT_REDACT_PATTERNS: &[&str] = &[
    "*TOKEN*",
    "*SECRET*",
    "*PASS*",
    "*_PWD",
    "*KEY*",
    "*CREDENTIAL*",
    "*AUTH*",
    "*DSN*",
    "*PRIVATE*",
    "*SESSION*",
    "*COOKIE*",
];

/// Flags whose value is a secret, by default: `--flag=value` and `--flag value` have the value
/// redacted. A single-dash flag of one letter (`-p`) also covers the attached form (`-psecret`,
/// as `mysql` takes it); none is in the default list, as `-p` means a port to many programs.
pub const DEFAULT_SECRET_FLAGS: &[&str] = &[
    "--password",
    "--passwd",
    "--pass",
    "--token",
    "--secret",
    "--api-key",
    "--apikey",
    "--access-key",
    "--secret-key",
    "--client-secret",
    "--auth",
    "--credentials",
];

/// [`DEFAULT_SECRET_FLAGS`] as configuration values.
pub fn default_secret_flags() -> Vec<String> {
    DEFAULT_SECRET_FLAGS
        .iter()
        .map(|f| (*f).to_owned())
        .collect()
}

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

    /// The value of environment variable `key` as shown: hidden for a secret-looking key
    /// (unless allowed), else with secret-shaped parts hidden.
    pub fn env_value<'a>(&self, key: &str, value: &'a str) -> std::borrow::Cow<'a, str> {
        if self.redacts(key) {
            return std::borrow::Cow::Borrowed(REDACTED);
        }
        if self.allowed.contains(&key.to_ascii_uppercase()) {
            return std::borrow::Cow::Borrowed(value);
        }
        redact_shapes(value)
    }
}

/// `value` with the parts shaped like secrets replaced by [`REDACTED`]: a URL's password, a
/// bearer or basic credential, a JWT, a PEM block (the whole value), an AWS access key id.
pub fn redact_shapes(value: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    if value.contains("-----BEGIN ") {
        return Cow::Borrowed(REDACTED);
    }
    let mut out = String::with_capacity(value.len());
    let mut changed = false;
    let mut rest = value;
    while !rest.is_empty() {
        // Tokens are runs of non-space characters; spaces are kept as they are.
        let start = rest
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let token = &rest[..end];
        rest = &rest[end..];
        let redacted = redact_token(token);
        changed |= redacted != token;
        out.push_str(&redacted);
        // `Bearer <x>`, `Basic <x>`: the next token is the credential.
        if matches!(
            token.to_ascii_lowercase().as_str(),
            "bearer" | "basic" | "authorization:bearer"
        ) && !rest.trim_start().is_empty()
        {
            let start = rest
                .find(|c: char| !c.is_whitespace())
                .unwrap_or(rest.len());
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            rest = &rest[end..];
            out.push_str(REDACTED);
            changed = true;
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(value)
    }
}

/// One whitespace-free token with its secret-shaped part redacted.
fn redact_token(token: &str) -> String {
    // scheme://user:password@host...: the password.
    if let Some(scheme_end) = token.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = token[authority_start..]
            .find(['/', '?', '#'])
            .map_or(token.len(), |i| authority_start + i);
        let authority = &token[authority_start..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                let password_start = authority_start + colon + 1;
                let password_end = authority_start + at;
                if password_end > password_start {
                    return format!(
                        "{}{REDACTED}{}",
                        &token[..password_start],
                        &token[password_end..]
                    );
                }
            }
        }
    }
    // A `key=value` token: the value alone (the key stays readable).
    let (prefix, body) = match token.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
            (&token[..key.len() + 1], value)
        }
        _ => ("", token),
    };
    if looks_like_jwt(body) || looks_like_aws_key_id(body) {
        return format!("{prefix}{REDACTED}");
    }
    token.to_owned()
}

/// Three base64url segments, the first a JSON header (`eyJ`).
fn looks_like_jwt(text: &str) -> bool {
    let text = text.trim_matches(|c: char| c == '"' || c == '\'' || c == ',');
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts[0].starts_with("eyJ")
        && parts.iter().all(|part| {
            part.len() >= 4
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '=')
        })
}

/// An AWS access key id: `AKIA`/`ASIA` and 16 more upper-case letters or digits.
fn looks_like_aws_key_id(text: &str) -> bool {
    let text = text.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    text.len() == 20
        && (text.starts_with("AKIA") || text.starts_with("ASIA"))
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// [`redact_args`] over raw arguments (which need not be UTF-8): an argument left as it was
/// keeps its bytes.
pub fn redact_arg_bytes(args: &[&[u8]], flags: &[String]) -> Vec<Vec<u8>> {
    let lossy: Vec<std::borrow::Cow<'_, str>> = args
        .iter()
        .map(|arg| String::from_utf8_lossy(arg))
        .collect();
    let texts: Vec<&str> = lossy.iter().map(|arg| arg.as_ref()).collect();
    redact_args(&texts, flags)
        .into_iter()
        .zip(args)
        .zip(&texts)
        .map(|((shown, raw), text)| {
            if shown == *text {
                raw.to_vec()
            } else {
                shown.into_owned().into_bytes()
            }
        })
        .collect()
}

/// Command-line arguments with the values of secret `flags` (and secret-shaped parts) hidden.
pub fn redact_args<'a>(args: &[&'a str], flags: &[String]) -> Vec<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    let mut out: Vec<Cow<'a, str>> = Vec::with_capacity(args.len());
    let mut secret_next = false;
    for arg in args {
        if secret_next {
            out.push(Cow::Borrowed(REDACTED));
            secret_next = false;
            continue;
        }
        let mut handled = false;
        for flag in flags {
            if *arg == flag.as_str() {
                secret_next = true;
                out.push(Cow::Borrowed(arg));
                handled = true;
                break;
            }
            if let Some(value) = arg.strip_prefix(flag.as_str()) {
                if let Some(value) = value.strip_prefix('=') {
                    let _ = value;
                    out.push(Cow::Owned(format!("{flag}={REDACTED}")));
                    handled = true;
                    break;
                }
                // `-psecret`: a one-letter single-dash flag takes its value attached.
                let short = flag.len() == 2 && flag.starts_with('-') && !flag.starts_with("--");
                if short && !value.is_empty() {
                    out.push(Cow::Owned(format!("{flag}{REDACTED}")));
                    handled = true;
                    break;
                }
            }
        }
        if !handled {
            out.push(redact_shapes(arg));
        }
    }
    out
}

/// `*`-wildcard match of the whole text.
pub(crate) fn wildcard_match(pattern: &str, text: &str) -> bool {
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
    fn secrets_are_found_by_their_shape() {
        assert_eq!(
            redact_shapes("postgres://u:secret@db/x"),
            "postgres://u:<redacted>@db/x"
        );
        assert_eq!(redact_shapes("https://db:5432/x"), "https://db:5432/x");
        assert_eq!(redact_shapes("https://user@host/x"), "https://user@host/x");
        assert_eq!(
            redact_shapes("Authorization: Bearer abc.def-123"),
            "Authorization: Bearer <redacted>"
        );
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        assert_eq!(
            redact_shapes(&format!("token={jwt} x")),
            "token=<redacted> x"
        );
        assert_eq!(redact_shapes("AKIAIOSFODNN7EXAMPLE"), "<redacted>");
        assert_eq!(
            redact_shapes("-----BEGIN RSA PRIVATE KEY-----\nMIIE...\n"),
            "<redacted>"
        );
        assert_eq!(redact_shapes("plain value 42"), "plain value 42");
    }

    #[test]
    fn secret_flags_hide_their_values() {
        let mut flags = default_secret_flags();
        flags.push("-p".to_owned());
        let args = [
            "mysql",
            "-psecret",
            "--password=hunter2",
            "--token",
            "abc",
            "--port",
            "3306",
            "--url=postgres://u:pw@db/x",
            "-p",
        ];
        let shown: Vec<String> = redact_args(&args, &flags)
            .into_iter()
            .map(|a| a.into_owned())
            .collect();
        assert_eq!(
            shown,
            [
                "mysql",
                "-p<redacted>",
                "--password=<redacted>",
                "--token",
                "<redacted>",
                "--port",
                "3306",
                "--url=postgres://u:<redacted>@db/x",
                "-p",
            ]
        );
    }

    #[test]
    fn redaction_with_allow_list() {
        let redactor = Redactor::new(
            &default_redact_patterns(),
            &["SSH_AUTH_SOCK_KEY".to_owned()],
        );
        assert!(redactor.redacts("DB_PASSWORD"));
        for key in ["DB_PASS", "MYSQL_PWD", "HTTP_AUTH", "SENTRY_DSN"] {
            assert!(redactor.redacts(key), "{key}");
        }
        // The working directory is no secret.
        assert!(!redactor.redacts("PWD") && !redactor.redacts("OLDPWD"));
        assert_eq!(
            redactor.env_value("DATABASE_URL", "postgres://u:secret@db/x"),
            "postgres://u:<redacted>@db/x"
        );
        assert_eq!(redactor.env_value("DB_PASS", "x"), REDACTED);
        assert!(redactor.redacts("api_key"));
        assert!(!redactor.redacts("PATH"));
        assert!(!redactor.redacts("ssh_auth_sock_key"));
    }
}
