//! Hot reload of a policy directory: atomic swap, and a broken file keeps the previous policies.

use std::time::{Duration, SystemTime};

use labels::LabelSet;
use selectors::{Action, PolicyStore};

fn labels(app: &str) -> LabelSet {
    let mut labels = LabelSet::new();
    labels.insert("app", app);
    labels
}

/// Writes a file with a modification time that differs from the previous one even on
/// filesystems with coarse timestamps.
fn write(path: &std::path::Path, text: &str, tick: u64) {
    std::fs::write(path, text).unwrap();
    let time = SystemTime::now() + Duration::from_secs(tick);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

#[test]
fn broken_file_keeps_previous_policies_and_reports_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("10-web.yaml");
    write(
        &file,
        "policies:\n  - name: web\n    action: deny\n    selectors: [{app: web}]\n",
        1,
    );
    std::fs::write(dir.path().join("README.txt"), "not a policy").unwrap();
    let store = PolicyStore::load(vec![dir.path().to_owned()], Action::Allow).unwrap();
    let before = store.current();
    assert_eq!(before.evaluate(&labels("web")).verdict, Action::Deny);
    assert!(store.reload_if_changed().is_none(), "nothing changed yet");

    // A broken edit: the old policies stay in force, the error is recorded.
    write(
        &file,
        "policies:\n  - name: web\n    action: dney\n    selectors: [{app: web}]\n",
        2,
    );
    let error = store.reload_if_changed().expect("change seen").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("10-web.yaml:3:13: invalid action `dney`"),
        "{error}"
    );
    assert_eq!(
        store.current().evaluate(&labels("web")).verdict,
        Action::Deny
    );
    let status = store.status();
    assert_eq!(
        (status.reloads, status.failures, status.policies),
        (1, 1, 1)
    );
    assert!(status.last_error.unwrap().contains("dney"));

    // Fixed, plus a new file: swapped in at once; a snapshot taken before is unchanged.
    write(
        &file,
        "policies:\n  - name: web\n    action: allow\n    selectors: [{app: web}]\n",
        3,
    );
    write(
        &dir.path().join("20-api.yml"),
        "policies:\n  - name: api\n    action: deny\n    selectors: [{app: api}]\n",
        3,
    );
    assert_eq!(store.reload_if_changed().unwrap().unwrap(), 2);
    assert_eq!(
        store.current().evaluate(&labels("web")).verdict,
        Action::Allow
    );
    assert_eq!(
        store.current().evaluate(&labels("api")).verdict,
        Action::Deny
    );
    assert_eq!(before.evaluate(&labels("web")).verdict, Action::Deny);
    let status = store.status();
    assert_eq!(
        (status.reloads, status.failures, status.last_error),
        (2, 1, None)
    );

    // A name used in two files is an error across files.
    write(
        &dir.path().join("30-dup.yaml"),
        "policies:\n  - name: api\n    selectors: [{x: 1}]\n",
        4,
    );
    let error = store.reload_if_changed().unwrap().unwrap_err().to_string();
    assert!(
        error.contains("30-dup.yaml:2:5: duplicate policy name `api` (first defined at"),
        "{error}"
    );
    assert_eq!(store.current().policies().len(), 2);
}

/// Publishes `files` as the kubelet's atomic writer does for a ConfigMap volume: into a new
/// timestamped directory, `..data` swapped to it by a rename, the visible names symlinks through
/// `..data`, the previous directory removed.
fn publish_like_a_configmap(dir: &std::path::Path, version: u32, files: &[(&str, &str)]) {
    let versioned = format!("..2026_12_01_17_00_0{version}.{version}");
    std::fs::create_dir(dir.join(&versioned)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&versioned).join(name), text).unwrap();
        // Same size and time as the previous version: only the inode tells them apart.
        std::fs::File::options()
            .write(true)
            .open(dir.join(&versioned).join(name))
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_608_400))
            .unwrap();
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &visible).unwrap();
        }
    }
    let previous = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(&versioned, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(previous)).unwrap();
    }
}

#[test]
fn a_configmap_symlink_swap_is_seen_even_with_the_same_size_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let deny = "policies:\n  - name: web\n    action: deny \n    selectors: [{app: web}]\n";
    let allow = "policies:\n  - name: web\n    action: allow\n    selectors: [{app: web}]\n";
    assert_eq!(deny.len(), allow.len());
    publish_like_a_configmap(dir.path(), 1, &[("policies.yaml", deny)]);
    let store = PolicyStore::load(vec![dir.path().to_owned()], Action::Allow).unwrap();
    assert_eq!(
        store.current().policies().len(),
        1,
        "..data entries are not policies"
    );
    assert_eq!(
        store.current().evaluate(&labels("web")).verdict,
        Action::Deny
    );
    assert!(store.reload_if_changed().is_none());

    publish_like_a_configmap(dir.path(), 2, &[("policies.yaml", allow)]);
    let reloaded = store.reload_if_changed().expect("the swap is seen");
    assert_eq!(reloaded.unwrap(), 1);
    assert_eq!(
        store.current().evaluate(&labels("web")).verdict,
        Action::Allow
    );
}
