//! The client of a running agent, in the same binary: `metadata-agent get` and
//! `metadata-agent events`, over the agent's Unix socket or its HTTP address, with the token from
//! a file or the environment; and `metadata-agent completions <shell>`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where the agent is and how to prove who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The agent's API: `unix:/path/to.sock` or `http://ADDR:PORT`.
    #[arg(
        long,
        value_name = "ADDR",
        env = "METADATA_AGENT_API",
        default_value = "http://127.0.0.1:9820"
    )]
    pub api: String,
    /// A file holding the agent's bearer token (or the token in `METADATA_AGENT_TOKEN`).
    #[arg(long, value_name = "FILE", env = "METADATA_AGENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// How answers are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned `KEY  VALUE  TRUST` rows (one event a line for `events`).
    #[default]
    Table,
    /// The agent's JSON, as it sent it.
    Json,
    /// The same as YAML.
    Yaml,
}

/// `metadata-agent get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// A PID, a container id (12 to 64 hex digits), a pod UID, `cgroup:ID`, or an exec id
    /// (`process:exec-id`; an execution that ended is shown with its last labels).
    pub target: String,
    /// Also the policies a process matches and its verdict (PIDs only).
    #[arg(long)]
    pub selectors: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub connection: Connection,
}

/// `metadata-agent events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only these kinds (`connect`, `exec`, `exit`; comma-separated).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only connects with these verdicts (`allow`, `deny`, `log`; comma-separated).
    #[arg(long)]
    pub verdict: Option<String>,
    /// Only connects this policy matched or decided.
    #[arg(long)]
    pub policy: Option<String>,
    /// Only events whose process's labels match (`key=value,...`).
    #[arg(long)]
    pub selector: Option<String>,
    /// Keep streaming new events (else print the kept ones and stop after a quiet second).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Start after this event id (default: every kept event).
    #[arg(long, value_name = "ID")]
    pub since: Option<u64>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub connection: Connection,
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// An open HTTP/1.1 connection to the agent.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
    token: Option<String>,
}

impl Connection {
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?;
            return Ok(Some(token.trim().to_owned()));
        }
        Ok(std::env::var("METADATA_AGENT_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()))
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        let (stream, host) = if let Some(path) = self.api.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .with_context(|| format!("cannot reach the agent at unix:{path}"))?;
            (Stream::Unix(stream), "agent".to_owned())
        } else {
            let address = self
                .api
                .strip_prefix("http://")
                .with_context(|| {
                    format!(
                        "--api {:?}: expected unix:/path/to.sock or http://ADDR:PORT",
                        self.api
                    )
                })?
                .trim_end_matches('/')
                .to_owned();
            let stream = tokio::net::TcpStream::connect(&address)
                .await
                .with_context(|| format!("cannot reach the agent at http://{address}"))?;
            (Stream::Tcp(stream), address)
        };
        let sender = match stream {
            Stream::Tcp(stream) => handshake(stream).await?,
            Stream::Unix(stream) => handshake(stream).await?,
        };
        Ok(Client {
            sender,
            host,
            token: self.token()?,
        })
    }
}

async fn handshake<S>(
    stream: S,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("talking HTTP to the agent")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

impl Client {
    async fn send(
        &mut self,
        path: &str,
        headers: &[(&str, String)],
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let mut request = Request::get(path).header("host", &self.host);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Empty::new()).context("building the request")?;
        // One connection, one request at a time: the previous answer must be read to its end
        // (and the connection ready again) before the next is sent.
        self.sender
            .ready()
            .await
            .with_context(|| format!("GET {path}: the connection closed"))?;
        self.sender
            .send_request(request)
            .await
            .with_context(|| format!("GET {path}"))
    }

    /// GET `path` as JSON; an error answer becomes an error naming its code and message.
    async fn get_json(&mut self, path: &str) -> anyhow::Result<Value> {
        let response = self.send(path, &[]).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the answer")?
            .to_bytes();
        let json: Value = serde_json::from_slice(&body)
            .with_context(|| format!("GET {path}: the answer is not JSON"))?;
        // An execution that ended: its last labels, said to be the last.
        if status == hyper::StatusCode::GONE && json.get("last_known").is_some() {
            let mut last = json["last_known"].clone();
            last["ended_at"] = json["ended_at"].clone();
            return Ok(last);
        }
        if !status.is_success() {
            bail!(
                "{} ({}): {}",
                status.as_u16(),
                json["error"]["code"].as_str().unwrap_or("error"),
                json["error"]["message"].as_str().unwrap_or("")
            );
        }
        Ok(json)
    }
}

/// What `target` names.
fn target_path(target: &str) -> anyhow::Result<(String, bool)> {
    let is_hex = |t: &str| t.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(id) = target.strip_prefix("cgroup:") {
        let id: u64 = id
            .parse()
            .with_context(|| format!("{target:?}: cgroup:ID needs a number"))?;
        return Ok((format!("/metadata?cgroup_id={id}"), false));
    }
    if !target.is_empty() && target.bytes().all(|b| b.is_ascii_digit()) {
        return Ok((format!("/metadata/{target}"), true));
    }
    if (12..=64).contains(&target.len()) && is_hex(target) {
        return Ok((format!("/containers/{target}"), false));
    }
    let uuid = target.len() == 36
        && target.split('-').map(str::len).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && is_hex(&target.replace('-', ""));
    if uuid {
        return Ok((format!("/pods/{target}"), false));
    }
    if target.parse::<collectors::procfs::ExecId>().is_ok() {
        return Ok((format!("/metadata?exec_id={target}"), false));
    }
    bail!(
        "{target:?}: expected a PID, a container id (12 to 64 hex digits), a pod UID, cgroup:ID \
         or an exec id"
    )
}

/// `labels` and `trust` of an answer as aligned rows.
fn label_rows(answer: &Value, out: &mut String) {
    let Some(labels) = answer["labels"].as_object() else {
        return;
    };
    let width = labels.keys().map(String::len).max().unwrap_or(0);
    for (key, values) in labels {
        let trust = answer["trust"][key].as_str().unwrap_or("");
        for value in values.as_array().into_iter().flatten() {
            let value = value.as_str().unwrap_or_default();
            out.push_str(&format!("{key:width$}  {value}  {trust}\n").replace("  \n", "\n"));
        }
    }
}

fn print(output: Output, json: &Value, table: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
    let text = match output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(json)?),
        Output::Yaml => serde_saphyr::to_string(json).context("rendering YAML")?,
        Output::Table => table(json),
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Runs `metadata-agent get`.
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let (path, is_pid) = target_path(&args.target)?;
    if args.selectors && !is_pid {
        bail!("--selectors is for PIDs only");
    }
    let mut client = args.connection.connect().await?;
    let mut answer = client.get_json(&path).await?;
    if args.selectors {
        let pid = &args.target;
        let verdict = client.get_json(&format!("/selectors/{pid}")).await?;
        answer["selectors"] = verdict;
    }
    print(args.output, &answer, |answer| {
        let mut out = String::new();
        for (name, field) in [
            ("pid", "pid"),
            ("ended at", "ended_at"),
            ("container", "id"),
            ("pod", "uid"),
            ("cgroup", "cgroup"),
        ] {
            if let Some(value) = answer.get(field).filter(|v| !v.is_null()) {
                out.push_str(&format!(
                    "# {name} {}\n",
                    value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned)
                ));
            }
        }
        label_rows(answer, &mut out);
        for container in answer["containers"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "# container {}\n",
                container["id"].as_str().unwrap_or("")
            ));
            label_rows(container, &mut out);
        }
        if let Some(selectors) = answer.get("selectors") {
            let names: Vec<&str> = selectors["matches"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["name"].as_str())
                .collect();
            out.push_str(&format!(
                "# verdict {} (policies: {})\n",
                selectors["verdict"].as_str().unwrap_or("?"),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ));
        }
        out
    })
}

/// One event as a table row: `ID KIND PID VERDICT DESTINATION PROCESS`.
fn event_row(event: &Value) -> String {
    let kind = event["kind"].as_str().unwrap_or("?");
    let id = &event["id"];
    match kind {
        "connect" => format!(
            "{id:>8}  connect  {:>7}  {:<5}  {}:{}/{}  {}\n",
            event["event"]["tgid"],
            event["verdict"].as_str().unwrap_or(""),
            event["event"]["destination"].as_str().unwrap_or(""),
            event["event"]["port"],
            event["event"]["protocol"].as_str().unwrap_or(""),
            event["labels"]["process:name"][0].as_str().unwrap_or("?"),
        ),
        "gap" => format!(
            "{id:>8}  gap      {} events no longer kept ({} to {})\n",
            event["missed"], event["from"], event["to"]
        ),
        _ => format!(
            "{id:>8}  {kind:<7}  {:>7}  {}\n",
            event["tgid"],
            event["labels"]["process:name"][0].as_str().unwrap_or("")
        ),
    }
}

/// Runs `metadata-agent events`.
pub async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let mut query = Vec::new();
    for (name, value) in [
        ("kind", &args.kind),
        ("verdict", &args.verdict),
        ("policy", &args.policy),
        ("selector", &args.selector),
    ] {
        if let Some(value) = value {
            query.push(format!("{name}={}", percent_encode(value)));
        }
    }
    // Without --since, every event the agent still keeps.
    query.push(format!("last_event_id={}", args.since.unwrap_or(0)));
    let path = format!("/events?{}", query.join("&"));
    let mut client = args.connection.connect().await?;
    let response = client.send(&path, &[]).await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        let json: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        bail!(
            "{} ({}): {}",
            status.as_u16(),
            json["error"]["code"].as_str().unwrap_or("error"),
            json["error"]["message"].as_str().unwrap_or("")
        );
    }
    let mut pending = String::new();
    let quiet = Duration::from_secs(1);
    loop {
        let frame = if args.follow {
            body.frame().await
        } else {
            match tokio::time::timeout(quiet, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => return Ok(()),
            }
        };
        let Some(frame) = frame else {
            return Ok(());
        };
        let Ok(data) = frame.context("reading events")?.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = pending.find("\n\n") {
            let record: String = pending.drain(..end + 2).collect();
            let Some(data) = record.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let event: Value = serde_json::from_str(data).context("an event that is not JSON")?;
            let text = match args.output {
                Output::Json => format!("{}\n", serde_json::to_string(&event)?),
                Output::Yaml => format!("---\n{}", serde_saphyr::to_string(&event)?),
                Output::Table => event_row(&event),
            };
            let mut stdout = std::io::stdout().lock();
            let written = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush());
            match written {
                Ok(()) => {}
                // The reader is gone (`| head`): done.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:,=!|*".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_told_apart_by_their_shape() {
        assert_eq!(
            target_path("4242").unwrap(),
            ("/metadata/4242".into(), true)
        );
        assert_eq!(
            target_path("3ac7ed50c608").unwrap().0,
            "/containers/3ac7ed50c608"
        );
        assert_eq!(
            target_path("5d3b1f2e-8a41-4c55-9a0e-2f6b7c1d9e30")
                .unwrap()
                .0,
            "/pods/5d3b1f2e-8a41-4c55-9a0e-2f6b7c1d9e30"
        );
        assert_eq!(
            target_path("cgroup:1234").unwrap().0,
            "/metadata?cgroup_id=1234"
        );
        let exec_id = "0123456789abcdef-4242-987654-fedcba9876543210";
        assert_eq!(
            target_path(exec_id).unwrap(),
            (format!("/metadata?exec_id={exec_id}"), false)
        );
        for bad in ["", "abc", "cgroup:x", "12ab"] {
            assert!(target_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selectors_survive_the_query_string() {
        assert_eq!(
            percent_encode("k8s:label:app=web,process:uid=1000"),
            "k8s:label:app=web,process:uid=1000"
        );
        assert_eq!(percent_encode("a b&c"), "a%20b%26c");
    }
}
