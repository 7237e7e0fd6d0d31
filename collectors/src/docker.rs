//! The `docker` collector (container scope): `docker:*` labels from the Docker Engine API over
//! its Unix socket (`GET /containers/<id>/json`), for processes whose cgroups name a Docker
//! container.
//!
//! The daemon caches the labels by container id; [`DockerCollector::invalidations`] follows the
//! engine's event stream so that a container that dies, is removed or renamed is collected
//! again. Every request runs under the collector's deadline, so a socket that accepts but never
//! answers costs one lookup its deadline, nothing more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, broadcast};

use crate::builtin::Builtin;
use crate::cgroup::{ContainerIdentity, Runtime, parse_cgroup_file};
use crate::collector::{
    CollectError, Collected, Collector, Invalidation, KeySpec, Prospect, Scope, Subject, Workload,
};
use crate::config::{DEFAULT_TIMEOUT, Enabled, duration, section};
use crate::error::BoxError;
use crate::host::HostRoots;
use crate::redaction::{Redactor, default_redact_patterns};
use labels::{LabelSet, Trust, escape_bytes, escape_key};

/// Where the Docker socket is unless configured.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// `collectors.docker`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DockerConfig {
    /// `auto` (default), `true` or `false`.
    pub enabled: Enabled,
    /// Deadline of one container inspection (default 500ms).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Docker socket: a path or a `unix://` URL (default `/var/run/docker.sock`).
    pub socket_path: String,
    /// Export `docker:env:*` labels (default false): containers' environments often hold
    /// credentials.
    pub extract_envs: bool,
    /// Keys of `docker:env:*` whose values are replaced by `<redacted>` (default: the same
    /// patterns as procfs); other values have secret-shaped parts hidden.
    pub redact_env_patterns: Vec<String>,
    /// Keys shown even though they match a pattern.
    pub allow_envs: Vec<String>,
    /// Most `docker:env:*` labels of one container (default 256).
    pub max_env_labels: usize,
    /// Flags whose value `docker:cmdline` hides (default as procfs's `secretFlags`).
    pub secret_flags: Vec<String>,
    /// Key globs (`*` wildcard) whose labels are kept; empty (the default): all.
    pub include_keys: Vec<String>,
    /// Key globs whose labels are left out (default none).
    pub exclude_keys: Vec<String>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            enabled: Enabled::Auto,
            timeout: DEFAULT_TIMEOUT,
            socket_path: DEFAULT_SOCKET.to_owned(),
            extract_envs: false,
            redact_env_patterns: default_redact_patterns(),
            allow_envs: Vec::new(),
            max_env_labels: 256,
            secret_flags: crate::redaction::default_secret_flags(),
            include_keys: Vec::new(),
            exclude_keys: Vec::new(),
        }
    }
}

section!(DockerConfig);

/// Every key this collector can emit.
pub const LABEL_KEYS: &[KeySpec] = crate::key_specs![Trust::Runtime;
    "docker:id",
    "docker:name",
    "docker:cmdline",
    "docker:env:<KEY>",
    "docker:label:<k>",
    "docker:image:name",
    "docker:image:hash",
    "docker:network:hostname",
    "docker:network:mode",
    "docker:port-binding",
];

/// Container events after which cached labels are stale.
const STALE_AFTER: &[&str] = &["die", "destroy", "rename", "update"];

/// `docker:*` labels from the Docker Engine.
pub struct DockerCollector {
    /// To read the cgroups of a container's own process.
    roots: HostRoots,
    socket: PathBuf,
    enabled: Enabled,
    timeout: Duration,
    disclosure: Disclosure,
    /// Connected and version-negotiated once, on first use.
    client: OnceCell<Docker>,
    invalidations: broadcast::Sender<Invalidation>,
    /// Containers created and not yet destroyed, described right after their `create` event:
    /// their labels are known before they start (while starting, the engine answers no
    /// inspection until the container's process runs).
    created: Arc<Mutex<Created>>,
}

/// Labels of containers described at their `create` event, oldest first.
#[derive(Default)]
struct Created {
    labels: HashMap<String, Prospect>,
    order: std::collections::VecDeque<String>,
}

/// Created containers remembered at most.
const MAX_CREATED: usize = 1024;

impl Created {
    fn insert(&mut self, id: String, labels: Prospect) {
        if self.labels.insert(id.clone(), labels).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_CREATED {
            if let Some(oldest) = self.order.pop_front() {
                self.labels.remove(&oldest);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if self.labels.remove(id).is_some() {
            self.order.retain(|known| known != id);
        }
    }
}

impl DockerCollector {
    /// A collector for the socket of `config` (a path or a `unix://` URL); its timeout bounds
    /// every request to the engine.
    pub fn new(config: &DockerConfig, roots: &HostRoots) -> Self {
        let socket = config.socket_path.as_str();
        let socket = socket.strip_prefix("unix://").unwrap_or(socket);
        Self {
            roots: roots.clone(),
            socket: PathBuf::from(socket),
            enabled: config.enabled,
            timeout: config.timeout,
            disclosure: Disclosure::of(config),
            client: OnceCell::new(),
            invalidations: broadcast::channel(1024).0,
            created: Arc::new(Mutex::new(Created::default())),
        }
    }

    /// The socket this collector talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn client(&self) -> Result<&Docker, CollectError> {
        self.client
            .get_or_try_init(|| connect(&self.socket, self.timeout))
            .await
    }

    fn missing_socket(&self) -> CollectError {
        let message = format!("no Docker socket at {}", self.socket.display());
        match self.enabled {
            Enabled::Always => CollectError::failed(message),
            _ => CollectError::unavailable(message),
        }
    }

    /// Container `id` as the engine describes it, or `None` when the engine does not know it.
    async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, CollectError> {
        let client = self.client().await?;
        match client.inspect_container(id, None).await {
            Ok(container) => Ok(Some(container)),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(error) => Err(CollectError::failed(format!(
                "Docker at {}: inspecting container {id}",
                self.socket.display()
            ))
            .because(error)),
        }
    }
}

async fn connect(socket: &Path, timeout: Duration) -> Result<Docker, CollectError> {
    let failed = |error: DockerError| {
        CollectError::failed(format!("Docker at {}", socket.display())).because(error)
    };
    let path = socket.to_str().ok_or_else(|| {
        CollectError::failed(format!("socket path {} is not UTF-8", socket.display()))
    })?;
    let seconds = timeout.as_secs().max(1);
    let client =
        Docker::connect_with_unix(path, seconds, bollard::API_DEFAULT_VERSION).map_err(failed)?;
    // Older engines reject a client newer than they are: agree on the highest common version.
    client.negotiate_version().await.map_err(failed)
}

impl DockerCollector {
    /// Whether Docker vouches that the process named by `container` is in the container it
    /// inspected: the container's own process (`State.Pid`) must be in the same cgroup. A
    /// container id in a cgroup that Docker did not make proves nothing by itself. `Ok(Some)`:
    /// not yet known (the container is starting, or stopped), why.
    fn confirm_membership(
        &self,
        container: &ContainerIdentity,
        inspected: &ContainerInspectResponse,
    ) -> Result<Option<String>, CollectError> {
        let not_confirmed = |why: String| {
            CollectError::NotApplicable(format!(
                "Docker does not confirm the process is in container {}: {why}",
                container.id
            ))
        };
        let Some(pid) = inspected
            .state
            .as_ref()
            .and_then(|state| state.pid)
            .filter(|&pid| pid > 0)
        else {
            return Ok(Some(format!(
                "Docker reports no process for container {} (starting or stopped): no labels \
                 until it does",
                container.id
            )));
        };
        let theirs = std::fs::read(self.roots.proc_file(pid as u32, "cgroup")).map_err(|e| {
            not_confirmed(format!("cannot read the cgroups of its process {pid}: {e}"))
        })?;
        match parse_cgroup_file(&String::from_utf8_lossy(&theirs)).identity() {
            Some(theirs) if theirs.same_cgroup(container) => Ok(None),
            Some(theirs) => Err(not_confirmed(format!(
                "Docker places container {} in cgroup {}, and this process is in {}",
                container.id, theirs.cgroup, container.cgroup
            ))),
            None => Err(not_confirmed(format!(
                "its process {pid} is in no container cgroup"
            ))),
        }
    }
}

impl Builtin for DockerCollector {
    type Config = DockerConfig;

    fn build(config: &DockerConfig, roots: &HostRoots) -> Result<Self, BoxError> {
        Ok(Self::new(config, roots))
    }
}

#[async_trait]
impl Collector for DockerCollector {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn scope(&self) -> Scope {
        Scope::Container
    }

    fn label_keys(&self) -> &'static [KeySpec] {
        LABEL_KEYS
    }

    async fn collect(&self, subject: &Subject) -> Result<Collected, CollectError> {
        let Some(container) = &subject.container else {
            return Err(CollectError::NotApplicable(subject.not_in_container()));
        };
        // The kubelet's cgroupfs layout does not name the runtime: it may be Docker
        // (cri-dockerd), so ask; any other named runtime is not Docker's.
        if !matches!(container.runtime, Runtime::Docker | Runtime::Unknown) {
            return Err(CollectError::NotApplicable(format!(
                "container {} is run by {}, not Docker",
                container.id, container.runtime
            )));
        }
        if !self.socket.exists() {
            return Err(self.missing_socket());
        }
        let Some(inspected) = self.inspect(&container.id).await? else {
            return Err(CollectError::NotApplicable(format!(
                "Docker does not know container {}",
                container.id
            )));
        };
        if let Some(not_yet) = self.confirm_membership(container, &inspected)? {
            // Docker has not recorded the container's process yet (it is starting): no labels
            // now, and, being partial, nothing kept: the next lookup asks again.
            return Ok(Collected {
                partial: Some(not_yet),
                ..Default::default()
            });
        }
        Ok(Collected::complete(labels_of(&inspected, &self.disclosure)))
    }

    /// A Docker container being started (its cgroup made, its process not yet running) was
    /// described by its `create` event (its id, name, image and labels); otherwise the engine
    /// is asked (which answers once the container's process runs).
    async fn prospective(
        &self,
        container: &ContainerIdentity,
    ) -> Result<Option<Prospect>, CollectError> {
        if self.enabled == Enabled::Never
            || container.runtime != Runtime::Docker
            || !self.socket.exists()
        {
            return Ok(None);
        }
        let described = self
            .created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .labels
            .get(&container.id)
            .cloned();
        if described.is_some() {
            return Ok(described);
        }
        Ok(self
            .inspect(&container.id)
            .await?
            .map(|inspected| Prospect {
                labels: labels_of(&inspected, &self.disclosure),
                keys: vec!["docker:<key>"],
                except: Vec::new(),
            }))
    }

    async fn workloads(&self) -> Result<Vec<Workload>, CollectError> {
        if self.enabled == Enabled::Never || !self.socket.exists() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let listed = tokio::time::timeout(
            self.timeout,
            client.list_containers(Some(ListContainersOptions::default())),
        )
        .await
        .map_err(|_| {
            CollectError::failed(format!(
                "Docker at {}: listing containers took longer than {} ms",
                self.socket.display(),
                self.timeout.as_millis()
            ))
        })?
        .map_err(|e| {
            CollectError::failed(format!(
                "Docker at {}: listing containers",
                self.socket.display()
            ))
            .because(e)
        })?;
        let mut endpoints = Vec::new();
        for summary in listed {
            let Some(id) = summary.id else { continue };
            let Some(container) = self.inspect(&id).await? else {
                continue;
            };
            let networks = container
                .network_settings
                .as_ref()
                .and_then(|settings| settings.networks.as_ref());
            let addresses: Vec<std::net::IpAddr> = networks
                .into_iter()
                .flat_map(|networks| networks.values())
                .flat_map(|network| [&network.ip_address, &network.global_ipv6_address])
                .filter_map(|address| address.as_deref()?.parse().ok())
                .collect();
            if addresses.is_empty() {
                continue;
            }
            let mut labels = labels_of(&container, &self.disclosure);
            labels.insert("process:container:id", id);
            endpoints.push(Workload { addresses, labels });
        }
        Ok(endpoints)
    }

    fn invalidations(&self) -> Option<broadcast::Receiver<Invalidation>> {
        if self.enabled == Enabled::Never {
            return None;
        }
        let receiver = self.invalidations.subscribe();
        tokio::spawn(follow_events(
            self.socket.clone(),
            self.timeout,
            self.invalidations.clone(),
            Arc::clone(&self.created),
        ));
        Some(receiver)
    }
}

/// Follows the engine's container events for as long as anyone listens, reconnecting with a
/// growing pause. After a reconnect every entry is invalidated: events may have been missed.
async fn follow_events(
    socket: PathBuf,
    timeout: Duration,
    sender: broadcast::Sender<Invalidation>,
    created: Arc<Mutex<Created>>,
) {
    let mut pause = Duration::from_millis(500);
    let mut reconnecting = false;
    while sender.receiver_count() > 0 {
        if socket.exists()
            && let Ok(client) = connect(&socket, timeout).await
        {
            if reconnecting {
                let _ = sender.send(Invalidation::AllContainers);
            }
            let filters = HashMap::from([("type".to_owned(), vec!["container".to_owned()])]);
            let mut events = client.events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }));
            pause = Duration::from_millis(500);
            while let Some(Ok(event)) = events.next().await {
                let action = event.action.as_deref().unwrap_or_default();
                let Some(actor) = event.actor else {
                    continue;
                };
                let Some(id) = actor.id else {
                    continue;
                };
                match action {
                    // Described now, before its start (while starting, the engine answers no
                    // inspection of it).
                    "create" => {
                        let attributes = actor.attributes.unwrap_or_default();
                        let prospect = described_at_creation(&id, &attributes);
                        created
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(id.clone(), prospect);
                    }
                    "destroy" => created
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id),
                    _ => {}
                }
                if STALE_AFTER.contains(&action) {
                    let _ = sender.send(Invalidation::Container(id));
                }
            }
            reconnecting = true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// What a container's `create` event tells: the engine puts the container's labels in the
/// event's attributes, then its `name` and `image` over any label of those names (so
/// `docker:label:name` and `docker:label:image` are not settled by it).
fn described_at_creation(id: &str, attributes: &HashMap<String, String>) -> Prospect {
    let mut labels = LabelSet::new();
    let mut put = |key: &str, value: &str| labels.insert(key, escape_bytes(value.as_bytes()));
    put("docker:id", id);
    for (key, value) in attributes {
        match key.as_str() {
            "name" => put("docker:name", value),
            "image" => put("docker:image:name", value),
            _ => put(&format!("docker:label:{}", escape_key(key)), value),
        }
    }
    Prospect {
        labels,
        keys: vec![
            "docker:id",
            "docker:name",
            "docker:image:name",
            "docker:label:<k>",
        ],
        except: vec![
            "docker:label:name".to_owned(),
            "docker:label:image".to_owned(),
        ],
    }
}

/// The `docker:*` labels of one inspected container.
/// What of a container's description its labels disclose: its environment only when asked for
/// (and then without secrets), its command line without the values of secret flags.
#[derive(Debug, Clone)]
pub struct Disclosure {
    /// Export `docker:env:*`.
    pub extract_envs: bool,
    /// Which env values are hidden.
    pub redactor: Redactor,
    /// Most env labels of one container.
    pub max_env_labels: usize,
    /// Flags whose values the command line hides.
    pub secret_flags: Vec<String>,
}

impl Disclosure {
    /// The disclosure `config` asks for.
    pub fn of(config: &DockerConfig) -> Self {
        Self {
            extract_envs: config.extract_envs,
            redactor: Redactor::new(&config.redact_env_patterns, &config.allow_envs),
            max_env_labels: config.max_env_labels,
            secret_flags: config.secret_flags.clone(),
        }
    }
}

pub fn labels_of(container: &ContainerInspectResponse, disclosure: &Disclosure) -> LabelSet {
    let mut labels = LabelSet::new();
    let mut put = |key: &str, value: &str| labels.insert(key, escape_bytes(value.as_bytes()));
    if let Some(id) = &container.id {
        put("docker:id", id);
    }
    if let Some(name) = &container.name {
        put("docker:name", name.strip_prefix('/').unwrap_or(name));
    }
    let command: Vec<&str> = container
        .path
        .iter()
        .chain(container.args.iter().flatten())
        .map(String::as_str)
        .filter(|part| !part.is_empty())
        .collect();
    let command = crate::redaction::redact_args(&command, &disclosure.secret_flags);
    put("docker:cmdline", &command.join(" "));
    if let Some(config) = &container.config {
        let envs = config
            .env
            .iter()
            .flatten()
            .filter(|_| disclosure.extract_envs);
        for entry in envs.take(disclosure.max_env_labels) {
            let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
            let key = key.to_ascii_uppercase();
            let value = disclosure.redactor.env_value(&key, value);
            put(
                &format!("docker:env:{}", escape_bytes(key.as_bytes())),
                &value,
            );
        }
        let mut container_labels: Vec<(&String, &String)> =
            config.labels.iter().flatten().collect();
        container_labels.sort();
        for (key, value) in container_labels {
            put(&format!("docker:label:{}", escape_key(key)), value);
        }
        if let Some(image) = &config.image {
            put("docker:image:name", image);
        }
        if let Some(hostname) = &config.hostname {
            put("docker:network:hostname", hostname);
        }
    }
    if let Some(image) = &container.image {
        put("docker:image:hash", image);
    }
    if let Some(host) = &container.host_config {
        if let Some(mode) = &host.network_mode {
            put("docker:network:mode", mode);
        }
        let mut ports: Vec<&String> = host
            .port_bindings
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .collect();
        ports.sort();
        for port in ports {
            put("docker:port-binding", port);
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redaction::REDACTED;

    #[test]
    fn a_create_event_settles_the_id_name_image_and_labels_it_carries() {
        let attributes = HashMap::from([
            ("name".to_owned(), "web".to_owned()),
            ("image".to_owned(), "nginx:1.27".to_owned()),
            ("tier".to_owned(), "front".to_owned()),
        ]);
        let prospect = described_at_creation("abc", &attributes);
        assert_eq!(prospect.labels.get("docker:name"), ["web"]);
        assert_eq!(prospect.labels.get("docker:image:name"), ["nginx:1.27"]);
        assert_eq!(prospect.labels.get("docker:label:tier"), ["front"]);
        assert_eq!(prospect.labels.get("docker:id"), ["abc"]);
        assert!(
            prospect.settles("docker:label:other"),
            "absent, and known to be"
        );
        assert!(prospect.settles("docker:name"));
        // The engine writes its own `name` and `image` over labels of those names.
        assert!(!prospect.settles("docker:label:name"));
        assert!(!prospect.settles("docker:label:image"));
        // Not in the event.
        assert!(!prospect.settles("docker:image:hash"));
        assert!(!prospect.settles("docker:env:PATH"));
        assert!(!prospect.settles("k8s:label:app"));
    }
    use std::sync::Arc;

    fn inspect_fixture() -> ContainerInspectResponse {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/docker/nginx-inspect.json"
        ))
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn the_reference_container_gives_the_reference_labels() {
        let disclosure = Disclosure {
            extract_envs: true,
            redactor: Redactor::new(&["*TOKEN*".to_owned()], &[]),
            ..Disclosure::of(&DockerConfig::default())
        };
        let labels = labels_of(&inspect_fixture(), &disclosure);
        let expected = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/docker/nginx-expected.txt"
        ))
        .unwrap();
        assert_eq!(labels.to_text(), expected);

        let mut container = inspect_fixture();
        let config = container.config.as_mut().unwrap();
        config
            .env
            .as_mut()
            .unwrap()
            .push("api_token=abc".to_owned());
        config.env.as_mut().unwrap().push("EMPTY=".to_owned());
        config
            .labels
            .as_mut()
            .unwrap()
            .insert("odd key".to_owned(), "line\nbreak".to_owned());
        config
            .env
            .as_mut()
            .unwrap()
            .push("DATABASE_URL=postgres://u:secret@db/x".to_owned());
        container.args = Some(vec!["--password=hunter2".to_owned()]);
        let labels = labels_of(&container, &disclosure);
        assert_eq!(labels.get("docker:env:API_TOKEN"), [REDACTED]);
        assert_eq!(
            labels.get("docker:env:DATABASE_URL"),
            ["postgres://u:<redacted>@db/x"]
        );
        assert!(
            labels.get("docker:cmdline")[0].ends_with("--password=<redacted>"),
            "{labels}"
        );
        // By default, no environment at all.
        let labels = labels_of(&container, &Disclosure::of(&DockerConfig::default()));
        assert!(!labels.to_text().contains("docker:env:"), "{labels}");
        assert!(!labels.contains_key("docker:env:EMPTY"));
        assert_eq!(labels.get("docker:label:odd\\x20key"), ["line\\x0abreak"]);
    }

    #[tokio::test]
    async fn outside_docker_the_collector_says_why_without_touching_the_socket() {
        let config = DockerConfig {
            socket_path: "unix:///nonexistent/docker.sock".to_owned(),
            timeout: Duration::from_millis(200),
            ..Default::default()
        };
        let collector = DockerCollector::new(&config, &HostRoots::default());
        assert_eq!(collector.socket(), Path::new("/nonexistent/docker.sock"));
        let none = collector.collect(&Subject::default()).await.unwrap_err();
        assert!(matches!(none, CollectError::NotApplicable(_)), "{none:?}");

        let mut subject = Subject {
            container: Some(crate::cgroup::ContainerIdentity {
                id: "a".repeat(64),
                runtime: Runtime::Containerd,
                pod_uid: None,
                cgroup: String::new(),
                hierarchy: String::new(),
            }),
            ..Default::default()
        };
        let other = collector.collect(&subject).await.unwrap_err();
        assert!(other.to_string().contains("containerd"), "{other}");

        subject.container.as_mut().unwrap().runtime = Runtime::Docker;
        let missing = collector.collect(&subject).await.unwrap_err();
        assert!(
            matches!(&missing, CollectError::Unavailable { reason, cause: None }
                if reason == "no Docker socket at /nonexistent/docker.sock"),
            "{missing:?}"
        );
        let always = DockerCollector::new(
            &DockerConfig {
                enabled: Enabled::Always,
                ..config
            },
            &HostRoots::default(),
        );
        assert!(matches!(
            always.collect(&subject).await.unwrap_err(),
            CollectError::Failed { .. }
        ));
    }

    #[tokio::test]
    async fn a_socket_that_never_answers_fails_within_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        // Accepts connections and never writes a byte.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let config = DockerConfig {
            socket_path: path.to_str().unwrap().to_owned(),
            timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let collector = Arc::new(DockerCollector::new(&config, &HostRoots::default()));
        let mut registry = crate::Registry::new();
        registry.register(collector, true, Duration::from_millis(300));
        let subject = Subject {
            process: None,
            container: Some(crate::cgroup::ContainerIdentity {
                id: "b".repeat(64),
                runtime: Runtime::Docker,
                pod_uid: None,
                cgroup: String::new(),
                hierarchy: String::new(),
            }),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let reports = registry.collect(Some(Scope::Container), &subject).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(reports[0].status.state(), "timed_out");
        held.abort();
    }
}
