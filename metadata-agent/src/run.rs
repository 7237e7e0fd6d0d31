//! `metadata-agent run`: the daemon. Builds the resolver, the policies and the API from the
//! configuration, starts the background work (node refresh, cache sweep, policy reload,
//! pre-resolution, the event pipeline) and serves HTTP until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use collectors::HostRoots;
use kernel_hook::HookEvent;
use selectors::PolicyStore;
use tokio::sync::{mpsc, watch};

use crate::api::{self, AppState, HookHealth};
use crate::config::{Config, HookMode};
use crate::enforcement::{Enforcer, SharedEnforcer};
use crate::events::{self, EventBus};
use crate::metrics::Metrics;
use crate::resolver::{Resolver, ResolverLimits};
use collectors::config::Enabled;
use kernel_hook::EventReader;

/// How long shutdown waits for open requests before the agent exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Options of `run`. Each flag may also come from the environment variable it names, and
/// overrides the configuration file.
#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// Configuration file (YAML). Without one, the embedded defaults apply.
    #[arg(long, value_name = "FILE", env = "METADATA_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where to serve the API: `ADDR:PORT` or `unix:/path/to.sock` [default: 127.0.0.1:9820].
    #[arg(long, value_name = "ADDR", env = "METADATA_AGENT_LISTEN")]
    pub listen: Option<String>,
    /// Policy file or directory of `*.yaml` files (overrides `policies.path`).
    #[arg(long, value_name = "PATH", env = "METADATA_AGENT_POLICIES")]
    pub policies: Option<PathBuf>,
}

/// Where the API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket, created with mode 0600.
    Unix(PathBuf),
}

impl ListenAddress {
    /// Parses `ADDR:PORT`, `[v6]:PORT` or `unix:/path`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                bail!("invalid listen address {text:?}: `unix:` needs a socket path");
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        text.parse().map(Self::Tcp).map_err(|_| {
            anyhow::anyhow!(
                "invalid listen address {text:?}: expected ADDR:PORT (e.g. 127.0.0.1:9820) or unix:/path/to.sock"
            )
        })
    }
}

/// A running agent's parts, before it serves: tests build one to drive it directly.
pub struct Agent {
    /// What the API handlers share.
    pub state: Arc<AppState>,
    /// Where hook events go (the kernel hook, or a test).
    pub hook_events: mpsc::Sender<HookEvent>,
    hook_receiver: Option<mpsc::Receiver<HookEvent>>,
    hook_reader: Option<EventReader>,
    /// The attached hook, if any.
    pub enforcer: SharedEnforcer,
    max_body_bytes: usize,
    config: Config,
}

impl Agent {
    /// Builds the agent from `config`: collectors, caches, policies, metrics. Fails when the
    /// policies or the token file cannot be loaded.
    pub fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let roots = HostRoots::resolve(&config.host);
        let registry = collectors::build_registry(&config.collectors, &roots)?;
        let limits = ResolverLimits::from(&config.resolver);
        let resolver = Arc::new(Resolver::new(roots, registry, limits, Arc::clone(&metrics)));
        let default_action = config.policies.default_action;
        let policies = match &config.policies.path {
            Some(path) => PolicyStore::load(vec![path.clone()], default_action)
                .map_err(|errors| anyhow::anyhow!("cannot load the policies:\n{errors}"))?,
            None => PolicyStore::empty(default_action),
        };
        let policies = Arc::new(policies);
        metrics.policies.set(policies.status().policies as i64);
        metrics.policy_reloads.inc_by(policies.status().reloads);
        let token = match &config.server.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        let bus = Arc::new(EventBus::new(
            config.events.subscriber_buffer,
            Arc::clone(&metrics),
        ));
        let (hook_events, hook_receiver) = mpsc::channel(events::PIPELINE_QUEUE);
        let state = Arc::new(AppState {
            resolver,
            policies,
            bus,
            metrics,
            token,
            hook: Mutex::new(HookHealth {
                attached: false,
                mode: None,
                reason: Some("not attached yet".to_owned()),
            }),
            started: Instant::now(),
        });
        Ok(Self {
            state,
            hook_events,
            hook_receiver: Some(hook_receiver),
            hook_reader: None,
            enforcer: None,
            max_body_bytes: config.server.max_body_bytes,
            config,
        })
    }

    /// Attaches the kernel hook as `hook.enabled` says: `auto` warns and goes on without it,
    /// `true` fails, `false` does not try.
    pub fn attach_hook(&mut self) -> anyhow::Result<()> {
        let config = &self.config.hook;
        let set_health = |attached: bool, mode: Option<&str>, reason: Option<String>| {
            *self.state.hook.lock().unwrap_or_else(|e| e.into_inner()) = HookHealth {
                attached,
                mode: mode.map(str::to_owned),
                reason,
            };
            self.state.metrics.hook_attached.set(i64::from(attached));
        };
        if config.enabled == Enabled::Never {
            set_health(
                false,
                None,
                Some("disabled in the configuration (hook.enabled: false)".to_owned()),
            );
            return Ok(());
        }
        let attached = config
            .cgroup_root
            .clone()
            .map_or_else(kernel_hook::detect_cgroup_root, Ok)
            .and_then(|root| kernel_hook::Hook::attach(&root));
        let enforce = config.mode == HookMode::Enforce;
        let default = config.default_verdict;
        match attached.and_then(|(hook, reader)| {
            let root = hook.cgroup_root().to_owned();
            Enforcer::new(hook, enforce, default).map(|e| (e, reader, root))
        }) {
            Ok((enforcer, reader, root)) => {
                let mode = if enforce { "enforce" } else { "observe" };
                tracing::info!(cgroup = %root.display(), mode, "kernel hook attached");
                set_health(true, Some(mode), None);
                self.enforcer = Some(Arc::new(enforcer));
                self.hook_reader = Some(reader);
                Ok(())
            }
            Err(error) if config.enabled == Enabled::Auto => {
                tracing::warn!("kernel hook not attached, running without it: {error}");
                set_health(false, None, Some(error.to_string()));
                Ok(())
            }
            Err(error) => Err(anyhow::anyhow!("cannot attach the kernel hook: {error}")),
        }
    }

    /// Detaches the kernel hook, if attached.
    pub fn detach_hook(&self) {
        if let Some(enforcer) = &self.enforcer {
            enforcer.detach();
            self.state.metrics.hook_attached.set(0);
        }
    }

    /// The HTTP API.
    pub fn router(&self) -> Router {
        api::router(Arc::clone(&self.state), self.max_body_bytes)
    }

    /// Starts the background work; it stops when `shutdown` turns true.
    pub fn start_background(&mut self, shutdown: watch::Receiver<bool>) {
        let state = &self.state;
        let resolver = Arc::clone(&state.resolver);
        let node_interval = self.config.resolver.node_refresh_interval;
        every(node_interval, shutdown.clone(), true, move || {
            let resolver = Arc::clone(&resolver);
            async move { resolver.refresh_node().await }
        });

        state.resolver.follow_invalidations();

        let resolver = Arc::clone(&state.resolver);
        let sweep_interval = self.config.resolver.sweep_interval;
        every(sweep_interval, shutdown.clone(), false, move || {
            let resolver = Arc::clone(&resolver);
            async move { resolver.sweep() }
        });

        if self.config.policies.path.is_some() {
            let (policies, metrics) = (Arc::clone(&state.policies), Arc::clone(&state.metrics));
            let (resolver, enforcer) = (Arc::clone(&state.resolver), self.enforcer.clone());
            let reload_interval = self.config.policies.reload_interval;
            every(reload_interval, shutdown.clone(), false, move || {
                let (policies, metrics) = (Arc::clone(&policies), Arc::clone(&metrics));
                let (resolver, enforcer) = (Arc::clone(&resolver), enforcer.clone());
                async move {
                    if reload_policies(&policies, &metrics)
                        && let Some(enforcer) = enforcer
                    {
                        enforcer.apply_all(&resolver, &policies).await;
                    }
                }
            });
        }

        if self.config.resolver.prestart {
            let resolver = Arc::clone(&state.resolver);
            let (policies, enforcer) = (Arc::clone(&state.policies), self.enforcer.clone());
            let concurrency = self.config.resolver.prestart_concurrency;
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let work = async {
                    resolver.prestart(concurrency).await;
                    if let Some(enforcer) = enforcer {
                        enforcer.apply_all(&resolver, &policies).await;
                    }
                };
                tokio::select! {
                    _ = work => {}
                    _ = shutdown.changed() => {}
                }
            });
        }

        if let Some(reader) = self.hook_reader.take() {
            let (lost, dropped) = (Arc::clone(&state.metrics), Arc::clone(&state.metrics));
            tokio::spawn(reader.run(
                self.hook_events.clone(),
                move |n| {
                    lost.events_lost.inc_by(n);
                },
                move |n| {
                    dropped
                        .events_dropped
                        .get_or_create(&crate::metrics::DropLabels {
                            reason: "pipeline_full".to_owned(),
                        })
                        .inc_by(n);
                },
            ));
        }

        if let Some(receiver) = self.hook_receiver.take() {
            tokio::spawn(events::run_pipeline(
                receiver,
                Arc::clone(&state.resolver),
                Arc::clone(&state.policies),
                Arc::clone(&state.bus),
                Arc::clone(&state.metrics),
                self.enforcer.clone(),
            ));
        }
    }
}

/// Runs `task` every `period` (first right away when `now`) until `shutdown` turns true.
fn every<F, Fut>(period: Duration, mut shutdown: watch::Receiver<bool>, now: bool, task: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let period = period.max(Duration::from_millis(10));
        let start = if now {
            tokio::time::Instant::now()
        } else {
            tokio::time::Instant::now() + period
        };
        let mut ticker = tokio::time::interval_at(start, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => task().await,
                _ = shutdown.changed() => break,
            }
        }
    });
}

/// Reloads changed policy files; logs and counts the outcome. True when new policies are in
/// force.
fn reload_policies(policies: &PolicyStore, metrics: &Metrics) -> bool {
    match policies.reload_if_changed() {
        None => false,
        Some(Ok(count)) => {
            metrics.policy_reloads.inc();
            metrics.policies.set(count as i64);
            metrics.policy_reload_failing.set(0);
            tracing::info!(policies = count, "policies reloaded");
            true
        }
        Some(Err(errors)) => {
            metrics.policy_reload_failures.inc();
            metrics.policy_reload_failing.set(1);
            tracing::error!("policy reload failed; the previous policies stay in force:\n{errors}");
            false
        }
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the token file", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("{}: the token file is empty", path.display());
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "{}: the token must be one line without spaces",
            path.display()
        );
    }
    Ok(token.to_owned())
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("METADATA_AGENT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging();
    raise_open_file_limit();
    let signals = StopSignals::watch()?;
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(path) = args.policies {
        config.policies.path = Some(path);
    }
    let listen = args.listen.unwrap_or_else(|| config.server.listen.clone());
    let listen = ListenAddress::parse(&listen)?;
    let authenticated = config.server.token_file.is_some();
    let mut agent = Agent::build(config)?;
    agent.attach_hook()?;
    let (stop, shutdown) = watch::channel(false);
    let router = agent.router();
    let server_shutdown = {
        let mut shutdown = shutdown.clone();
        async move {
            let _ = shutdown.changed().await;
        }
    };
    let server = match &listen {
        ListenAddress::Tcp(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            let bound = listener.local_addr()?;
            tracing::info!(address = %bound, authenticated, "listening on http://{bound}");
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(server_shutdown)
                    .await
            })
        }
        ListenAddress::Unix(path) => {
            let listener = bind_unix(path)?;
            tracing::info!(socket = %path.display(), authenticated, "listening on unix:{}", path.display());
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(server_shutdown)
                    .await
            })
        }
    };
    agent.start_background(shutdown);

    signals.received().await;
    tracing::info!("shutting down");
    agent.state.bus.close();
    let _ = stop.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!("the server stopped with an error: {error}"),
        Ok(Err(error)) => tracing::error!("the server task failed: {error}"),
        Err(_) => tracing::warn!(
            "open requests did not finish within {} s; exiting anyway",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    agent.detach_hook();
    if let ListenAddress::Unix(path) = &listen {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, watched from before the agent listens, so that a signal sent as soon
/// as it answers still stops it gracefully.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn watch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    async fn received(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Binds a Unix socket readable and writable by the agent's user only. A stale socket left by
/// a previous run is replaced; one that still answers belongs to a running agent.
fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "cannot listen on unix:{}: the path exists and is not a socket",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "cannot listen on unix:{}: another process is serving it",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    // The umask makes the socket 0600 from its creation, leaving no window for other users.
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    let previous = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let listener = bound.with_context(|| format!("cannot listen on unix:{}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to mode 0600", path.display()))?;
    Ok(listener)
}

/// Raises the soft limit on open files to the hard limit, as servers do: besides its
/// connections, the agent keeps a proc directory open for each answer it keeps (up to a quarter
/// of the limit).
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if let Err(error) = setrlimit(Resource::Nofile, raised) {
        tracing::warn!(%error, soft = ?limit.current, "cannot raise the open-file limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            ListenAddress::parse("127.0.0.1:9820").unwrap(),
            ListenAddress::Tcp("127.0.0.1:9820".parse().unwrap())
        );
        assert_eq!(
            ListenAddress::parse("[::1]:80").unwrap(),
            ListenAddress::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            ListenAddress::parse("unix:/run/a.sock").unwrap(),
            ListenAddress::Unix("/run/a.sock".into())
        );
        assert_eq!(
            ListenAddress::parse("unix:///run/a.sock").unwrap(),
            ListenAddress::Unix("/run/a.sock".into())
        );
        for bad in ["localhost", "9820", "unix:", "127.0.0.1"] {
            let error = ListenAddress::parse(bad).unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn token_files_must_hold_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc.def_ghi\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "abc.def_ghi");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_token(&path).unwrap_err().to_string().contains("empty"));
        std::fs::write(&path, "two words").unwrap();
        assert!(read_token(&path).is_err());
        let missing = dir.path().join("missing");
        assert!(
            read_token(&missing)
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }
}
