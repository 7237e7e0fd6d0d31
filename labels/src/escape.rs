//! Raw bytes (paths, arguments, environment values, free-text keys) as label text: lossless,
//! and never able to break the one-pair-a-line text rendering.

use std::fmt::Write as _;

/// A label key segment from free text (a Docker or Kubernetes label key): escaped like values,
/// and spaces too, since keys have none.
pub fn escape_key(key: &str) -> String {
    escape_bytes(key.as_bytes()).replace(' ', "\\x20")
}

/// Turns raw bytes (a path, an argument, an environment value) into a label value, losslessly.
///
/// Valid UTF-8 is kept as is, except that a backslash is written `\\`, and control characters
/// and bytes that are not valid UTF-8 are written `\xNN`. Decoding `\\` and `\xNN` gives back
/// the exact bytes, and a value can never break the one-pair-a-line text rendering.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() && (c as u32) < 0x100 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// Escapes `bytes` like [`escape_bytes`], cutting the raw input at `limit` bytes.
///
/// A cut value ends with the visible marker `...[truncated: N bytes total]`, so nobody mistakes
/// it for the whole value.
pub fn escape_bytes_limited(bytes: &[u8], limit: usize) -> String {
    if bytes.len() <= limit {
        return escape_bytes(bytes);
    }
    // Cut on a character boundary when the cut would split a UTF-8 sequence.
    let mut cut = limit;
    while cut > 0 && cut < bytes.len() && (bytes[cut] & 0xC0) == 0x80 && limit - cut < 4 {
        cut -= 1;
    }
    let mut out = escape_bytes(&bytes[..cut]);
    let _ = write!(out, "{TRUNCATION_MARKER}{} bytes total]", bytes.len());
    out
}

/// The start of the marker appended to values cut at their size limit.
pub const TRUNCATION_MARKER: &str = "...[truncated: ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_lossless_for_invalid_utf8_backslash_and_controls() {
        assert_eq!(escape_bytes(b"plain /usr/bin/x"), "plain /usr/bin/x");
        assert_eq!(escape_bytes("h\u{e9}llo".as_bytes()), "h\u{e9}llo");
        assert_eq!(escape_bytes(b"a\xffb"), "a\\xffb");
        assert_eq!(escape_bytes(b"a\\xffb"), "a\\\\xffb");
        assert_eq!(escape_bytes(b"line1\nline2\t"), "line1\\x0aline2\\x09");
    }

    #[test]
    fn truncation_is_visible_and_keeps_characters_whole() {
        let value = escape_bytes_limited(&[b'a'; 10], 4);
        assert_eq!(value, "aaaa...[truncated: 10 bytes total]");
        // "é" is two bytes: a cut in its middle keeps it out entirely.
        let value = escape_bytes_limited("aé-------".as_bytes(), 2);
        assert!(value.starts_with("a...[truncated: "), "{value}");
        assert_eq!(escape_bytes_limited(b"abc", 3), "abc");
    }
}
