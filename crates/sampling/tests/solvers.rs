//! Solvers on analytic fields.

use std::cell::Cell;

use slimflow_sampling::{solve, straightness, Domain, SolverConfig, WithDomain};
use tch::{Kind, Tensor};

fn scalar_batch(values: &[f64]) -> Tensor {
    Tensor::from_slice(values).reshape([values.len() as i64, 1])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn constant_field_is_exact_in_one_euler_step() {
    let x0 = scalar_batch(&[0.0, 1.0, -2.0]);
    let v = |x: &Tensor, _t: &Tensor| x.ones_like() * 2.5;
    let sol = solve(&SolverConfig::Euler { steps: 1 }, &v, &x0, 0.0, 1.0, false).unwrap();
    assert_eq!(sol.nfe, 1);
    assert!(max_abs_diff(&sol.x, &(&x0 + 2.5)) < 1e-15);
}

#[test]
fn time_dependent_field_hits_its_endpoint() {
    // dx/dt = 3t² ⇒ x(1) = x(eps) + 1 − eps³.
    let eps = 1e-3;
    let x0 = scalar_batch(&[0.5, -1.0]);
    let v = |x: &Tensor, t: &Tensor| t.square().reshape([-1, 1]) * 3.0 + x.zeros_like();
    let exact = &x0 + (1.0 - eps * eps * eps);
    let rk = solve(
        &SolverConfig::Rk45 {
            rtol: 1e-8,
            atol: 1e-8,
        },
        &v,
        &x0,
        eps,
        1.0,
        false,
    )
    .unwrap();
    assert!(max_abs_diff(&rk.x, &exact) < 1e-8);
    // Heun is the trapezoidal rule here: error (1 − eps)·h²·f''/12 = h²/2; 400 steps ⇒ 3.1e-6.
    let heun = solve(&SolverConfig::Heun { steps: 400 }, &v, &x0, eps, 1.0, false).unwrap();
    assert!(max_abs_diff(&heun.x, &exact) < 1e-5);
}

#[test]
fn rk45_reaches_exp_minus_one_on_decay() {
    let x0 = scalar_batch(&[1.0]);
    let calls = Cell::new(0usize);
    let v = |x: &Tensor, _t: &Tensor| {
        calls.set(calls.get() + 1);
        -x
    };
    let sol = solve(
        &SolverConfig::Rk45 {
            rtol: 1e-5,
            atol: 1e-5,
        },
        &v,
        &x0,
        0.0,
        1.0,
        false,
    )
    .unwrap();
    let got = sol.x.double_value(&[0, 0]);
    assert!((got - (-1f64).exp()).abs() < 1e-5, "{got}");
    assert_eq!(sol.nfe, calls.get(), "NFE must count every evaluation");
    assert!(sol.nfe < 200);
}

#[test]
fn rk45_meets_its_tolerance_on_a_nonautonomous_field() {
    // dx/dt = cos(t)·x ⇒ x(T) = x0·exp(sin T); defined for all t, so declared on [0, 3].
    let x0 = scalar_batch(&[1.0, 2.0, -0.5]);
    let v = WithDomain {
        field: |x: &Tensor, t: &Tensor| t.cos().reshape([-1, 1]) * x,
        domain: Domain::closed(0.0, 3.0).unwrap(),
    };
    for tol in [1e-4, 1e-6, 1e-8] {
        let sol = solve(
            &SolverConfig::Rk45 {
                rtol: tol,
                atol: tol,
            },
            &v,
            &x0,
            0.0,
            3.0,
            false,
        )
        .unwrap();
        let exact = &x0 * 3f64.sin().exp();
        let err = max_abs_diff(&sol.x, &exact);
        assert!(err < 20.0 * tol, "tol {tol}: err {err}");
    }
}

fn growth_error(cfg: SolverConfig) -> f64 {
    // dx/dt = x from 0 to 1 ⇒ e.
    let x0 = scalar_batch(&[1.0]);
    let v = |x: &Tensor, _t: &Tensor| x.shallow_clone();
    let sol = solve(&cfg, &v, &x0, 0.0, 1.0, false).unwrap();
    (sol.x.double_value(&[0, 0]) - 1f64.exp()).abs()
}

#[test]
fn euler_converges_at_first_order() {
    let ratio = growth_error(SolverConfig::Euler { steps: 64 })
        / growth_error(SolverConfig::Euler { steps: 128 });
    assert!((ratio - 2.0).abs() < 0.1, "{ratio}");
}

#[test]
fn heun_converges_at_second_order() {
    let ratio = growth_error(SolverConfig::Heun { steps: 64 })
        / growth_error(SolverConfig::Heun { steps: 128 });
    assert!((ratio - 4.0).abs() < 0.2, "{ratio}");
    let sol_nfe = {
        let v = |x: &Tensor, _t: &Tensor| x.shallow_clone();
        solve(
            &SolverConfig::Heun { steps: 5 },
            &v,
            &scalar_batch(&[1.0]),
            0.0,
            1.0,
            false,
        )
        .unwrap()
        .nfe
    };
    assert_eq!(sol_nfe, 10);
}

#[test]
fn forward_then_backward_returns_to_the_start() {
    let x0 = Tensor::from_slice(&[0.3f64, -1.2, 2.0, 0.1]).reshape([2, 2]);
    let v = |x: &Tensor, t: &Tensor| x.sin() * t.reshape([-1, 1]) + 0.5;
    for cfg in [
        SolverConfig::Rk45 {
            rtol: 1e-9,
            atol: 1e-9,
        },
        SolverConfig::Heun { steps: 400 },
    ] {
        let fwd = solve(&cfg, &v, &x0, 1e-3, 1.0, false).unwrap();
        let back = solve(&cfg, &v, &fwd.x, 1.0, 1e-3, false).unwrap();
        assert!(max_abs_diff(&back.x, &x0) < 1e-5, "{cfg:?}");
    }
}

#[test]
fn x_pred_sampler_matches_euler_for_one_step_and_is_exact_on_straight_pairs() {
    let z = Tensor::from_slice(&[0.3f64, -1.2, 2.0, 0.1]).reshape([2, 2]);
    let target = Tensor::from_slice(&[1.0f64, 1.0, -1.0, 0.5]).reshape([2, 2]);
    // The ideal velocity of a straight path ending at `target`: v = (target − x)/(1 − t).
    let v = |x: &Tensor, t: &Tensor| (&target - x) / (1.0 - t.reshape([-1, 1]));
    let one = solve(&SolverConfig::XPred { steps: 1 }, &v, &z, 0.0, 1.0, false).unwrap();
    let euler = solve(&SolverConfig::Euler { steps: 1 }, &v, &z, 0.0, 1.0, false).unwrap();
    assert!(max_abs_diff(&one.x, &euler.x) < 1e-12);
    let many = solve(&SolverConfig::XPred { steps: 7 }, &v, &z, 0.0, 1.0, true).unwrap();
    assert!(max_abs_diff(&many.x, &target) < 1e-12);
    // Each intermediate state lies on the line from z to the target.
    for (t, x) in many.path.as_ref().unwrap() {
        let on_line = &target * *t + &z * (1.0 - t);
        assert!(max_abs_diff(x, &on_line) < 1e-12);
    }
    assert!(solve(&SolverConfig::XPred { steps: 2 }, &v, &z, 1.0, 0.0, false).is_err());
}

#[test]
fn trajectory_capture_and_straightness() {
    let x0 = scalar_batch(&[0.0, 0.0]);
    // Straight constant-speed path: S = 0.
    let straight = |x: &Tensor, _t: &Tensor| x.ones_like();
    let sol = solve(
        &SolverConfig::Euler { steps: 10 },
        &straight,
        &x0,
        0.0,
        1.0,
        true,
    )
    .unwrap();
    let path = sol.path.unwrap();
    assert_eq!(path.len(), 11);
    assert!(straightness(&path).unwrap().abs() < 1e-20);
    // x(t) = t² on the grid (0, ½, 1): local speeds ½ and 3/2 against 1 ⇒ S = ((−½)² + (½)²)/2 = ¼.
    let curved: Vec<(f64, Tensor)> = [0.0, 0.5, 1.0]
        .iter()
        .map(|&t| (t, scalar_batch(&[t * t])))
        .collect();
    assert!((straightness(&curved).unwrap() - 0.25).abs() < 1e-12);
    assert!(straightness(&curved[..1]).is_err());
}

#[test]
fn solves_build_no_graph_and_reject_bad_settings() {
    let x0 = scalar_batch(&[1.0]).set_requires_grad(true);
    let v = |x: &Tensor, _t: &Tensor| x * 2.0;
    let sol = solve(&SolverConfig::Euler { steps: 3 }, &v, &x0, 0.0, 1.0, false).unwrap();
    assert!(!sol.x.requires_grad());
    assert!(solve(&SolverConfig::Euler { steps: 0 }, &v, &x0, 0.0, 1.0, false).is_err());
    let bad = SolverConfig::Rk45 {
        rtol: 0.0,
        atol: 1e-5,
    };
    assert!(solve(&bad, &v, &x0, 0.0, 1.0, false).is_err());
    assert!(solve(&SolverConfig::Euler { steps: 1 }, &v, &x0, 0.5, 0.5, false).is_err());
    let blowup = |x: &Tensor, _t: &Tensor| x * f64::INFINITY;
    assert!(solve(
        &SolverConfig::Euler { steps: 1 },
        &blowup,
        &x0,
        0.0,
        1.0,
        false
    )
    .is_err());
}

#[test]
fn solver_config_parses_from_toml_style_json() {
    let c: SolverConfig = serde_json::from_str(r#"{"kind":"heun","steps":8}"#).unwrap();
    assert_eq!(c, SolverConfig::Heun { steps: 8 });
    // An adaptive solver with a step count cannot be written.
    assert!(serde_json::from_str::<SolverConfig>(
        r#"{"kind":"rk45","rtol":1e-5,"atol":1e-5,"steps":3}"#
    )
    .is_err());
    let _ = Kind::Double;
}
