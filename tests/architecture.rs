//! Architecture invariants from ARCHITECTURE.md, checked against the
//! manifests and the `use` lines of the source tree.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Dependency names declared in a manifest's [dependencies] and
/// [dev-dependencies] tables.
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]" || line == "[dev-dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = line.split_once(['=', '.']) {
                if !name.trim().is_empty() && !name.starts_with('#') {
                    deps.push(name.trim().to_string());
                }
            }
        }
    }
    deps
}

/// Files under `dir` that mention any of `crates` in code (`use x`, `x::`).
fn files_using(dir: &Path, crates: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for file in rust_files(dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if crates
                .iter()
                .any(|c| code.contains(&format!("use {c}")) || code.contains(&format!("{c}::")))
            {
                hits.push(file.strip_prefix(root()).unwrap().display().to_string());
                break;
            }
        }
    }
    hits
}

fn check_manifest(krate: &str, forbidden: &[&str]) {
    let deps = dependencies(&root().join(krate).join("Cargo.toml"));
    assert!(
        !deps.is_empty(),
        "{krate}/Cargo.toml lists no dependencies; parser broken?"
    );
    for f in forbidden {
        assert!(
            !deps.iter().any(|d| d == f),
            "{krate} must not depend on {f}"
        );
    }
}

#[test]
fn raft_knows_nothing_of_the_network_or_docker() {
    check_manifest(
        "raft",
        &[
            "quinn",
            "quinn-proto",
            "rustls",
            "bollard",
            "shoal-net",
            "shoal-cli",
            "axum",
        ],
    );
    let hits = files_using(
        &root().join("raft/src"),
        &["quinn", "rustls", "bollard", "shoal_net"],
    );
    assert!(
        hits.is_empty(),
        "raft imports network/docker crates in {hits:?}"
    );
}

#[test]
fn net_knows_nothing_of_raft_or_docker() {
    check_manifest(
        "net",
        &["openraft", "bollard", "shoal-raft", "shoal-cli", "redb"],
    );
    let hits = files_using(
        &root().join("net/src"),
        &["openraft", "bollard", "shoal_raft"],
    );
    assert!(
        hits.is_empty(),
        "net imports raft/docker crates in {hits:?}"
    );
}

#[test]
fn cli_is_only_a_client() {
    check_manifest(
        "cli",
        &[
            "openraft",
            "quinn",
            "rustls",
            "bollard",
            "shoal-raft",
            "shoal-net",
            "redb",
        ],
    );
}

#[test]
fn at_most_one_module_of_the_daemon_talks_to_docker() {
    let hits = files_using(&root().join("src"), &["bollard"]);
    assert!(hits.len() <= 1, "bollard is imported by {hits:?}");
}

#[test]
fn the_codec_is_called_from_its_two_modules_only() {
    let mut hits = Vec::new();
    for dir in ["src", "raft/src", "net/src", "cli/src"] {
        hits.extend(files_using(&root().join(dir), &["postcard"]));
    }
    hits.sort();
    assert_eq!(hits, vec!["net/src/codec.rs", "raft/src/codec.rs"]);
}
