//! What a test sees when the oracle is missing: a skip locally, a hard failure in CI.
//!
//! Alone in its own test binary because it changes process environment variables, which would race
//! with other tests calling `Oracle::get` in the same process under `cargo test`.

use escale_testkit::Oracle;

#[test]
fn missing_oracle_skips_locally_and_fails_in_ci() {
    std::env::set_var("ESCALE_ORACLE_PYTHON", "/nonexistent/escale/python");

    std::env::set_var("CI", "false");
    assert!(Oracle::get().is_none(), "outside CI a missing oracle means skip");

    std::env::set_var("CI", "true");
    let err = std::panic::catch_unwind(Oracle::get).expect_err("in CI a missing oracle is a failure");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("required in CI") && msg.contains("tests/oracle/setup.sh"), "{msg}");
    assert!(msg.contains("/nonexistent/escale/python"), "names what was looked for: {msg}");
}

#[test]
fn workspace_root_holds_the_workspace_manifest() {
    let root = escale_testkit::workspace_root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml at the root");
    assert!(manifest.contains("[workspace]"));
    assert!(root.join("tests/oracle/oracle.py").is_file());
}
