//! Builds every crate under `guests/` for wasm (`wasm32-unknown-unknown`
//! unless the guest asks otherwise, see below) and copies each module to
//! `guests/<name>.wasm`, so that
//! `cargo run -p host -- guests/first_proxy.wasm` works on a fresh clone.
//!
//! A guest may ask for another target in its `Cargo.toml`:
//!
//! ```toml
//! [package.metadata.guest]
//! target = "wasm32-wasip1"
//! ```
//!
//! Guests are grouped by target, one inner cargo per target.
//!
//! The inner cargo gets its own target directory (the outer build holds the
//! lock on `target/`) and none of the variables cargo sets for build scripts,
//! which would otherwise leak host flags into the wasm build.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

/// The target of a guest that names none.
const DEFAULT_TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("host/ sits in the workspace")
        .to_path_buf();
    let guests_dir = workspace.join("guests");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("guest-sdk").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.toml").display()
    );

    let guests = guest_crates(&guests_dir);
    for guest in &guests {
        println!(
            "cargo:rerun-if-changed={}",
            guests_dir.join(guest).join("src").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            guests_dir.join(guest).join("Cargo.toml").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            guests_dir.join(format!("{guest}.wasm")).display()
        );
    }

    let mut by_target: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for guest in &guests {
        by_target
            .entry(guest_target(&guests_dir.join(guest).join("Cargo.toml")))
            .or_default()
            .push(guest);
    }

    let target_dir = workspace.join("target").join("guest-build");
    for (target, guests) in &by_target {
        build_guests(&cargo, &workspace, &target_dir, target, guests);
        let artifacts = target_dir.join(target).join("guest");
        for guest in guests {
            let file = format!("{}.wasm", guest.replace('-', "_"));
            copy_if_changed(
                &artifacts.join(&file),
                &guests_dir.join(format!("{guest}.wasm")),
            );
        }
    }
}

/// Runs the inner cargo: `guests`, all for `target`, with the `guest` profile.
fn build_guests(cargo: &OsStr, workspace: &Path, target_dir: &Path, target: &str, guests: &[&str]) {
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace)
        .args(["build", "--profile", "guest", "--target", target])
        .arg("--target-dir")
        .arg(target_dir);
    for guest in guests {
        build.args(["-p", guest]);
    }
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let leaks = (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("DEP_")
            || matches!(
                &*key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "MAKEFLAGS"
                    | "MFLAGS"
            );
        if leaks {
            build.env_remove(&*key);
        }
    }
    let output = build.output().expect("running cargo to build the guests");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains(target) && stderr.contains("target may not be installed") {
            "\nhint: run `rustup toolchain install` in the repository root: \
             it adds the targets rust-toolchain.toml lists"
                .to_owned()
        } else {
            String::new()
        };
        panic!("building the guests for {target} failed:\n{stderr}{hint}");
    }
}

/// The target a guest asks for in its `Cargo.toml`
/// (`[package.metadata.guest] target = "..."`), by default
/// `wasm32-unknown-unknown`. A line-based read, enough for our manifests:
/// the key must sit in that very table, on one line, as a basic string.
fn guest_target(manifest: &Path) -> String {
    let text = fs::read_to_string(manifest)
        .unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display()));
    let mut in_table = false;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_table = line == "[package.metadata.guest]";
            continue;
        }
        if !in_table {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() == "target" {
            let value = value.trim();
            let target = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .filter(|v| !v.is_empty() && !v.contains('"'))
                .unwrap_or_else(|| {
                    panic!(
                        "{}: [package.metadata.guest] target must be a quoted target triple, got {value}",
                        manifest.display()
                    )
                });
            return target.to_owned();
        }
    }
    DEFAULT_TARGET.to_owned()
}

/// Names of the directories under `guests/` that hold a crate.
fn guest_crates(guests_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(guests_dir)
        .expect("reading guests/")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Copies only on change, so the written file does not trigger a rebuild.
fn copy_if_changed(from: &Path, to: &Path) {
    let bytes = fs::read(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    if fs::read(to).ok().as_deref() != Some(&bytes[..]) {
        fs::write(to, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", to.display()));
    }
}
