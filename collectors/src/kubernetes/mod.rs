//! The `kubernetes` collector (container scope): `k8s:*` labels from the kubelet's `GET /pods`,
//! for processes whose cgroups name a pod.
//!
//! The pod list is cached. A lookup of a pod (or container) the cached list does not have
//! fetches the list again, once for all concurrent lookups and at most every
//! [`MIN_REFRESH_GAP`]; a background poll every `refreshInterval` notices changed pods and
//! invalidates their containers' cached labels. Pods gone from the list stay resolvable for
//! `deletedPodGrace`, so a short-lived pod keeps its identity for the events it caused.

pub mod kubelet;
pub mod labels;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, broadcast};

use crate::builtin::Builtin;
use crate::collector::{
    CollectError, Collected, Collector, Invalidation, Scope, Subject, Workload,
};
use crate::config::{Enabled, duration, section};
use crate::error::BoxError;
use crate::host::HostRoots;
use kubelet::{Credentials, KubeletClient, KubeletError, Trust};
pub use labels::LABEL_KEYS;

/// The deadline unless configured: a pod list over TLS can take a while on a busy node.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the pod list is polled unless configured.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// How long a deleted pod stays resolvable unless configured.
pub const DEFAULT_DELETED_POD_GRACE: Duration = Duration::from_secs(300);

/// `collectors.kubernetes`, with the reference's field names.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesConfig {
    /// `auto` (default), `true` or `false`.
    pub enabled: Enabled,
    /// Deadline of one lookup, and of connecting to and each request to the kubelet (default
    /// 2s).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Host or IP of the kubelet (empty, the default: `NODE_NAME` when set, else the node's
    /// hostname when it resolves, else 127.0.0.1).
    pub kubelet_host: String,
    /// Port of the kubelet (default 10250).
    pub kubelet_port: u16,
    /// PEM content or path of the kubelet's trust anchors, or of its self-signed certificate
    /// (empty, the default: the cluster CA in a pod, else the system roots).
    #[serde(rename = "kubeletCA")]
    pub kubelet_ca: String,
    /// Skip verification of the kubelet's certificate (default false).
    pub skip_kubelet_verification: bool,
    /// A bearer token, PEM cert+key content, or comma-separated paths to them (default empty:
    /// the projected service-account token in a pod, else none).
    pub credentials: String,
    /// How often the pod list is fetched in the background (default 30s).
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
    /// Annotations left out of `k8s:annotation:*` (default:
    /// `kubectl.kubernetes.io/last-applied-configuration`, which holds literal env values).
    pub drop_annotations: Vec<String>,
    /// How long a pod gone from the kubelet's list stays resolvable (default 5m).
    #[serde(with = "crate::config::duration_or_zero")]
    pub deleted_pod_grace: Duration,
    /// Key globs (`*` wildcard) whose labels are kept; empty (the default): all.
    pub include_keys: Vec<String>,
    /// Key globs whose labels are left out (default none).
    pub exclude_keys: Vec<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: Enabled::Auto,
            timeout: DEFAULT_TIMEOUT,
            kubelet_host: String::new(),
            kubelet_port: kubelet::DEFAULT_PORT,
            kubelet_ca: String::new(),
            skip_kubelet_verification: false,
            credentials: String::new(),
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            drop_annotations: labels::DEFAULT_DROPPED_ANNOTATIONS
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
            deleted_pod_grace: DEFAULT_DELETED_POD_GRACE,
            include_keys: Vec::new(),
            exclude_keys: Vec::new(),
        }
    }
}

section!(KubernetesConfig);
/// A lookup miss fetches the list again only if the last fetch is older than this.
pub const MIN_REFRESH_GAP: Duration = Duration::from_millis(500);
/// Annotation holding a static pod's UID as the kubelet computes it.
const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// Annotation the kubelet puts on the API server's copy (mirror) of a static pod.
const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
/// Annotation naming where the kubelet got a pod: `api`, or `file` and `http` for static pods.
const CONFIG_SOURCE: &str = "kubernetes.io/config.source";

/// Whether `pod` is a static pod (from a file or URL the kubelet reads, or its mirror): the
/// only pods whose config hash names them in cgroup paths.
fn is_static(pod: &Pod) -> bool {
    let Some(annotations) = pod.metadata.annotations.as_ref() else {
        return false;
    };
    annotations.contains_key(CONFIG_MIRROR)
        || annotations
            .get(CONFIG_SOURCE)
            .is_some_and(|source| source == "file" || source == "http")
}

/// A pod as last listed.
struct Known {
    pod: Arc<Pod>,
    listed: Instant,
}

#[derive(Default)]
struct PodCache {
    /// By pod UID (and, for static pods, by `kubernetes.io/config.hash`).
    pods: HashMap<String, Known>,
    fetched: Option<Instant>,
    /// Counts fetches, so that lookups waiting on one fetch do not start another.
    generation: u64,
}

impl PodCache {
    /// Makes `pod` the pod of `key`, listed at `now`; a pod it replaces that changed goes into
    /// `changed`.
    fn index(&mut self, key: &str, pod: &Arc<Pod>, now: Instant, changed: &mut Vec<Arc<Pod>>) {
        let known = Known {
            pod: Arc::clone(pod),
            listed: now,
        };
        if let Some(old) = self.pods.insert(key.to_owned(), known)
            && old.pod.metadata.resource_version != pod.metadata.resource_version
        {
            changed.push(old.pod);
        }
    }
}

/// `k8s:*` labels from the kubelet.
pub struct KubernetesCollector {
    inner: Arc<Inner>,
}

/// The collector's state, shared with its background poll.
struct Inner {
    config: KubernetesConfig,
    trust: Trust,
    client: OnceCell<KubeletClient>,
    cache: Mutex<PodCache>,
    /// Serializes fetches (single flight).
    fetching: tokio::sync::Mutex<()>,
    invalidations: broadcast::Sender<Invalidation>,
}

impl KubernetesCollector {
    /// A collector for `config`; its timeout bounds every kubelet request. Fails on an
    /// unreadable or invalid `kubeletCA`.
    pub fn new(config: &KubernetesConfig) -> Result<Self, kubelet::TrustError> {
        let trust = match config.enabled {
            // Not read when off: a stale path in a disabled section is no reason to fail.
            Enabled::Never => Trust::SystemRoots,
            _ => Trust::from_config(&config.kubelet_ca, config.skip_kubelet_verification)?,
        };
        if config.skip_kubelet_verification && config.enabled != Enabled::Never {
            static WARNED: OnceLock<()> = OnceLock::new();
            WARNED.get_or_init(|| {
                tracing::warn!(
                    "collectors.kubernetes.skipKubeletVerification is true: the kubelet's \
                     certificate is not checked, so anyone on the path can serve pod metadata"
                );
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                trust,
                client: OnceCell::new(),
                cache: Mutex::new(PodCache::default()),
                fetching: tokio::sync::Mutex::new(()),
                invalidations: broadcast::channel(1024).0,
            }),
        })
    }
}

impl Inner {
    async fn client(&self) -> &KubeletClient {
        self.client
            .get_or_init(|| async {
                let port = self.config.kubelet_port;
                let host = match self.config.kubelet_host.trim() {
                    "" => kubelet::default_host(port).await,
                    host => host.to_owned(),
                };
                KubeletClient::new(
                    &host,
                    port,
                    self.trust.clone(),
                    Credentials::parse(&self.config.credentials),
                    self.config.timeout,
                )
            })
            .await
    }

    /// The pod with UID `uid`, from the cache.
    fn cached(&self, uid: &str) -> (Option<Arc<Pod>>, u64, Option<Instant>) {
        let cache = self.cache.lock().unwrap();
        let pod = cache.pods.get(uid).map(|known| Arc::clone(&known.pod));
        (pod, cache.generation, cache.fetched)
    }

    /// Fetches the pod list unless a fetch finished since `seen` (the generation the caller
    /// looked at). Returns the pods whose content changed or that expired, for invalidation.
    async fn refresh(&self, seen: Option<u64>) -> Result<Vec<Arc<Pod>>, KubeletError> {
        let _flight = self.fetching.lock().await;
        if let Some(seen) = seen {
            let cache = self.cache.lock().unwrap();
            let recent = cache.fetched.is_some_and(|t| t.elapsed() < MIN_REFRESH_GAP);
            if cache.generation != seen || recent {
                return Ok(Vec::new());
            }
        }
        let pods = self.client().await.pods().await?;
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap();
        let mut changed = Vec::new();
        let pods: Vec<Arc<Pod>> = pods.into_iter().map(Arc::new).collect();
        for pod in &pods {
            if let Some(uid) = pod.metadata.uid.as_deref().filter(|uid| !uid.is_empty()) {
                cache.index(uid, pod, now, &mut changed);
            }
        }
        // A static pod is also found by its config hash (the UID the kubelet gives it in cgroup
        // paths), never in place of a pod indexed by that UID: any pod can carry a
        // `kubernetes.io/config.hash` annotation naming another pod's UID.
        for pod in pods.iter().filter(|pod| is_static(pod)) {
            let Some(hash) = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CONFIG_HASH))
                .filter(|hash| !hash.is_empty())
            else {
                continue;
            };
            let taken = cache
                .pods
                .get(hash)
                .is_some_and(|known| known.pod.metadata.uid.as_deref() == Some(hash.as_str()));
            if !taken {
                cache.index(hash, pod, now, &mut changed);
            }
        }
        let grace = self.config.deleted_pod_grace;
        cache.pods.retain(|_, known| {
            let keep = now.duration_since(known.listed) <= grace;
            if !keep {
                changed.push(Arc::clone(&known.pod));
            }
            keep
        });
        cache.fetched = Some(now);
        cache.generation += 1;
        Ok(changed)
    }

    fn kubelet_error(&self, error: KubeletError) -> CollectError {
        match error {
            KubeletError::Unreachable(message) if self.config.enabled == Enabled::Auto => {
                CollectError::unavailable(message)
            }
            KubeletError::Unreachable(message)
            | KubeletError::TimedOut(message)
            | KubeletError::Failed(message) => CollectError::failed(message),
        }
    }
}

impl Builtin for KubernetesCollector {
    type Config = KubernetesConfig;

    fn build(config: &KubernetesConfig, _roots: &HostRoots) -> Result<Self, BoxError> {
        let config = config.in_cluster(
            |name| std::env::var(name).ok(),
            Path::new(SERVICE_ACCOUNT_DIR),
        );
        Ok(Self::new(&config)?)
    }
}

/// Where Kubernetes mounts a pod's service account: `token`, `ca.crt`, `namespace`.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl KubernetesConfig {
    /// This configuration with the in-cluster defaults for what it leaves empty, when the agent
    /// runs in a pod (`KUBERNETES_SERVICE_HOST` set and a service-account token mounted in
    /// `service_account`): the kubelet host from `NODE_NAME` (the downward API's
    /// `spec.nodeName`), the projected service-account token as credentials (read on every
    /// request, so its rotation is followed) and the cluster CA as `kubeletCA`. Outside a pod,
    /// only the kubelet host follows `NODE_NAME`. Settings given in the file always win.
    pub fn in_cluster(&self, env: impl Fn(&str) -> Option<String>, service_account: &Path) -> Self {
        let mut config = self.clone();
        let set = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        if config.kubelet_host.trim().is_empty()
            && let Some(node) = set("NODE_NAME")
        {
            config.kubelet_host = node.trim().to_owned();
        }
        let token = service_account.join("token");
        if set("KUBERNETES_SERVICE_HOST").is_none() || !token.is_file() {
            return config;
        }
        if config.credentials.trim().is_empty() {
            config.credentials = token.display().to_string();
        }
        let ca = service_account.join("ca.crt");
        if config.kubelet_ca.trim().is_empty() && !config.skip_kubelet_verification && ca.is_file()
        {
            config.kubelet_ca = ca.display().to_string();
        }
        config
    }
}

#[async_trait]
impl Collector for KubernetesCollector {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn scope(&self) -> Scope {
        Scope::Container
    }

    fn label_keys(&self) -> &'static [crate::KeySpec] {
        LABEL_KEYS
    }

    async fn collect(&self, subject: &Subject) -> Result<Collected, CollectError> {
        let Some(container) = &subject.container else {
            return Err(CollectError::NotApplicable(subject.not_in_container()));
        };
        let Some(uid) = &container.pod_uid else {
            return Err(CollectError::NotApplicable(format!(
                "container {} is not in a Kubernetes pod (its cgroup path names no pod)",
                container.id
            )));
        };
        let inner = &self.inner;
        let (mut pod, generation, _) = inner.cached(uid);
        let found = |pod: &Option<Arc<Pod>>| {
            pod.as_ref()
                .is_some_and(|pod| labels::find_status(pod, &container.id).is_some())
        };
        if !found(&pod) {
            // Unknown pod or container: the list may predate it.
            inner
                .refresh(Some(generation))
                .await
                .map_err(|e| inner.kubelet_error(e))?;
            pod = inner.cached(uid).0;
        }
        let Some(pod) = pod else {
            let base = inner.client().await.base().to_owned();
            return Err(CollectError::failed(format!(
                "the kubelet at {base} lists no pod with UID {uid} (container {})",
                container.id
            )));
        };
        // The pod must list the container: a pod UID in a cgroup path is not enough to hand out
        // the pod's identity. Partial (so not cached): the kubelet's status may lag a container
        // that just started, and the next lookup asks again.
        let Some(status) = labels::find_status(&pod, &container.id) else {
            return Ok(Collected {
                partial: Some(format!(
                    "pod {uid} does not list container {} (yet): no pod labels until it does",
                    container.id
                )),
                ..Default::default()
            });
        };
        Ok(Collected::complete(labels::labels_of(
            &pod,
            &container.id,
            Some(status),
            &inner.config.drop_annotations,
        )))
    }

    /// The pods of this node with addresses of their own (`status.podIPs`; host-network pods
    /// share the node's and are left out), once the kubelet was found by a lookup (or always
    /// when the section is `enabled: true`), from the pod list, fetched again when it is older
    /// than `refreshInterval`.
    async fn workloads(&self) -> Result<Vec<Workload>, CollectError> {
        let inner = &self.inner;
        if inner.config.enabled == Enabled::Never {
            return Ok(Vec::new());
        }
        let (_, generation, fetched) = inner.cached("");
        match fetched {
            None if inner.config.enabled != Enabled::Always => return Ok(Vec::new()),
            Some(at) if at.elapsed() < inner.config.refresh_interval => {}
            _ => {
                inner
                    .refresh(Some(generation))
                    .await
                    .map_err(|e| inner.kubelet_error(e))?;
            }
        }
        let cache = inner.cache.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut workloads = Vec::new();
        for known in cache.pods.values() {
            let pod = &known.pod;
            let Some(uid) = pod.metadata.uid.as_deref() else {
                continue;
            };
            let host_network = pod.spec.as_ref().and_then(|spec| spec.host_network);
            if !seen.insert(uid) || host_network == Some(true) {
                continue;
            }
            let status = pod.status.as_ref();
            let mut addresses: Vec<std::net::IpAddr> = status
                .and_then(|status| status.pod_ips.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|ip| ip.ip.parse().ok())
                .chain(
                    status
                        .and_then(|status| status.pod_ip.as_deref())
                        .and_then(|ip| ip.parse().ok()),
                )
                .collect();
            addresses.sort();
            addresses.dedup();
            if addresses.is_empty() {
                continue;
            }
            workloads.push(Workload {
                addresses,
                labels: labels::labels_of(pod, "", None, &inner.config.drop_annotations),
            });
        }
        Ok(workloads)
    }

    fn invalidations(&self) -> Option<broadcast::Receiver<Invalidation>> {
        if self.inner.config.enabled == Enabled::Never {
            return None;
        }
        let receiver = self.inner.invalidations.subscribe();
        let interval = self.inner.config.refresh_interval;
        tokio::spawn(poll(Arc::downgrade(&self.inner), interval));
        Some(receiver)
    }
}

/// Polls the kubelet every `interval` while the collector lives and anyone listens, once a
/// first lookup found a kubelet, and invalidates every container of a pod that changed or
/// expired.
async fn poll(inner: std::sync::Weak<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.invalidations.receiver_count() == 0 {
            return;
        }
        if inner.cache.lock().unwrap().fetched.is_none() {
            continue;
        }
        match inner.refresh(None).await {
            Ok(changed) => {
                for pod in changed {
                    for status in labels::statuses(&pod) {
                        if let Some(id) = labels::status_container_id(status) {
                            let _ = inner
                                .invalidations
                                .send(Invalidation::Container(id.to_owned()));
                        }
                    }
                }
            }
            Err(error) => tracing::debug!("kubelet poll: {error}"),
        }
    }
}
