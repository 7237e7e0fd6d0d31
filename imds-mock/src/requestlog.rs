//! The request log: what each client asked and what it got, kept in memory (the newest
//! [`KEPT`] requests, for the control API and tests) and written as JSON lines to a file or
//! stderr on request (`--request-log`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;

/// How many requests the in-memory log keeps.
pub const KEPT: usize = 10_000;

/// One request and its answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LoggedRequest {
    /// Its position in the log since the start (never reused).
    pub seq: u64,
    /// When it arrived (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The normalized path.
    pub path: String,
    /// The query string, as sent.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub query: String,
    /// Which cloud's protocol answered: `ec2`, `azure`, `gcp`, or `none`.
    pub cloud: &'static str,
    /// The status answered.
    pub status: u16,
    /// The headers the clouds look at (`Metadata`, `Metadata-Flavor`, the EC2 token headers,
    /// `User-Agent`); token values are replaced by `<present>`.
    pub headers: Vec<(String, String)>,
    /// Milliseconds from arrival to answer (injected latency and `wait_for_change` included).
    pub millis: u64,
}

/// Where the JSON lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Standard error.
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

impl Sink {
    /// `-` or `stderr` for standard error, else a path.
    pub fn parse(text: &str) -> Self {
        match text {
            "-" | "stderr" => Self::Stderr,
            path => Self::File(PathBuf::from(path)),
        }
    }
}

enum Writer {
    Stderr,
    File(std::io::BufWriter<std::fs::File>),
}

/// The log.
pub struct RequestLog {
    kept: Mutex<(u64, std::collections::VecDeque<LoggedRequest>)>,
    writer: Option<Mutex<Writer>>,
}

impl RequestLog {
    /// A log writing JSON lines to `sink`, if any. Fails when the file cannot be opened.
    pub fn new(sink: Option<&Sink>) -> std::io::Result<Self> {
        let writer = match sink {
            None => None,
            Some(Sink::Stderr) => Some(Mutex::new(Writer::Stderr)),
            Some(Sink::File(path)) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                Some(Mutex::new(Writer::File(std::io::BufWriter::new(file))))
            }
        };
        Ok(Self {
            kept: Mutex::new((0, std::collections::VecDeque::new())),
            writer,
        })
    }

    /// Records `entry` (its `seq` is assigned here).
    pub fn record(&self, mut entry: LoggedRequest) {
        {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            entry.seq = kept.0;
            kept.0 += 1;
            if kept.1.len() == KEPT {
                kept.1.pop_front();
            }
            kept.1.push_back(entry.clone());
        }
        if let Some(writer) = &self.writer {
            let line = serde_json::to_string(&entry).unwrap_or_default();
            let mut writer = writer.lock().unwrap_or_else(|e| e.into_inner());
            // A log that cannot be written must not stop the mock from answering.
            let _ = match &mut *writer {
                Writer::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
                Writer::File(file) => writeln!(file, "{line}").and_then(|()| file.flush()),
            };
        }
    }

    /// The kept requests with `seq >= since`, and the next `seq`.
    pub fn since(&self, since: u64) -> (Vec<LoggedRequest>, u64) {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let entries = kept.1.iter().filter(|e| e.seq >= since).cloned().collect();
        (entries, kept.0)
    }

    /// Forgets the kept requests (the sequence goes on).
    pub fn clear(&self) {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clear();
    }
}

/// The headers worth logging, token values hidden.
pub fn interesting_headers(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    const SHOWN: [&str; 4] = [
        "metadata",
        "metadata-flavor",
        "user-agent",
        "x-forwarded-for",
    ];
    const HIDDEN: [&str; 2] = [
        "x-aws-ec2-metadata-token",
        "x-aws-ec2-metadata-token-ttl-seconds",
    ];
    let mut out = Vec::new();
    for (name, value) in headers {
        let name = name.as_str();
        if SHOWN.contains(&name) {
            out.push((
                name.to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        } else if name == HIDDEN[1] {
            // The TTL is no secret.
            out.push((
                name.to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        } else if name == HIDDEN[0] {
            out.push((name.to_owned(), "<present>".to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> LoggedRequest {
        LoggedRequest {
            seq: 0,
            time: "t".into(),
            method: "GET".into(),
            path: path.into(),
            query: String::new(),
            cloud: "ec2",
            status: 200,
            headers: Vec::new(),
            millis: 0,
        }
    }

    #[test]
    fn the_log_numbers_keeps_and_writes_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("requests.jsonl");
        let log = RequestLog::new(Some(&Sink::File(file.clone()))).unwrap();
        log.record(entry("/a"));
        log.record(entry("/b"));
        let (entries, next) = log.since(1);
        assert_eq!(next, 2);
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].seq, entries[0].path.as_str()), (1, "/b"));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["path"], "/b");
        log.clear();
        assert_eq!(log.since(0).0.len(), 0);
        log.record(entry("/c"));
        assert_eq!(log.since(0).0[0].seq, 2);
    }

    #[test]
    fn token_values_are_not_logged() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-aws-ec2-metadata-token", "secret".parse().unwrap());
        headers.insert("metadata-flavor", "Google".parse().unwrap());
        headers.insert("authorization", "Bearer x".parse().unwrap());
        let shown = interesting_headers(&headers);
        assert!(shown.contains(&("x-aws-ec2-metadata-token".into(), "<present>".into())));
        assert!(shown.contains(&("metadata-flavor".into(), "Google".into())));
        assert!(!shown.iter().any(|(n, _)| n == "authorization"));
    }
}
