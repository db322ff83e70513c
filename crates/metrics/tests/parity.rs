//! Every parity case in the shared directory through the runner: all must run and pass.

#[path = "../../../tests/support/parity.rs"]
mod support;

use slimflow_metrics::parity::{run_dir, Status};

#[test]
fn implemented_parity_cases_pass() {
    let Some(dir) = support::parity_dir() else {
        return;
    };
    let results = run_dir(&dir).expect("cases found");
    let mut passed = Vec::new();
    for r in &results {
        for k in &r.keys {
            eprintln!(
                "{:?} {} {}: max abs {:.3e}, max rel {:.3e} ({})",
                r.status, r.case, k.key, k.max_abs, k.max_rel, k.rule
            );
        }
        assert!(
            !matches!(r.status, Status::Fail),
            "{} failed: {:?} {:?}",
            r.case,
            r.error,
            r.keys
        );
        if matches!(r.status, Status::Pass) {
            assert!(
                !r.keys.is_empty(),
                "{} passed without comparing anything",
                r.case
            );
            passed.push(r.case.as_str());
        }
    }
    for case in [
        "u_shaped_t",
        "lpips_vgg",
        "lpips_vgg_avgpool",
        "frechet_distance",
    ] {
        assert!(
            passed.contains(&case),
            "{case} must be run and pass; passed: {passed:?}"
        );
    }
}
