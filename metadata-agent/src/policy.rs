//! `metadata-agent policy check|test`: validate policy files, and dry-run them against a label
//! set or a live process.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use collectors::{CollectorsConfig, HostRoots, KeyCatalog};
use labels::{LabelSet, TrustMap};
use selectors::matcher::{Explanation, SelectorExplanation};
use selectors::{Action, PolicySet, Target, check_trust, load_policies};

use crate::config::Config;
use crate::resolver::resolve_once;

/// `policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files or directories; lists every error as `file:line:column: message`.
    Check {
        /// Files, or directories of `*.yaml` files.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Show which policies match a label set or a process, in precedence order, and the verdict.
    Test(TestArgs),
}

/// Options of `policy test`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["labels", "pid"])))]
pub struct TestArgs {
    /// Policy file or directory.
    #[arg(long, required = true, value_name = "PATH")]
    pub policies: Vec<PathBuf>,
    /// A label set: JSON (`{"labels": {"key": ["value"]}}`) or `key: value` lines; `-` for stdin.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// A live process whose labels are resolved first.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pid: Option<String>,
    /// Configuration file, for resolving `--pid`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Verdict when no policy matches.
    #[arg(long, value_name = "ACTION", default_value = "allow", value_parser = parse_action)]
    pub default_action: Action,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also show each matching selector and the closest selectors that did not match.
    #[arg(long)]
    pub explain: bool,
    /// The verdict of a connect to this destination: `ADDRESS:PORT[/tcp|/udp]` (TCP when not
    /// given).
    #[arg(long, value_name = "DEST", value_parser = Target::parse)]
    pub to: Option<Target>,
}

fn parse_action(text: &str) -> Result<Action, String> {
    Action::parse(text).ok_or_else(|| format!("expected allow, deny or log, found {text:?}"))
}

/// Runs a `policy` subcommand; `Ok(false)` means "checked, with errors" (exit code 1).
pub async fn run(command: PolicyCommand) -> anyhow::Result<bool> {
    match command {
        PolicyCommand::Check { paths } => check(&paths),
        PolicyCommand::Test(args) => test(args).await.map(|()| true),
    }
}

/// What the built-in collectors declare about label keys, for checking policies.
fn key_catalog() -> anyhow::Result<KeyCatalog> {
    let registry = collectors::build_registry(&CollectorsConfig::default(), &HostRoots::default())?;
    Ok(KeyCatalog::new(&registry))
}

fn check(paths: &[PathBuf]) -> anyhow::Result<bool> {
    let catalog = key_catalog()?;
    let mut stderr = std::io::stderr().lock();
    let errors = match load_policies(paths) {
        Ok(policies) => {
            let findings = check_trust(&policies, &catalog);
            for warning in &findings.warnings {
                let _ = writeln!(stderr, "{warning}");
            }
            if findings.errors.is_empty() {
                println!("ok: {} policies", policies.len());
                return Ok(true);
            }
            findings.errors
        }
        Err(errors) => errors.0,
    };
    for error in &errors {
        let _ = writeln!(stderr, "{error}");
    }
    let _ = writeln!(stderr, "{} error(s)", errors.len());
    Ok(false)
}

async fn test(args: TestArgs) -> anyhow::Result<()> {
    let policies = load_policies(&args.policies).map_err(|e| anyhow::anyhow!("{e}"))?;
    let set = PolicySet::new(policies, args.default_action);
    let (labels, trust) = match (&args.labels, &args.pid) {
        (Some(path), _) => read_label_file(path)?,
        (None, Some(pid)) => {
            let config = match &args.config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let roots = HostRoots::resolve(&config.host);
            collectors::cgroupns::adopt_host_view(&roots).map_err(anyhow::Error::msg)?;
            let pid = collectors::process::parse_pid(pid, &roots)?;
            let registry = collectors::build_registry(&config.collectors, &roots)?;
            let resolution = resolve_once(registry, roots, config.containers, pid).await?;
            (resolution.labels, resolution.trust)
        }
        (None, None) => bail!("give --labels FILE or --pid N"),
    };
    let explanation = match &args.to {
        Some(target) => set.explain_to(&labels, Some(&trust), target),
        None => set.explain_with(&labels, &trust),
    };
    let mut out = String::new();
    if args.json {
        let value = if args.explain {
            serde_json::to_value(&explanation)?
        } else {
            serde_json::to_value(&explanation.evaluation)?
        };
        out = serde_json::to_string_pretty(&value)?;
        out.push('\n');
    } else {
        render_text(&explanation, args.explain, &mut out);
    }
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the result"),
    }
}

/// A label set in JSON, with the trust classes it vouches for (`{"labels": ..., "trust": ...}`,
/// as `GET /metadata/{pid}` gives them).
#[derive(serde::Deserialize)]
struct LabelFile {
    #[serde(flatten)]
    labels: LabelSet,
    #[serde(default)]
    trust: TrustMap,
}

/// Reads a label set in the JSON or the text rendering (whose values are all `self`).
fn read_label_file(path: &Path) -> anyhow::Result<(LabelSet, TrustMap)> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading labels from stdin")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
    }
    if text.trim_start().starts_with('{') {
        serde_json::from_str::<LabelFile>(&text)
            .map(|file| (file.labels, file.trust))
            .with_context(|| {
                format!(
                    "{}: not a JSON label set (expected {{\"labels\": {{\"key\": [\"value\", ...]}}}})",
                    path.display()
                )
            })
    } else {
        LabelSet::from_text(&text)
            .map(|labels| (labels, TrustMap::new()))
            .with_context(|| format!("{}: not a `key: value` label set", path.display()))
    }
}

fn render_text(explanation: &Explanation, explain: bool, out: &mut String) {
    use std::fmt::Write as _;
    let evaluation = &explanation.evaluation;
    // The policy that decided: the first that applies to the destination (or everywhere).
    let deciding = (!evaluation.default_applied)
        .then(|| {
            evaluation
                .matches
                .iter()
                .find(|m| m.to.is_some() || !m.per_destination)
        })
        .flatten();
    match deciding {
        Some(first) => {
            let _ = writeln!(
                out,
                "verdict: {} (policy {})",
                evaluation.verdict, first.name
            );
        }
        None => {
            let _ = writeln!(
                out,
                "verdict: {} (no policy matched: default)",
                evaluation.verdict
            );
        }
    }
    for (rank, m) in evaluation.matches.iter().enumerate() {
        let scope = match (m.to, m.per_destination) {
            (Some(to), _) => format!(" to={to}"),
            (None, true) => " (per destination)".to_owned(),
            (None, false) => String::new(),
        };
        let _ = writeln!(
            out,
            "{:>3}. {} action={} priority={} specificity={} selector={}{scope} ({})",
            rank + 1,
            m.name,
            m.action,
            m.priority,
            m.specificity,
            m.selector,
            m.file
        );
    }
    if explain {
        let section = |out: &mut String, title: &str, items: &[SelectorExplanation]| {
            let _ = writeln!(out, "{title}:");
            if items.is_empty() {
                let _ = writeln!(out, "  (none)");
            }
            for item in items {
                let failed = item.constraints.iter().filter(|c| !c.matched).count();
                let _ = writeln!(
                    out,
                    "  {} selector {} at {}: {} of {} constraints failed",
                    item.policy,
                    item.selector,
                    item.location,
                    failed,
                    item.constraints.len()
                );
                for c in &item.constraints {
                    let found = if c.found.is_empty() {
                        "absent".to_owned()
                    } else {
                        format!("found {:?}", c.found)
                    };
                    let mark = if c.matched { "ok  " } else { "FAIL" };
                    let _ = writeln!(out, "    {mark} {} {} ({found})", c.key, c.test);
                }
            }
        };
        section(out, "matched selectors", &explanation.matched);
        section(out, "near misses", &explanation.near_misses);
        if !explanation.destinations.is_empty() {
            let _ = writeln!(out, "destinations:");
            for to in &explanation.destinations {
                let outcome = match &to.reason {
                    None => "covers the destination".to_owned(),
                    Some(reason) => format!("does not: {reason}"),
                };
                let _ = writeln!(
                    out,
                    "  {} to {} at {}: {outcome}",
                    to.policy, to.to, to.location
                );
            }
        }
    }
}
