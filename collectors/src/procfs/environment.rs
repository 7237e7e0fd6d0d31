//! Environment labels: the `KEY=value` entries of `/proc/<pid>/environ`.

/// The `KEY=value` entries of an `environ` file: split at the first `=`, entries without one or
/// with an empty key skipped.
pub fn parse_environ(environ: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    environ.split(|&b| b == 0).filter_map(|entry| {
        let eq = entry.iter().position(|&b| b == b'=')?;
        (eq > 0).then(|| (&entry[..eq], &entry[eq + 1..]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_entries() {
        let entries: Vec<_> = parse_environ(b"A=1\0B=x=y\0NOEQ\0=v\0C=\0").collect();
        assert_eq!(
            entries,
            [(&b"A"[..], &b"1"[..]), (b"B", b"x=y"), (b"C", b"")]
        );
    }
}
