//! Bad start-up input: one clear line on stderr, a non-zero exit, and
//! nothing listening.

use std::net::TcpStream;
use std::path::PathBuf;

use serde_json::json;

use crate::support::*;

/// Runs the proxy on a free port; asserts it failed with `message` and
/// never listened.
fn assert_refused(options: ProxyOptions, message: &str) {
    let port = free_port();
    let args = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
    let (status, log) = run_to_exit(options, &args);
    assert!(!status.success(), "exited 0 for {message:?}:\n{log}");
    let error_lines: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(error_lines.len(), 1, "one error line expected:\n{log}");
    assert!(
        error_lines[0].contains(message),
        "expected {message:?} in:\n{log}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listened"
    );
}

fn wat_module(name: &str, wat: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    (dir, path)
}

/// A module with every ABI v1 export; `extra` adds or overrides items.
fn abi_module(version: i32, extra: &str, skip: &str) -> String {
    let exports = [
        ("memory", "(memory (export \"memory\") 1)".to_string()),
        (
            "hook_abi_version",
            format!("(func (export \"hook_abi_version\") (result i32) i32.const {version})"),
        ),
        (
            "hook_alloc",
            "(func (export \"hook_alloc\") (param i32) (result i32) i32.const 1024)".into(),
        ),
        (
            "upstream_peer",
            "(func (export \"upstream_peer\") (param i32 i32) (result i64) i64.const 0)".into(),
        ),
        (
            "upstream_request_filter",
            "(func (export \"upstream_request_filter\") (param i32 i32) (result i64) i64.const 0)"
                .into(),
        ),
    ];
    let body: Vec<String> = exports
        .into_iter()
        .filter(|(name, _)| *name != skip)
        .map(|(_, item)| item)
        .collect();
    format!("(module {extra} {})", body.join(" "))
}

#[test]
fn missing_module_file() {
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.module = PathBuf::from("/nonexistent/policy.wasm");
    assert_refused(options, "reading /nonexistent/policy.wasm: No such file");
}

#[test]
fn file_that_is_not_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.wasm");
    std::fs::write(&path, "#!/bin/sh\necho not wasm\n").unwrap();
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.module = path;
    assert_refused(options, "not a valid WebAssembly module");
}

#[test]
fn module_missing_an_export() {
    let (_dir, path) = wat_module("noexport.wasm", &abi_module(1, "", "upstream_peer"));
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.module = path;
    assert_refused(options, "upstream_peer");
}

#[test]
fn module_with_wrong_export_type() {
    let wat = abi_module(
        1,
        "(func (export \"upstream_peer\") (param i32) (result i32) i32.const 0)",
        "upstream_peer",
    );
    let (_dir, path) = wat_module("badtype.wasm", &wat);
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.module = path;
    assert_refused(
        options,
        "export `upstream_peer` must be a function (i32, i32) -> i64",
    );
}

#[test]
fn module_with_another_abi_version() {
    let (_dir, path) = wat_module("v2.wasm", &abi_module(2, "", ""));
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.module = path;
    assert_refused(
        options,
        "guest ABI version is 2, this host speaks version 1",
    );
}

#[test]
fn module_importing_something_unknown() {
    let wat = abi_module(1, "(import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32 i32 i32 i32) (result i32)))", "");
    let (_dir, path) = wat_module("wasi.wasm", &wat);
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.module = path;
    assert_refused(options, "imports `wasi_snapshot_preview1.fd_write`");
}

#[test]
fn module_config_that_is_not_json() {
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.module_config = None;
    options.extra_args = vec!["--module-config".into(), "{upstream:".into()];
    assert_refused(options, "--module-config is not valid JSON");
}

#[test]
fn module_config_file_that_is_missing() {
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.module_config = None;
    options.extra_args = vec!["--module-config".into(), "@/nonexistent/config.json".into()];
    assert_refused(options, "--module-config: reading /nonexistent/config.json");
}

#[test]
fn module_config_the_guest_refuses() {
    let options = ProxyOptions::new("first_proxy", json!({"upstraem": "127.0.0.1:1"}));
    assert_refused(options, "module refused its configuration");
}

#[test]
fn listen_address_that_is_not_an_address() {
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.extra_args = vec!["--listen".into(), "localhost".into()];
    assert_refused(options, "--listen \"localhost\" is not an ip:port address");
}

#[test]
fn budget_flags_out_of_range() {
    for (flag, value) in [
        ("--cpu-ms-per-s", "0"),
        ("--max-concurrent-calls", "0"),
        ("--breaker-min-calls", "2000000"),
        ("--breaker-fault-percent", "101"),
        ("--breaker-cooldown-ms", "0"),
    ] {
        let mut options = ProxyOptions::new("first_proxy", json!({}));
        options.extra_args = vec![flag.into(), value.into()];
        assert_refused(options, &format!("invalid value '{value}' for '{flag}"));
    }
}

#[test]
fn module_config_from_a_file_and_test_mode_pass() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"upstream": "127.0.0.1:9", "tls": false}"#).unwrap();
    let mut options = ProxyOptions::new("first_proxy", json!({}));
    options.module_config = None;
    options.extra_args = vec![
        "--module-config".into(),
        format!("@{}", config.display()),
        "-t".into(),
    ];
    let (status, log) = run_to_exit(options, &[]);
    assert!(status.success(), "{log}");
    assert!(log.contains("Server Test passed"), "{log}");
}

#[test]
fn help_lists_our_flags_and_pingoras() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_proxy-under-test"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--listen",
        "--module-config",
        "--hook-timeout-ms",
        "--memory-limit-mib",
        "--conf",
        "--daemon",
        "--test",
        "--upgrade",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn tenants_files_that_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("tenants: [ {name: x", "parsing it"),
        ("tenants:\n  - name: a\n    module: GUESTS/first_proxy.wasm\n    colour: red\n", "unknown field `colour`"),
        ("tenants:\n  - name: a\n    module: missing.wasm\n", "tenant \"a\": reading"),
        (
            "tenants:\n  - {name: a, hosts: [x.example], module: GUESTS/first_proxy.wasm}\n  - {name: b, hosts: [x.example], module: GUESTS/first_proxy.wasm}\n",
            "host \"x.example\" is already served by another tenant",
        ),
        ("tenants:\n  - {name: a, module: GUESTS/first_proxy.wasm}\ndefault_tenant: z\n", "default_tenant \"z\" is not a tenant"),
        (
            "tenants:\n  - {name: a, module: GUESTS/first_proxy.wasm, on_guest_error: fail_open}\n",
            "fail_open needs a fallback_upstream",
        ),
        ("tenants:\n  - {name: a, module: GUESTS/first_proxy.wasm, config: {upstraem: x}}\n", "module refused its configuration"),
        (
            "tenants:\n  - {name: a, module: GUESTS/first_proxy.wasm, limits: {cpu_ms_per_s: 0}}\n",
            "limits: cpu_ms_per_s must be 1-64000",
        ),
        (
            "tenants:\n  - {name: a, module: GUESTS/first_proxy.wasm, limits: {max_concurrent_calls: 5000}}\n",
            "limits: max_concurrent_calls must be 1-1000",
        ),
        (
            "tenants:\n  - {name: a, module: GUESTS/first_proxy.wasm, breaker: {cooldown_ms: 0}}\n",
            "breaker cooldown_ms must be 1-3600000",
        ),
        (
            "tenants:\n  - {name: a, module: GUESTS/first_proxy.wasm, breaker: {faults: 3, colour: red}}\n",
            "unknown field `colour`",
        ),
        (
            "tenants:\n  - {name: a, module: GUESTS/first_proxy.wasm, breaker: {faults: 3}}\n",
            "breaker.faults was replaced by min_calls and fault_percent",
        ),
        (
            "tenants:\n  - {name: a, module: GUESTS/first_proxy.wasm, breaker: {fault_percent: 0}}\n",
            "breaker fault_percent must be 1-100",
        ),
    ];
    for (yaml, message) in cases {
        let path = dir.path().join("tenants.yaml");
        write_tenants(&path, yaml);
        let mut options = ProxyOptions::new("first_proxy", json!({}));
        options.tenants = Some(path);
        assert_refused(options, message);
    }
}

/// A refused tenants file names the file, the line and column, and the
/// key path of what is wrong: YAML that does not fit, and a value refused
/// while the tenants are built.
#[test]
fn tenants_file_errors_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenants.yaml");
    let cases = [
        (
            "tenants:\n  - name: a\n    module: GUESTS/first_proxy.wasm\n  - name: b\n    \
             module: GUESTS/first_proxy.wasm\n    filters:\n      - module: f.wasm\n        \
             on_error: fail_sometimes\n",
            "parsing it: line 8 column 19: tenants[1].filters[0].on_error: \
             unknown variant `fail_sometimes`",
        ),
        (
            "tenants:\n  - name: a\n    module: GUESTS/first_proxy.wasm\n    \
             upstream: \"localhost:80\"\n",
            "line 4 column 15: tenants[0].upstream: tenant \"a\": \
             \"localhost:80\" is not an ip:port address",
        ),
    ];
    for (yaml, says) in cases {
        write_tenants(&path, yaml);
        let mut options = ProxyOptions::new("first_proxy", json!({}));
        options.tenants = Some(path.clone());
        assert_refused(options, &format!("tenants file {}: {says}", path.display()));
    }
}
