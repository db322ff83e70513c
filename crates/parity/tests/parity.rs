//! Every parity case in the shared directory through the runner: all must run and pass, and
//! SlimFlow's whole training step must replay its draws bit for bit at the reference's thread
//! count, and the rest within the case's tolerances (bit for bit where the CPU rounds as the
//! recording's did).

#[path = "../../../tests/support/parity.rs"]
mod support;

use slimflow_parity::{run_dir, Status};

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
        if r.case == "slimflow_step" {
            bit_identical_step(r);
        }
        // The runner fails a known kind that compares nothing; a case counts once it compared.
        if r.error.is_none() && !r.keys.is_empty() {
            passed.push(r.case.as_str());
        }
    }
    for case in [
        "u_shaped_t",
        "lpips_vgg",
        "lpips_vgg_avgpool",
        "frechet_distance",
        "fid_inception",
        "songunet_ddpmpp",
        "songunet_ncsnpp_vel",
        "ncsnpp_small",
        "dhariwal_unet",
        "dhariwal_vel",
        "edm_sampler",
        "slimflow_step",
    ] {
        assert!(
            passed.contains(&case),
            "{case} must run and pass; passed: {passed:?}"
        );
    }
}

/// Writes `json` as a case into a temporary directory, with its file references made absolute.
fn altered_case(
    dir: &std::path::Path,
    case: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> (tempfile::TempDir, std::path::PathBuf) {
    let mut json = support::case_json(dir, case);
    for field in ["io_file", "weights_file"] {
        if let Some(name) = json[field].as_str() {
            json[field] = dir.join(name).to_string_lossy().into_owned().into();
        }
    }
    edit(&mut json);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(format!("{case}.json"));
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    (tmp, path)
}

#[test]
fn an_argument_the_runner_does_not_consume_fails_the_case_by_name() {
    let Some(dir) = support::parity_dir() else {
        return;
    };
    // The unmodified case passes through the same path…
    let (_t, path) = altered_case(&dir, "songunet_ddpmpp", |_| {});
    assert_eq!(slimflow_parity::run_case(&path).status, Status::Pass);
    // …an extra argument fails it, naming the argument.
    let (_t, path) = altered_case(&dir, "songunet_ddpmpp", |j| {
        j["runs"][0]["args"]["sigma_scale"] = 2.0.into();
    });
    let r = slimflow_parity::run_case(&path);
    assert_eq!(r.status, Status::Fail);
    assert!(
        r.error.as_deref().unwrap_or("").contains("`sigma_scale`"),
        "{r:?}"
    );
    // Class labels for an unconditional network are refused, not dropped.
    let (_t, path) = altered_case(&dir, "songunet_ddpmpp", |j| {
        j["runs"][0]["args"]["class_labels"] = "input.x".into();
    });
    let r = slimflow_parity::run_case(&path);
    assert_eq!(r.status, Status::Fail);
    assert!(
        r.error.as_deref().unwrap_or("").contains("class_labels"),
        "{r:?}"
    );
    // An LPIPS input transform is honoured: a resize to the inputs' own 64×64 changes nothing,
    // one to 96×96 changes the distance, so the stored (unresized) outputs no longer match; an
    // unknown transform is refused by name.
    let resized = |size: i64| {
        altered_case(&dir, "lpips_vgg", |j| {
            j["runs"][0]["args"]["input_transform"] =
                serde_json::json!({"resize": size, "mode": "bilinear", "align_corners": true});
        })
    };
    let (_t, path) = resized(64);
    assert_eq!(slimflow_parity::run_case(&path).status, Status::Pass);
    let (_t, path) = resized(96);
    let r = slimflow_parity::run_case(&path);
    assert_eq!(r.status, Status::Fail, "{r:?}");
    assert!(r.error.is_none(), "the transform ran: {r:?}");
    let (_t, path) = altered_case(&dir, "lpips_vgg", |j| {
        j["runs"][0]["args"]["input_transform"] = "random_crop".into();
    });
    let r = slimflow_parity::run_case(&path);
    assert_eq!(r.status, Status::Fail);
    assert!(
        r.error.as_deref().unwrap_or("").contains("input_transform"),
        "{r:?}"
    );
    // A literal the step runner does not implement is refused, not ignored.
    let (_t, path) = altered_case(&dir, "slimflow_step", |j| {
        j["runs"][2]["args"]["student_mode"] = "eval".into();
    });
    let r = slimflow_parity::run_case(&path);
    assert_eq!(r.status, Status::Fail);
    assert!(
        r.error.as_deref().unwrap_or("").contains("student_mode"),
        "{r:?}"
    );
    // A recorded thread count that is not a positive integer fails the case, naming the field.
    let (_t, path) = altered_case(&dir, "u_shaped_t", |j| {
        j["environment"]["torch_num_threads"] = 0.into();
    });
    let r = slimflow_parity::run_case(&path);
    assert_eq!(r.status, Status::Fail);
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("environment.torch_num_threads"),
        "{r:?}"
    );
    // A kind without an implementation is listed, not failed.
    let (_t, path) = altered_case(&dir, "u_shaped_t", |j| {
        j["kind"] = "rfpp.SomethingNew".into();
    });
    assert_eq!(
        slimflow_parity::run_case(&path).status,
        Status::NotImplemented
    );
}

/// The `slimflow_step` case compares parameters after Adam's first update, ≈ lr·g/(|g| + 1e-8):
/// where a gradient sits near Adam's ε the update turns its last bit into a visible weight
/// difference, so float32 summation order shows. Replayed at the reference's recorded thread count
/// (1), the draws (noise, x_t) are exact on every machine; the network, LPIPS and Adam outputs
/// follow the CPU's float32 kernels (oneDNN and MKL pick them by instruction set and model): on a
/// CPU that rounds as the recording's did they are exact too (printed), elsewhere within the
/// case's tolerances (asserted with the case's status).
fn bit_identical_step(r: &slimflow_parity::CaseResult) {
    assert_eq!(r.threads, Some(1), "replayed at the recorded thread count");
    assert_eq!(r.keys.len(), 9, "every output compared: {:?}", r.keys);
    const DRAWS: [&str; 2] = ["output.reflow_noise", "output.reflow_xt"];
    for key in DRAWS {
        let k = r
            .keys
            .iter()
            .find(|k| k.key == key)
            .expect("the draws are compared");
        assert_eq!(k.max_abs, 0.0, "slimflow_step {key} differs: {k:?}");
    }
    let inexact: Vec<String> = r
        .keys
        .iter()
        .filter(|k| k.max_abs != 0.0)
        .map(|k| format!("{} {:.1e}", k.key, k.max_abs))
        .collect();
    if inexact.is_empty() {
        eprintln!("slimflow_step: bit for bit");
    } else {
        eprintln!(
            "slimflow_step: this CPU's float32 kernels round differently from the recording's; \
             within tolerance: {}",
            inexact.join(", ")
        );
    }
    assert!(r.keys.iter().all(|k| k.pass), "{:?}", r.keys);
}
