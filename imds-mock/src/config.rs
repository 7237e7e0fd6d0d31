//! The mock's settings: flags, then `IMDS_MOCK_*` environment variables, then a YAML file
//! (`--config`), then the defaults (and the bundled fixtures). `docs/imds-mock.md` lists them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::requestlog::Sink;
use crate::{CloudChoice, Fixtures, MockOptions, Scenario, TokenMode};

/// The mock's command line. Every flag may also come from the `IMDS_MOCK_*` variable it names,
/// and from the configuration file; a flag wins over the variable, which wins over the file.
#[derive(Debug, Default, clap::Args)]
pub struct ImdsMockArgs {
    /// A YAML file with any of these settings (`docs/imds-mock.md`).
    #[arg(long, value_name = "FILE", env = "IMDS_MOCK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Which cloud to serve [default: all].
    #[arg(long, value_enum, env = "IMDS_MOCK_CLOUD")]
    pub cloud: Option<CloudChoice>,
    /// Address to listen on [default: 127.0.0.1:1338].
    #[arg(long, env = "IMDS_MOCK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory with `ec2.json`, `azure.json` and `gcp.json` (a missing file: the bundled one).
    #[arg(long, env = "IMDS_MOCK_FIXTURES")]
    pub fixtures: Option<PathBuf>,
    /// IMDSv2 tokens: `optional` (v1 and v2), `required` (401 without a token), `disabled`
    /// (the metadata endpoint is off: every request gets 403), `v1-only` (an IMDS without
    /// tokens: the token request gets 405) [default: optional].
    #[arg(long, value_enum, env = "IMDS_MOCK_EC2_TOKENS")]
    pub ec2_tokens: Option<TokenMode>,
    /// Latency added to every answer, e.g. `200ms`.
    #[arg(long, value_parser = humantime::parse_duration, env = "IMDS_MOCK_LATENCY")]
    pub latency: Option<Duration>,
    /// Answer STATUS to every request whose path starts with PATH (repeatable), e.g.
    /// `/latest/meta-data/instance-id=500`.
    #[arg(
        long = "fail",
        value_name = "PATH=STATUS",
        value_parser = parse_failure,
        env = "IMDS_MOCK_FAIL",
        value_delimiter = ','
    )]
    pub failures: Vec<(String, u16)>,
    /// Never answer EC2 token requests (what a container behind a hop limit of 1 sees).
    #[arg(long, env = "IMDS_MOCK_DROP_TOKEN_ENDPOINT")]
    pub drop_token_endpoint: bool,
    /// A timed scenario, `NAME[:ARG][@WHEN]` (repeatable), e.g.
    /// `ec2-spot-interruption:terminate@2s`.
    #[arg(
        long = "scenario",
        value_name = "SPEC",
        value_parser = parse_scenario,
        env = "IMDS_MOCK_SCENARIO",
        value_delimiter = ','
    )]
    pub scenarios: Vec<Scenario>,
    /// A YAML file of scenarios (a list of specs, or of `{name, arg, after | at}`).
    #[arg(long, value_name = "FILE", env = "IMDS_MOCK_SCENARIO_FILE")]
    pub scenario_file: Option<PathBuf>,
    /// Where to serve the control API (off unless given), e.g. `127.0.0.1:1339`.
    #[arg(long, env = "IMDS_MOCK_CONTROL_LISTEN")]
    pub control_listen: Option<SocketAddr>,
    /// Write every request as a JSON line to FILE, or to stderr with `-`.
    #[arg(long, value_name = "FILE|-", env = "IMDS_MOCK_REQUEST_LOG")]
    pub request_log: Option<String>,
}

/// `PATH=STATUS`.
pub fn parse_failure(text: &str) -> Result<(String, u16), String> {
    let (path, status) = text.rsplit_once('=').ok_or_else(|| {
        format!("{text:?}: expected PATH=STATUS, e.g. /latest/meta-data/ami-id=500")
    })?;
    let status: u16 = status
        .parse()
        .ok()
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| format!("{text:?}: {status:?} is not an HTTP status (100-599)"))?;
    if !path.starts_with('/') {
        return Err(format!("{text:?}: the path must start with /"));
    }
    Ok((path.to_owned(), status))
}

fn parse_scenario(text: &str) -> Result<Scenario, String> {
    text.parse()
}

/// The configuration file: the same settings as the flags, in camelCase.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    cloud: Option<CloudChoice>,
    listen: Option<SocketAddr>,
    fixtures: Option<PathBuf>,
    ec2_tokens: Option<String>,
    latency: Option<String>,
    #[serde(default)]
    fail: Vec<String>,
    drop_token_endpoint: Option<bool>,
    #[serde(default)]
    scenarios: Vec<ScenarioEntry>,
    control_listen: Option<SocketAddr>,
    request_log: Option<String>,
}

/// A scenario in a file: its spec, or its parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScenarioEntry {
    Spec(String),
    #[serde(rename_all = "camelCase")]
    Parts {
        name: String,
        arg: Option<String>,
        after: Option<String>,
        at: Option<String>,
    },
}

impl ScenarioEntry {
    fn parse(&self) -> Result<Scenario, String> {
        match self {
            Self::Spec(spec) => spec.parse(),
            Self::Parts {
                name,
                arg,
                after,
                at,
            } => {
                let mut spec = name.clone();
                if let Some(arg) = arg {
                    spec.push(':');
                    spec.push_str(arg);
                }
                match (after, at) {
                    (Some(_), Some(_)) => {
                        return Err(format!("scenario {name}: give `after` or `at`, not both"));
                    }
                    (Some(when), None) | (None, Some(when)) => {
                        spec.push('@');
                        spec.push_str(when);
                    }
                    (None, None) => {}
                }
                spec.parse()
            }
        }
    }
}

/// A scenario file: a list, or `{scenarios: [...]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScenarioFile {
    List(Vec<ScenarioEntry>),
    Wrapped { scenarios: Vec<ScenarioEntry> },
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{what} {}: cannot read", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))
}

/// Everything `run` needs, with every source merged.
#[derive(Debug)]
pub struct Settings {
    /// The mock's options.
    pub options: MockOptions,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Where the control API listens, if anywhere.
    pub control_listen: Option<SocketAddr>,
}

impl Settings {
    /// Merges the flags (and the variables clap read for them) over the file over the
    /// defaults; fails naming the setting or the file that is wrong.
    pub fn resolve(args: ImdsMockArgs) -> anyhow::Result<Self> {
        let file: File = match &args.config {
            Some(path) => read_yaml(path, "--config")?,
            None => File::default(),
        };
        let in_file = |field: &str| {
            format!(
                "{} `{field}`",
                args.config
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        };
        let fixtures_dir = args.fixtures.clone().or(file.fixtures.clone());
        let fixtures = match &fixtures_dir {
            Some(dir) => Fixtures::load(dir)?,
            None => Fixtures::bundled(),
        };
        let ec2_tokens = match (args.ec2_tokens, &file.ec2_tokens) {
            (Some(mode), _) => mode,
            (None, Some(text)) => {
                <TokenMode as clap::ValueEnum>::from_str(text, true).map_err(|_| {
                    anyhow::anyhow!(
                        "{}: {text:?} is not one of optional, required, disabled, v1-only",
                        in_file("ec2Tokens")
                    )
                })?
            }
            (None, None) => TokenMode::Optional,
        };
        let latency = match (args.latency, &file.latency) {
            (Some(latency), _) => latency,
            (None, Some(text)) => humantime::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("{}: {text:?}: {e}", in_file("latency")))?,
            (None, None) => Duration::ZERO,
        };
        let failures = if args.failures.is_empty() {
            file.fail
                .iter()
                .map(|text| parse_failure(text))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", in_file("fail")))?
        } else {
            args.failures
        };
        let mut scenarios = if args.scenarios.is_empty() {
            file.scenarios
                .iter()
                .map(ScenarioEntry::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", in_file("scenarios")))?
        } else {
            args.scenarios
        };
        if let Some(path) = &args.scenario_file {
            let entries = match read_yaml::<ScenarioFile>(path, "--scenario-file")? {
                ScenarioFile::List(entries) | ScenarioFile::Wrapped { scenarios: entries } => {
                    entries
                }
            };
            for entry in &entries {
                scenarios.push(
                    entry
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--scenario-file {}: {e}", path.display()))?,
                );
            }
        }
        let request_log = args
            .request_log
            .or(file.request_log)
            .map(|text| Sink::parse(&text));
        Ok(Self {
            options: MockOptions {
                cloud: args.cloud.or(file.cloud).unwrap_or(CloudChoice::All),
                fixtures,
                ec2_tokens,
                latency,
                failures,
                drop_token_endpoint: args.drop_token_endpoint
                    || file.drop_token_endpoint.unwrap_or(false),
                scenarios,
                request_log,
            },
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:1338".parse().expect("static")),
            control_listen: args.control_listen.or(file.control_listen),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_path_equals_status() {
        assert_eq!(
            parse_failure("/latest/meta-data/ami-id=500").unwrap(),
            ("/latest/meta-data/ami-id".to_owned(), 500)
        );
        assert!(
            parse_failure("/x=99")
                .unwrap_err()
                .contains("not an HTTP status")
        );
        assert!(
            parse_failure("x=500")
                .unwrap_err()
                .contains("must start with /")
        );
        assert!(parse_failure("/x").unwrap_err().contains("PATH=STATUS"));
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mock.yaml");
        std::fs::write(
            &config,
            "cloud: gcp\nlisten: 127.0.0.1:2000\nec2Tokens: required\nlatency: 10ms\n\
             fail: [/latest/meta-data/ami-id=503]\nscenarios:\n  - gcp-preemption@5s\n  - \
             {name: ec2-spot-interruption, arg: stop, after: 1s}\ncontrolListen: 127.0.0.1:2001\n",
        )
        .unwrap();
        let from_file = Settings::resolve(ImdsMockArgs {
            config: Some(config.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_file.options.cloud, CloudChoice::Gcp);
        assert_eq!(from_file.listen.port(), 2000);
        assert_eq!(from_file.options.ec2_tokens, TokenMode::Required);
        assert_eq!(from_file.options.latency, Duration::from_millis(10));
        assert_eq!(from_file.options.failures[0].1, 503);
        assert_eq!(from_file.options.scenarios.len(), 2);
        assert_eq!(
            from_file.options.scenarios[1].spec,
            "ec2-spot-interruption:stop@1s"
        );
        assert_eq!(from_file.control_listen.unwrap().port(), 2001);

        let flags = Settings::resolve(ImdsMockArgs {
            config: Some(config),
            cloud: Some(CloudChoice::Ec2),
            ec2_tokens: Some(TokenMode::Optional),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(flags.options.cloud, CloudChoice::Ec2);
        assert_eq!(flags.options.ec2_tokens, TokenMode::Optional);
        assert_eq!(flags.listen.port(), 2000, "the file still gives the rest");

        let defaults = Settings::resolve(ImdsMockArgs::default()).unwrap();
        assert_eq!(defaults.options.cloud, CloudChoice::All);
        assert_eq!(defaults.listen.to_string(), "127.0.0.1:1338");
        assert!(defaults.control_listen.is_none());
    }

    #[test]
    fn a_bad_file_is_named_with_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mock.yaml");
        for (text, says) in [
            ("ec2Tokens: sometimes\n", "`ec2Tokens`: \"sometimes\""),
            ("latency: soon\n", "`latency`"),
            ("scenarios: [ec2-teleport]\n", "unknown scenario"),
            ("colud: gcp\n", "colud"),
        ] {
            std::fs::write(&config, text).unwrap();
            let error = Settings::resolve(ImdsMockArgs {
                config: Some(config.clone()),
                ..Default::default()
            })
            .unwrap_err();
            let error = format!("{error:#}");
            assert!(
                error.contains(says) && error.contains("mock.yaml"),
                "{text}: {error}"
            );
        }
    }
}
