//! Compiles `bpf/hook.bpf.c` with clang when clang is installed; otherwise uses the committed
//! `bpf/hook.bpf.o`, after checking that it was built from the current sources.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const SOURCES: [&str; 3] = ["hook.bpf.c", "hook.h", "kernel.h"];

fn main() {
    let bpf = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for file in SOURCES.iter().chain(&["hook.bpf.o", "hook.bpf.o.sources"]) {
        println!("cargo:rerun-if-changed=bpf/{file}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");

    match find_clang() {
        Some(clang) => {
            let status = Command::new(&clang)
                .current_dir(&bpf)
                .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
                // Keeps the build directory out of the debug info, so the object is the same
                // wherever it is built.
                .arg("-fdebug-compilation-dir=.")
                .args(["-c", "hook.bpf.c", "-o"])
                .arg(out.join("hook.bpf.o"))
                .status()
                .unwrap_or_else(|e| panic!("cannot run {clang}: {e}"));
            assert!(status.success(), "{clang} failed to compile bpf/hook.bpf.c");
            println!("cargo:rustc-env=KERNEL_HOOK_EBPF_COMPILED_BY={clang}");
        }
        None => {
            let recorded = std::fs::read_to_string(bpf.join("hook.bpf.o.sources"))
                .expect("bpf/hook.bpf.o.sources is missing");
            if recorded.trim() != sources_hash(&bpf) {
                panic!(
                    "bpf/hook.bpf.o is older than its sources and clang is not installed: install \
                     clang-19 (or clang), or run kernel-hook-ebpf/update-object.sh where it is"
                );
            }
            std::fs::copy(bpf.join("hook.bpf.o"), out.join("hook.bpf.o"))
                .expect("cannot copy the committed BPF object");
            println!("cargo:rustc-env=KERNEL_HOOK_EBPF_COMPILED_BY=");
        }
    }
}

fn find_clang() -> Option<String> {
    let candidates = std::env::var("CLANG")
        .ok()
        .into_iter()
        .chain(["clang-19".to_owned(), "clang".to_owned()]);
    candidates.into_iter().find(|candidate| {
        Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The same hash `update-object.sh` records: SHA-256 of the sources, concatenated in order.
fn sources_hash(bpf: &Path) -> String {
    let mut hasher = Sha256::new();
    for file in SOURCES {
        hasher.update(std::fs::read(bpf.join(file)).expect("a BPF source is missing"));
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
