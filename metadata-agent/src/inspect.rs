//! `metadata-agent inspect <pid|self>`: the labels of one process, resolved once, no daemon.

use std::io::Write;
use std::path::PathBuf;

use collectors::HostRoots;
use collectors::process::parse_pid;

use crate::config::Config;
use crate::resolver::resolve_once;

/// Options of `inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The process: a PID (a thread id resolves to its process) or `self`.
    #[arg(allow_hyphen_values = true)]
    pub pid: String,
    /// Configuration file (YAML).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON (labels, per-collector status, resolution time) instead of `key: value` text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `inspect`: labels to stdout, per-collector status to stderr (or inside the JSON).
pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    match print(args).await {
        // Output piped into `head` and closed early: not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

async fn print(args: InspectArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let roots = HostRoots::resolve(&config.host);
    collectors::cgroupns::adopt_host_view(&roots).map_err(anyhow::Error::msg)?;
    let pid = parse_pid(&args.pid, &roots)?;
    let registry = collectors::build_registry(&config.collectors, &roots)?;
    let resolution = resolve_once(registry, roots, config.containers, pid).await?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let mut text = serde_json::to_string_pretty(&resolution)?;
        text.push('\n');
        stdout.write_all(text.as_bytes())?;
    } else {
        stdout.write_all(resolution.labels.to_text().as_bytes())?;
        let mut stderr = std::io::stderr().lock();
        for report in &resolution.collectors {
            let detail = report
                .status
                .detail()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            writeln!(
                stderr,
                "# {} ({}): {}{} [{:.1} ms]",
                report.name,
                serde_json::to_value(report.scope)?
                    .as_str()
                    .unwrap_or_default(),
                report.status.state(),
                detail,
                report.latency.as_secs_f64() * 1000.0
            )?;
        }
    }
    Ok(())
}
