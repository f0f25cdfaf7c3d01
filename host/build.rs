//! Builds every crate under `guests/` for `wasm32-unknown-unknown` and copies
//! each module to `guests/<name>.wasm`, so that
//! `cargo run -p host -- guests/first_proxy.wasm` works on a fresh clone.
//!
//! The inner cargo gets its own target directory (the outer build holds the
//! lock on `target/`) and none of the variables cargo sets for build scripts,
//! which would otherwise leak host flags into the wasm build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

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

    let target_dir = workspace.join("target").join("guest-build");
    let mut build = Command::new(cargo);
    build
        .current_dir(&workspace)
        .args([
            "build",
            "--profile",
            "guest",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for guest in &guests {
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
        let hint = if stderr.contains("wasm32-unknown-unknown")
            && stderr.contains("target may not be installed")
        {
            "\nhint: rustup target add wasm32-unknown-unknown"
        } else {
            ""
        };
        panic!("building the guests for wasm32-unknown-unknown failed:\n{stderr}{hint}");
    }

    let artifacts = target_dir.join("wasm32-unknown-unknown").join("guest");
    for guest in &guests {
        let file = format!("{}.wasm", guest.replace('-', "_"));
        copy_if_changed(
            &artifacts.join(&file),
            &guests_dir.join(format!("{guest}.wasm")),
        );
    }
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
