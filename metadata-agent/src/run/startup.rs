//! Starting the agent: the process's logging and open-file limit, and the [`Agent`] built from
//! the configuration (collectors, caches, policies, metrics, the token), with the kernel hook
//! attached as `hook.enabled` says.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use collectors::HostRoots;
use collectors::config::Enabled;
use kernel_hook::{EventReader, HookEvent};
use selectors::PolicyStore;
use tokio::sync::mpsc;

use crate::api::{self, AppState, HookHealth};
use crate::config::{Config, HookMode};
use crate::enforcement::{Enforcer, SharedEnforcer};
use crate::events::{self, EventBus};
use crate::metrics::Metrics;
use crate::resolver::{Resolver, ResolverLimits};

/// A running agent's parts, before it serves: tests build one to drive it directly.
pub struct Agent {
    /// What the API handlers share.
    pub state: Arc<AppState>,
    /// Where hook events go (the kernel hook, or a test).
    pub hook_events: mpsc::Sender<HookEvent>,
    pub(super) hook_receiver: Option<mpsc::Receiver<HookEvent>>,
    pub(super) hook_reader: Option<EventReader>,
    /// The attached hook, if any.
    pub enforcer: SharedEnforcer,
    pub(super) config: Config,
}

impl Agent {
    /// Builds the agent from `config`: collectors, caches, policies, metrics. Fails when the
    /// policies or the token file cannot be loaded.
    pub fn build(config: Config) -> anyhow::Result<Self> {
        let roots = HostRoots::resolve(&config.host);
        collectors::cgroupns::adopt_host_view(&roots).map_err(anyhow::Error::msg)?;
        if let Some(file) = &config.events.file {
            file.check().map_err(anyhow::Error::msg)?;
        }
        if let Some(otlp) = &config.events.otlp {
            otlp.check().map_err(anyhow::Error::msg)?;
        }
        let registry = collectors::build_registry(&config.collectors, &roots)?;
        // Latency buckets reach past the longest wait: a collector's deadline, or a request's
        // head.
        let longest = registry
            .collectors()
            .iter()
            .map(|registered| registered.timeout)
            .chain([config.server.header_read_timeout])
            .max()
            .unwrap_or_default();
        let metrics = Arc::new(Metrics::with_longest_wait(longest));
        let limits = ResolverLimits::from(&config.resolver);
        let resolver = Arc::new(
            Resolver::new(roots, registry, limits, Arc::clone(&metrics))
                .with_container_placement(config.containers.clone()),
        );
        let default_action = config.policies.default_action;
        let policies = match &config.policies.path {
            Some(path) => {
                let catalog = resolver.key_catalog();
                PolicyStore::load_checked(vec![path.clone()], default_action, catalog)
                    .map_err(|errors| anyhow::anyhow!("cannot load the policies:\n{errors}"))?
            }
            None => PolicyStore::empty(default_action),
        };
        for warning in policies.warnings() {
            tracing::warn!("{warning}");
        }
        let policies = Arc::new(policies);
        metrics.policies.set(policies.status().policies as i64);
        metrics.policy_reloads.inc_by(policies.status().reloads);
        let token = match &config.server.token_file {
            Some(path) => Some(crate::api::token::TokenFile::open(path)?),
            None => None,
        };
        let bus = Arc::new(
            EventBus::with_limits(
                config.events.subscriber_buffer,
                config.events.subscriber_buffer_bytes,
                config.events.max_subscribers,
                Arc::clone(&metrics),
            )
            .with_history(config.events.history),
        );
        let (hook_events, hook_receiver) = mpsc::channel(events::PIPELINE_QUEUE);
        let destinations = Arc::new(crate::destinations::Destinations::new(Arc::clone(
            &resolver,
        )));
        let state = Arc::new(AppState {
            resolver,
            policies,
            destinations,
            bus,
            metrics,
            token,
            hook: Mutex::new(HookHealth {
                attached: false,
                mode: None,
                reason: Some("not attached yet".to_owned()),
            }),
            started: Instant::now(),
            limits: crate::api::ApiLimits::of(&config.server),
        });
        Ok(Self {
            state,
            hook_events,
            hook_receiver: Some(hook_receiver),
            hook_reader: None,
            enforcer: None,
            config,
        })
    }

    /// Attaches the kernel hook as `hook.enabled` says: `auto` warns and goes on without it,
    /// `true` fails, `false` does not try. In enforce mode the hook is mandatory: failing to
    /// attach it stops the start, naming why.
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
        let enforce = config.mode == HookMode::Enforce;
        if config.enabled == Enabled::Never && !enforce {
            set_health(
                false,
                None,
                Some("disabled in the configuration (hook.enabled: false)".to_owned()),
            );
            return Ok(());
        }
        let sys = self.state.resolver.roots().sys.clone();
        let attached = config
            .cgroup_root
            .clone()
            .map_or_else(|| kernel_hook::detect_cgroup_root_under(&sys), Ok)
            .and_then(|root| {
                if config.pin {
                    kernel_hook::Hook::attach_pinned(&root, &config.pin_path)
                } else {
                    kernel_hook::Hook::attach(&root)
                        .map(|(hook, reader)| (hook, reader, kernel_hook::Attachment::Fresh))
                }
            });
        let pending = config.pending_verdict;
        let catalog = self.state.resolver.key_catalog();
        let roots = self.state.resolver.roots().clone();
        match attached.and_then(|(hook, reader, attachment)| {
            let root = hook.cgroup_root().to_owned();
            let table = hook.process_table();
            Enforcer::new(hook, enforce, pending, catalog, roots)
                .map(|e| (e, reader, root, attachment, table))
        }) {
            Ok((enforcer, reader, root, attachment, table)) => {
                self.state.resolver.use_kernel_table(Some(table));
                let mode = if enforce { "enforce" } else { "observe" };
                let adopted = attachment == kernel_hook::Attachment::Adopted;
                tracing::info!(
                    cgroup = %root.display(),
                    mode,
                    pinned = config.pin,
                    adopted,
                    "kernel hook attached"
                );
                set_health(true, Some(mode), None);
                self.enforcer = Some(Arc::new(enforcer));
                self.hook_reader = Some(reader);
                if let Some(lineage) = self.state.resolver.lineage() {
                    lineage.follow_hook_events();
                }
                Ok(())
            }
            Err(error) if config.enabled == Enabled::Auto && !enforce => {
                let reason = collectors::error_chain(&error);
                tracing::warn!("kernel hook not attached, running without it: {reason}");
                set_health(false, None, Some(reason));
                Ok(())
            }
            Err(error) if enforce => Err(anyhow::Error::new(error)
                .context("cannot attach the kernel hook, which hook.mode: enforce needs")),
            Err(error) => Err(anyhow::Error::new(error).context("cannot attach the kernel hook")),
        }
    }

    /// Detaches the kernel hook, if attached.
    pub fn detach_hook(&self) {
        if let Some(enforcer) = &self.enforcer {
            self.state.resolver.use_kernel_table(None);
            enforcer.detach();
            self.state.metrics.hook_attached.set(0);
        }
    }

    /// The HTTP API.
    pub fn router(&self) -> Router {
        api::router(Arc::clone(&self.state), self.config.server.max_body_bytes)
    }

    /// The operations listener's routes, guarded by `server.opsTokenFile` when set. Fails when
    /// that file cannot be used.
    pub fn ops_router(&self) -> anyhow::Result<Router> {
        let token = match &self.config.server.ops_token_file {
            Some(path) => Some(crate::api::token::TokenFile::open(path)?),
            None => None,
        };
        Ok(api::ops_router(Arc::clone(&self.state), token))
    }
}

/// Logs to stderr as text or JSON lines (`format`), filtered by `METADATA_AGENT_LOG`, else
/// `RUST_LOG`, else `info`.
pub(super) fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("METADATA_AGENT_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// How the log is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`, fields), for log
    /// collectors.
    Json,
}

/// Raises the soft limit on open files to the hard limit, as servers do: besides its
/// connections, the agent keeps a proc directory open for each answer it keeps (up to a quarter
/// of the limit).
pub(super) fn raise_open_file_limit() {
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
