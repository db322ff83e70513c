//! EDM's sampler against rfpp's `generate_edm.py: edm_sampler` run on `EDMPrecond(SongUNet)` (the
//! public parity case `edm_sampler`): Heun 18 steps (35 NFE) and Euler 5 steps, float64 state.
//!
//! The parity directory is `$SLIMFLOW_PARITY_DIR` or `../shared/parity` beside the workspace;
//! when it is missing the test is skipped, except under `CI=true`, where that is a failure.

use std::path::PathBuf;

use slimflow_models::edm_velocity::EdmVelocity;
use slimflow_models::song_unet::SongUnetConfig;
use slimflow_models::Model;
use slimflow_sampling::{edm, solve, EdmSamplerConfig, SolverConfig, VelocityDenoiser};
use tch::{Device, Kind, Tensor};

fn parity_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SLIMFLOW_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/parity")
        });
    if dir.join("edm_sampler.json").exists() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "parity case edm_sampler.json not found in {}",
            dir.display()
        );
    }
    eprintln!(
        "skipping: no edm_sampler parity case in {} (set SLIMFLOW_PARITY_DIR)",
        dir.display()
    );
    None
}

/// Max of |a − e| − (atol + rtol·|e|) over all elements (≤ 0 passes) and the max absolute error.
fn excess(actual: &Tensor, expected: &Tensor, atol: f64, rtol: f64) -> (f64, f64) {
    let a = actual.to_kind(Kind::Double);
    let e = expected.to_kind(Kind::Double);
    let diff = (&a - &e).abs();
    let bound = e.abs() * rtol + atol;
    (
        (&diff - bound).max().double_value(&[]),
        diff.max().double_value(&[]),
    )
}

#[test]
fn edm_sampler_reproduces_rfpp() {
    let Some(dir) = parity_dir() else { return };
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("edm_sampler.json")).unwrap())
            .unwrap();
    let cfg: SongUnetConfig =
        serde_json::from_value(json["constructor_kwargs"].clone()).expect("constructor_kwargs");
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let net = EdmVelocity::new(&vs.root(), &cfg);
    let weights =
        slimflow_tensor_io::read(&dir.join(json["weights_file"].as_str().unwrap())).unwrap();
    slimflow_tensor_io::load_strict(&mut vs, &weights, &[]).unwrap();
    let io = slimflow_tensor_io::read(&dir.join(json["io_file"].as_str().unwrap())).unwrap();
    let z = io.get("input.z").unwrap().shallow_clone();

    let mut checked = 0;
    for run in json["runs"].as_array().unwrap() {
        let args = &run["args"];
        assert!(args["class_labels"].is_null(), "unconditional case");
        let sampler = EdmSamplerConfig {
            steps: args["num_steps"].as_u64().unwrap() as usize,
            rho: args["rho"].as_f64().unwrap(),
            sigma_min: args["sigma_min"].as_f64().unwrap(),
            sigma_max: args["sigma_max"].as_f64().unwrap(),
            heun: args["heun"].as_bool().unwrap(),
        };
        let key = run["outputs"]["x"].as_str().unwrap();
        let cmp = json["compare"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == key)
            .unwrap();
        let (atol, rtol) = (cmp["atol"].as_f64().unwrap(), cmp["rtol"].as_f64().unwrap());
        let expected = io.get(key).unwrap();

        let sol = edm::sample(&net.denoiser(None), &z, &sampler, false).unwrap();
        assert_eq!(sol.nfe, sampler.nfe(), "{key}: NFE");
        assert_eq!(
            sol.nfe,
            if sampler.heun {
                2 * sampler.steps - 1
            } else {
                sampler.steps
            }
        );
        assert_eq!(sol.x.kind(), Kind::Float);
        let (over, max_abs) = excess(&sol.x, expected, atol, rtol);
        eprintln!("{key}: max |Δ| = {max_abs:.3e}");
        assert!(
            over <= 0.0,
            "{key}: max |Δ| {max_abs:.3e} beyond atol {atol} + rtol {rtol}"
        );

        // The trajectory, in our time, against rfpp's σ-space one: x_ours = x_σ/(1 + σ).
        let traj_key = key.replace("output.x_", "debug.traj_");
        if let Ok(traj) = io.get(&traj_key) {
            let sol = edm::sample(&net.denoiser(None), &z, &sampler, true).unwrap();
            let path = sol.path.unwrap();
            let sigmas = edm::karras_sigmas(
                sampler.steps,
                sampler.sigma_min,
                sampler.sigma_max,
                sampler.rho,
            );
            assert_eq!(path.len() as i64, traj.size()[0]);
            for (i, ((t, x), s)) in path.iter().zip(&sigmas).enumerate() {
                assert!((t - 1.0 / (1.0 + s)).abs() < 1e-15);
                let reference = traj.get(i as i64) / (1.0 + s);
                let (over, max_abs) = excess(x, &reference, atol, rtol);
                assert!(over <= 0.0, "{traj_key}[{i}]: max |Δ| {max_abs:.3e}");
            }
        }

        // The same through the solver interface, on the network as a model's evaluation field.
        let model_sol = {
            let mut model = Model::new(
                &slimflow_models::ArchConfig::EdmVelocity(cfg.clone()),
                Device::Cpu,
            )
            .unwrap();
            slimflow_tensor_io::load_strict(&mut model.vs, &weights, &[]).unwrap();
            solve(
                &SolverConfig::Edm(sampler),
                &model.eval_field(None),
                &z,
                1e-3,
                1.0,
                false,
            )
            .unwrap()
        };
        assert_eq!(model_sol.nfe, sampler.nfe());
        let (over, _) = excess(&model_sol.x, expected, atol, rtol);
        assert!(over <= 0.0, "{key} through solve()");

        // Driven through its velocity instead (what any velocity field gets): the same sampler up
        // to float32 rounding of v = (D − x)/t_r and D = x + t_r·v, within the same tolerance.
        let via_velocity = {
            let v = |x: &Tensor, t: &Tensor| net.forward(x, t, None, false).to_kind(x.kind());
            let field = slimflow_sampling::WithDomain {
                field: v,
                domain: EdmVelocity::time_domain(),
            };
            edm::sample(&VelocityDenoiser(&field), &z, &sampler, false).unwrap()
        };
        let (over, max_abs) = excess(&via_velocity.x, expected, atol, rtol);
        eprintln!("{key} via the velocity: max |Δ| = {max_abs:.3e}");
        assert!(over <= 0.0, "{key} via the velocity: {max_abs:.3e}");
        checked += 1;
    }
    assert_eq!(checked, 2);
}
