//! Locating and reading the parity vectors (shared by the crates' `tests/parity.rs` through
//! `#[path]`): `$SLIMFLOW_PARITY_DIR`, else `../shared/parity` beside the workspace. Under CI=true a
//! missing directory fails the test; elsewhere the test prints a skip and returns.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The parity directory, or `None` (after printing a skip) outside CI when it is absent.
pub fn parity_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SLIMFLOW_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "parity vectors not found at {} (set SLIMFLOW_PARITY_DIR)",
            dir.display()
        );
    }
    eprintln!("SKIP: parity vectors not found at {}", dir.display());
    None
}

/// A case's json.
pub fn case_json(dir: &Path, case: &str) -> serde_json::Value {
    let path = dir.join(format!("{case}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (atol, rtol) of `key` in the case's `compare` list.
pub fn tolerance(case: &serde_json::Value, key: &str) -> (f64, f64) {
    let entry = case["compare"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["key"] == key))
        .unwrap_or_else(|| panic!("no compare entry for {key}"));
    (
        entry["atol"].as_f64().expect("atol"),
        entry["rtol"].as_f64().expect("rtol"),
    )
}

/// Asserts |actual − expected| ≤ atol + rtol·|expected| elementwise; returns the max abs error.
pub fn assert_close(key: &str, actual: &[f64], expected: &[f64], atol: f64, rtol: f64) -> f64 {
    assert_eq!(actual.len(), expected.len(), "{key}: length");
    let mut worst = 0f64;
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        worst = worst.max(err);
        assert!(
            err <= atol + rtol * e.abs(),
            "{key}[{i}]: got {a}, expected {e} (atol {atol}, rtol {rtol})"
        );
    }
    worst
}
