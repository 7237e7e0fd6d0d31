//! `metadata-agent run`: the daemon. [`startup`] builds the [`Agent`] from the configuration,
//! [`serve`] serves the HTTP API, `background` starts the background work (node refresh, cache
//! sweep, policy reload, pre-resolution, the event pipeline); the daemon runs until SIGINT or
//! SIGTERM and then stops cleanly, detaching the hook.

mod background;
pub mod privileges;
pub mod serve;
pub mod startup;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::Config;
pub use serve::ListenAddress;
pub use startup::Agent;

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
    /// Log format: `text` or `json` (one object per line). The level comes from
    /// `METADATA_AGENT_LOG`, else `RUST_LOG`, else `info`.
    #[arg(
        long,
        value_name = "FORMAT",
        env = "METADATA_AGENT_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: startup::LogFormat,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    startup::init_logging(args.log_format);
    startup::raise_open_file_limit();
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
    if let ListenAddress::Tcp(address) = &listen
        && !address.ip().is_loopback()
        && !authenticated
        && !config.server.allow_unauthenticated
    {
        anyhow::bail!(
            "refusing to serve {address} without a token: anyone who can reach it would read \
             every process's labels; set server.tokenFile, listen on loopback or a unix: \
             socket, or set server.allowUnauthenticated: true"
        );
    }
    let allowed_hosts = config.server.allowed_hosts.clone();
    let limits = serve::ConnectionLimits {
        max_connections: config.server.max_connections,
        header_read_timeout: config.server.header_read_timeout,
    };
    let ops_listen = match &config.server.ops_listen {
        Some(text) => Some(ListenAddress::parse(text).context("server.opsListen")?),
        None => None,
    };
    let same_port = |a: &ListenAddress| match (a, &listen) {
        (ListenAddress::Tcp(a), ListenAddress::Tcp(b)) => a.port() != 0 && a == b,
        (a, b) => a == b,
    };
    if ops_listen.as_ref().is_some_and(same_port) {
        anyhow::bail!(
            "server.opsListen is the API's own listen address ({}): give it another",
            config.server.ops_listen.as_deref().unwrap_or_default()
        );
    }
    let mut agent = Agent::build(config)?;
    let ops_router = ops_listen
        .as_ref()
        .map(|_| agent.ops_router())
        .transpose()?;
    agent.attach_hook()?;
    let (stop, shutdown) = watch::channel(false);
    let server = serve::serve(
        &listen,
        agent.router(),
        shutdown.clone(),
        authenticated,
        &allowed_hosts,
        limits,
    )
    .await?;
    let ops_server = match (&ops_listen, ops_router) {
        (Some(address), Some(router)) => {
            Some(serve::serve_ops(address, router, shutdown.clone(), limits).await?)
        }
        _ => None,
    };
    // Started: the hook is attached and the listener bound; what is left needs no more than
    // reading other users' processes.
    match privileges::drop_unneeded() {
        Ok(kept) => tracing::info!(?kept, "dropped every other capability"),
        Err(error) => tracing::warn!("cannot drop capabilities: {error}"),
    }
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
    if let Some(ops_server) = ops_server {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, ops_server).await;
    }
    agent.detach_hook();
    for address in std::iter::once(&listen).chain(ops_listen.as_ref()) {
        if let ListenAddress::Unix(path) = address {
            let _ = std::fs::remove_file(path);
        }
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
