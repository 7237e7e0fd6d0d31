//! `k8s:*` labels of one container of a pod, as `docs/labels.md` states.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::collector::KeySpec;
use labels::{LabelSet, Trust, escape_bytes, escape_key};

/// Every key the collector can emit.
pub const LABEL_KEYS: &[KeySpec] = crate::key_specs![Trust::Runtime;
    "k8s:pod:name",
    "k8s:pod:namespace",
    "k8s:pod:uid",
    "k8s:pod:serviceaccount",
    "k8s:node:name",
    "k8s:pod:owner:kind",
    "k8s:pod:owner:kind-with-version",
    "k8s:pod:owner:name",
    "k8s:label:<k>",
    "k8s:annotation:<k>",
    "k8s:container:name",
    "k8s:container:id",
    "k8s:container:image:id",
    "k8s:pod:image:id",
    "k8s:pod:image:name",
    "k8s:pod:image:count",
    "k8s:pod:init-image:name",
    "k8s:pod:init-image:count",
    "k8s:pod:ephemeral-image:name",
    "k8s:pod:ephemeral-image:count",
];

/// The container id of a status, without its `<runtime>://` prefix.
pub fn status_container_id(status: &ContainerStatus) -> Option<&str> {
    let id = status.container_id.as_deref()?;
    Some(id.split_once("://").map_or(id, |(_, id)| id))
}

/// Every container status of a pod: containers, then init containers, then ephemeral ones.
pub fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    pod.status.iter().flat_map(|status| {
        [
            &status.container_statuses,
            &status.init_container_statuses,
            &status.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        .flatten()
    })
}

/// The status of container `id` in `pod` (its current container only: a status's `lastState`
/// names an earlier container, which is not matched).
pub fn find_status<'p>(pod: &'p Pod, id: &str) -> Option<&'p ContainerStatus> {
    statuses(pod).find(|status| status_container_id(status) == Some(id))
}

/// The labels of `pod`, and of its container `container` when its status is known.
/// Annotations left out by default: `kubectl apply`'s copy of the whole object, which holds
/// literal environment values.
pub const DEFAULT_DROPPED_ANNOTATIONS: &[&str] =
    &["kubectl.kubernetes.io/last-applied-configuration"];

/// The labels of `pod` (and of its container `container_id`), without the annotations named in
/// `dropped`, annotation values with secret-shaped parts hidden.
pub fn labels_of(
    pod: &Pod,
    container_id: &str,
    container: Option<&ContainerStatus>,
    dropped: &[String],
) -> LabelSet {
    let mut labels = LabelSet::new();
    let mut put = |key: &str, value: &str| labels.insert(key, escape_bytes(value.as_bytes()));
    let meta = &pod.metadata;
    put("k8s:pod:name", meta.name.as_deref().unwrap_or_default());
    put(
        "k8s:pod:namespace",
        meta.namespace.as_deref().unwrap_or_default(),
    );
    put("k8s:pod:uid", meta.uid.as_deref().unwrap_or_default());
    for owner in meta.owner_references.iter().flatten() {
        put("k8s:pod:owner:kind", &owner.kind.to_lowercase());
        put(
            "k8s:pod:owner:kind-with-version",
            &format!("{}/{}", owner.api_version, owner.kind).to_lowercase(),
        );
        put("k8s:pod:owner:name", &owner.name);
    }
    for (key, value) in meta.labels.iter().flatten() {
        put(&format!("k8s:label:{}", escape_key(key)), value);
    }
    for (key, value) in meta.annotations.iter().flatten() {
        if dropped.iter().any(|name| name == key) {
            continue;
        }
        let value = crate::redaction::redact_shapes(value);
        put(&format!("k8s:annotation:{}", escape_key(key)), &value);
    }

    put("k8s:container:id", container_id);
    if let Some(status) = container {
        put("k8s:container:name", &status.name);
        put("k8s:container:image:id", &status.image_id);
    }
    let pod_status = pod.status.as_ref();
    for status in pod_status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
    {
        put("k8s:pod:image:id", &status.image_id);
    }

    let spec = pod.spec.as_ref();
    if let Some(spec) = spec {
        put(
            "k8s:pod:serviceaccount",
            spec.service_account_name.as_deref().unwrap_or_default(),
        );
        put(
            "k8s:node:name",
            spec.node_name.as_deref().unwrap_or_default(),
        );
    }
    let images = spec.map(|s| s.containers.iter().map(|c| c.image.as_deref()).collect());
    let init = spec.and_then(|s| s.init_containers.as_ref());
    let init = init.map(|list| list.iter().map(|c| c.image.as_deref()).collect());
    let ephemeral = spec.and_then(|s| s.ephemeral_containers.as_ref());
    let ephemeral = ephemeral.map(|list| list.iter().map(|c| c.image.as_deref()).collect());
    for (kind, images) in [
        ("image", images),
        ("init-image", init),
        ("ephemeral-image", ephemeral),
    ] {
        let images: Vec<Option<&str>> = images.unwrap_or_default();
        for image in images.iter().flatten() {
            put(&format!("k8s:pod:{kind}:name"), image);
        }
        // Emitted even when 0.
        put(&format!("k8s:pod:{kind}:count"), &images.len().to_string());
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn pods() -> Vec<Pod> {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/kubernetes/pods.json"
        ))
        .unwrap();
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        serde_json::from_value(list["items"].clone()).unwrap()
    }

    fn id(name: &str) -> String {
        Sha256::digest(name.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn labels_for(pod: &Pod, container: &str) -> LabelSet {
        let id = id(container);
        labels_of(pod, &id, find_status(pod, &id), &[])
    }

    #[test]
    fn the_reference_pod_gives_the_reference_labels() {
        let expected = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/kubernetes/metrics-server-expected.txt"
        ))
        .unwrap();
        assert_eq!(labels_for(&pods()[0], "metrics-server").to_text(), expected);
    }

    #[test]
    fn an_earlier_container_of_the_same_status_does_not_match() {
        let pod = &pods()[0];
        assert!(find_status(pod, &id("metrics-server-previous")).is_none());
        let labels = labels_for(pod, "metrics-server-previous");
        assert!(!labels.contains_key("k8s:container:name"));
        assert_eq!(
            labels.get("k8s:pod:name"),
            ["metrics-server-648b5df564-drsb2"]
        );
    }

    #[test]
    fn every_value_of_a_multi_container_pod_is_kept() {
        let pod = &pods()[1];
        let labels = labels_for(pod, "proxy");
        assert_eq!(labels.get("k8s:container:name"), ["proxy"]);
        assert_eq!(labels.get("k8s:pod:owner:kind"), ["replicaset", "website"]);
        assert_eq!(
            labels.get("k8s:pod:owner:kind-with-version"),
            ["apps/v1/replicaset", "example.com/v1alpha1/website"]
        );
        assert_eq!(
            labels.get("k8s:pod:owner:name"),
            ["web-7d4b9c6f5", "shop-front"]
        );
        // Three containers, two of them with the same image: a set of pairs, and a count of 3.
        assert_eq!(
            labels.get("k8s:pod:image:name"),
            [
                "registry.example.com/shop/web:2.7.1",
                "envoyproxy/envoy:v1.30.1"
            ]
        );
        assert_eq!(labels.get("k8s:pod:image:count"), ["3"]);
        // The waiting container has no image id yet: nothing emitted for it.
        assert_eq!(
            labels.get("k8s:pod:image:id"),
            [
                format!("registry.example.com/shop/web@sha256:{}", id("web-img")),
                format!("docker.io/envoyproxy/envoy@sha256:{}", id("envoy-img")),
            ]
        );
        assert_eq!(
            labels.get("k8s:pod:init-image:name"),
            ["registry.example.com/shop/migrate:1.4"]
        );
        assert_eq!(labels.get("k8s:pod:init-image:count"), ["1"]);
        assert_eq!(labels.get("k8s:pod:ephemeral-image:name"), ["busybox:1.36"]);
        assert_eq!(labels.get("k8s:pod:ephemeral-image:count"), ["1"]);
        assert_eq!(labels.get("k8s:label:tier"), ["front end"]);
        assert_eq!(labels.get("k8s:annotation:note"), ["two\\x0alines"]);
        assert_eq!(labels.get("k8s:pod:serviceaccount"), ["web"]);
    }

    #[test]
    fn init_and_ephemeral_containers_are_matched() {
        let pod = &pods()[1];
        let init = labels_for(pod, "migrate");
        assert_eq!(init.get("k8s:container:name"), ["migrate"]);
        assert_eq!(
            init.get("k8s:container:image:id"),
            [format!(
                "registry.example.com/shop/migrate@sha256:{}",
                id("migrate-img")
            )]
        );
        let debugger = labels_for(pod, "debugger");
        assert_eq!(debugger.get("k8s:container:name"), ["debugger-abcde"]);
        assert_eq!(debugger.get("k8s:container:id"), [id("debugger")]);
    }

    #[test]
    fn a_pod_without_service_account_or_node_omits_them() {
        let mut pod = pods()[2].clone();
        let labels = labels_for(&pod, "apiserver");
        assert!(!labels.contains_key("k8s:pod:serviceaccount"));
        assert_eq!(labels.get("k8s:pod:owner:kind-with-version"), ["v1/node"]);
        pod.spec = None;
        let labels = labels_for(&pod, "apiserver");
        assert_eq!(labels.get("k8s:pod:image:count"), ["0"]);
        assert!(!labels.contains_key("k8s:node:name"));
    }
}
