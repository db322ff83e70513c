//! Field domains (open ends), rfpp's samplers and EDM's sampler, on analytic fields with
//! closed-form or hand-computed answers.

use std::cell::{Cell, RefCell};

use slimflow_sampling::edm::{self, karras_sigmas};
use slimflow_sampling::{
    evaluate, solve, Bound, Denoiser, Domain, EdmSamplerConfig, Error, RfppMethod, RfppSampler,
    SolverConfig, Velocity, VelocityDenoiser, WithDomain,
};
use tch::Tensor;

fn batch(values: &[f64]) -> Tensor {
    Tensor::from_slice(values).reshape([values.len() as i64, 1])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The EDM wrapper's shape of domain: open at both ends, reached from 0.01 and 0.99.
fn open_both() -> Domain {
    Domain::new(
        Bound::Open {
            at: 0.0,
            near: 0.01,
        },
        Bound::Open {
            at: 1.0,
            near: 0.99,
        },
    )
    .unwrap()
}

/// A field that records every time it is evaluated at.
struct Recorder<F> {
    f: F,
    domain: Domain,
    times: RefCell<Vec<f64>>,
}

impl<F: Fn(&Tensor, &Tensor) -> Tensor> Recorder<F> {
    fn new(f: F, domain: Domain) -> Self {
        Recorder {
            f,
            domain,
            times: RefCell::new(Vec::new()),
        }
    }
}

impl<F: Fn(&Tensor, &Tensor) -> Tensor> Velocity for Recorder<F> {
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Tensor {
        self.times.borrow_mut().push(t.double_value(&[0]));
        (self.f)(x, t)
    }
    fn domain(&self) -> Domain {
        self.domain
    }
}

fn decay(x: &Tensor, _t: &Tensor) -> Tensor {
    -x
}

#[test]
fn heun_skips_the_correction_when_the_last_point_is_excluded() {
    let x0 = batch(&[1.0, -2.0]);
    let (from, n) = (0.2, 4);
    let h = (1.0 - from) / n as f64;
    let heun_factor = 1.0 - h + h * h / 2.0;
    // Open at 1: three Heun steps, then the Euler prediction (2N − 1 NFE).
    let open = Recorder::new(decay, open_both());
    let sol = solve(
        &SolverConfig::Heun { steps: n },
        &open,
        &x0,
        from,
        1.0,
        false,
    )
    .unwrap();
    assert_eq!(sol.nfe, 2 * n - 1);
    assert_eq!(open.times.borrow().len(), sol.nfe);
    assert!(open.times.borrow().iter().all(|&t| t < 1.0));
    let expected = &x0 * (heun_factor.powi(3) * (1.0 - h));
    assert!(max_abs_diff(&sol.x, &expected) < 1e-12);
    assert_eq!(
        SolverConfig::Heun { steps: n }.nfe(&open_both(), 1.0),
        Some(7)
    );
    // Closed: the correction on every step.
    let closed = Recorder::new(decay, Domain::UNIT);
    let sol = solve(
        &SolverConfig::Heun { steps: n },
        &closed,
        &x0,
        from,
        1.0,
        false,
    )
    .unwrap();
    assert_eq!(sol.nfe, 2 * n);
    assert_eq!(*closed.times.borrow().last().unwrap(), 1.0);
    assert!(max_abs_diff(&sol.x, &(&x0 * heun_factor.powi(4))) < 1e-12);
    // Backwards to the open end at 0: dx/dt = −x backwards grows; the last step is Euler.
    let back = Recorder::new(decay, open_both());
    let sol = solve(
        &SolverConfig::Heun { steps: 2 },
        &back,
        &x0,
        0.8,
        0.0,
        false,
    )
    .unwrap();
    assert_eq!(sol.nfe, 3);
    assert!(back.times.borrow().iter().all(|&t| t > 0.0));
    let h = -0.4;
    let expected = &x0 * ((1.0 - h + h * h / 2.0) * (1.0 - h));
    assert!(max_abs_diff(&sol.x, &expected) < 1e-12);
}

#[test]
fn euler_and_x_pred_never_evaluate_at_an_excluded_end() {
    let x0 = batch(&[0.5]);
    for cfg in [
        SolverConfig::Euler { steps: 5 },
        SolverConfig::XPred { steps: 5 },
    ] {
        let f = Recorder::new(decay, open_both());
        let sol = solve(&cfg, &f, &x0, 0.5, 1.0, false).unwrap();
        assert_eq!(sol.nfe, 5);
        assert_eq!(*f.times.borrow(), vec![0.5, 0.6, 0.7, 0.8, 0.9]);
    }
}

#[test]
fn rk45_ends_at_an_excluded_end_with_one_euler_step() {
    let x0 = batch(&[1.0, 3.0]);
    let lower_closed = Domain::new(
        Bound::Closed(0.0),
        Bound::Open {
            at: 1.0,
            near: 0.99,
        },
    )
    .unwrap();
    let f = Recorder::new(decay, lower_closed);
    let cfg = SolverConfig::Rk45 {
        rtol: 1e-10,
        atol: 1e-10,
    };
    let sol = solve(&cfg, &f, &x0, 0.0, 1.0, true).unwrap();
    let times = f.times.borrow();
    assert_eq!(sol.nfe, times.len());
    assert_eq!(times.iter().cloned().fold(f64::MIN, f64::max), 0.99);
    assert_eq!(
        *times.last().unwrap(),
        0.99,
        "the last evaluation is the Euler step's"
    );
    // x(0.99) = e^{−0.99}·x0, then x + 0.01·(−x).
    let expected = &x0 * ((-0.99f64).exp() * 0.99);
    assert!(max_abs_diff(&sol.x, &expected) < 1e-9);
    let path = sol.path.unwrap();
    assert_eq!(path.last().unwrap().0, 1.0);
    assert_eq!(path[path.len() - 2].0, 0.99);
    // Starting beyond the nearest evaluation: only the Euler step.
    let f = Recorder::new(decay, lower_closed);
    let sol = solve(&cfg, &f, &x0, 0.995, 1.0, false).unwrap();
    assert_eq!(sol.nfe, 1);
    assert!(max_abs_diff(&sol.x, &(&x0 * 0.995)) < 1e-15);
}

#[test]
fn excluded_starts_and_times_outside_the_domain_are_errors() {
    let x = batch(&[1.0]);
    let f = WithDomain {
        field: decay,
        domain: open_both(),
    };
    let all = [
        SolverConfig::Euler { steps: 2 },
        SolverConfig::Heun { steps: 2 },
        SolverConfig::Rk45 {
            rtol: 1e-5,
            atol: 1e-5,
        },
        SolverConfig::Rfpp {
            method: RfppMethod::Euler,
            sampler: RfppSampler::Default,
            nfe: 2,
        },
    ];
    for cfg in all {
        let err = solve(&cfg, &f, &x, 1.0, 0.5, false).unwrap_err();
        assert!(
            matches!(err, Error::ExcludedStart { t, .. } if t == 1.0),
            "{cfg:?}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("t = 1") && msg.contains("(0, 1)"), "{msg}");
        assert!(matches!(
            solve(&cfg, &f, &x, 0.0, 1.0, false),
            Err(Error::ExcludedStart { .. })
        ));
        // Beyond the domain, on a closure's default [0, 1] too.
        assert!(matches!(
            solve(&cfg, &f, &x, 0.5, 1.5, false),
            Err(Error::OutsideDomain { .. })
        ));
        assert!(matches!(
            solve(&cfg, &decay, &x, -0.5, 1.0, false),
            Err(Error::OutsideDomain { .. })
        ));
    }
    for cfg in [
        SolverConfig::XPred { steps: 2 },
        SolverConfig::Rfpp {
            method: RfppMethod::Heun,
            sampler: RfppSampler::New,
            nfe: 3,
        },
    ] {
        assert!(matches!(
            solve(&cfg, &f, &x, 0.0, 1.0, false),
            Err(Error::ExcludedStart { .. })
        ));
    }
    // Explicit evaluation.
    assert!(evaluate(&f, &x, 0.5).is_ok());
    let err = evaluate(&f, &x, 1.0).unwrap_err().to_string();
    assert!(err.contains("t = 1") && err.contains("(0, 1)"), "{err}");
    assert!(evaluate(&decay, &x, 1.0).is_ok());
    assert!(evaluate(&decay, &x, 1.0 + 1e-9).is_err());
}

/// rfpp's `sample` + `sample_ode_generative` transcribed in rfpp's own variables (t_r = 1 − t, the
/// network's velocity v_r = −v, x-prediction z − v_r·t_r), on one scalar, for checking our
/// translation.
fn rfpp_reference(
    v: impl Fn(f64, f64) -> f64,
    z: f64,
    nfe: usize,
    heun: bool,
    new: bool,
) -> (f64, usize) {
    let model = |x: f64, t_r: f64| -v(x, 1.0 - t_r);
    let n = if heun { nfe.div_ceil(2) } else { nfe };
    let mut sched: Vec<f64> = (1..=n).rev().map(|i| i as f64 / n as f64).collect();
    sched.push(0.0);
    sched[0] = 1.0 - 1e-5;
    let z1 = z * (1.0 - 1e-5);
    let mut x = z1;
    let mut calls = 0;
    for i in 0..n {
        let (t, t_next) = (sched[i], sched[i + 1]);
        let dt = t_next - t;
        let mut vt = model(x, t);
        calls += 1;
        let x0hat = x - vt * t;
        if heun && i < n - 1 {
            let x_next = if new {
                (1.0 - t_next) * x0hat + t_next * z1
            } else {
                x + vt * dt
            };
            vt = (vt + model(x_next, t_next)) / 2.0;
            calls += 1;
        }
        let x0hat = x - vt * t;
        x = if new {
            (1.0 - t_next) * x0hat + t_next * z1
        } else {
            x + vt * dt
        };
    }
    (x, calls)
}

#[test]
fn rfpp_samplers_match_rfpps_loop_in_its_own_time() {
    // A non-autonomous linear field: v = −x + 2t.
    let v_scalar = |x: f64, t: f64| -x + 2.0 * t;
    let v = |x: &Tensor, t: &Tensor| -x + t.reshape([-1, 1]) * 2.0;
    let zs = [0.7, -1.3, 2.1];
    for (method, nfes) in [
        (RfppMethod::Euler, vec![1, 2, 4, 7]),
        (RfppMethod::Heun, vec![1, 3, 5, 9]),
    ] {
        for sampler in [RfppSampler::Default, RfppSampler::New] {
            for &nfe in &nfes {
                let cfg = SolverConfig::Rfpp {
                    method,
                    sampler,
                    nfe,
                };
                let calls = Cell::new(0usize);
                let counted = |x: &Tensor, t: &Tensor| {
                    calls.set(calls.get() + 1);
                    v(x, t)
                };
                let sol = solve(&cfg, &counted, &batch(&zs), 1e-5, 1.0, false).unwrap();
                assert_eq!(sol.nfe, nfe, "{cfg:?}");
                assert_eq!(calls.get(), nfe);
                assert_eq!(cfg.nfe(&Domain::UNIT, 1.0), Some(nfe));
                for (i, &z) in zs.iter().enumerate() {
                    let (want, ref_calls) = rfpp_reference(
                        v_scalar,
                        z,
                        nfe,
                        method == RfppMethod::Heun,
                        sampler == RfppSampler::New,
                    );
                    assert_eq!(ref_calls, nfe);
                    let got = sol.x.double_value(&[i as i64, 0]);
                    assert!((got - want).abs() < 1e-12, "{cfg:?} z {z}: {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn rfpp_hand_computed_values() {
    let z = batch(&[1.0, -0.5]);
    let z0 = &z * (1.0 - 1e-5);
    // Heun with 3 NFE on dx/dt = −x: grid [1e-5, 1/2, 1]; one Heun step of h = 1/2 − 1e-5, then
    // Euler over 1/2.
    let cfg = SolverConfig::Rfpp {
        method: RfppMethod::Heun,
        sampler: RfppSampler::Default,
        nfe: 3,
    };
    let sol = solve(&cfg, &decay, &z, 1e-5, 1.0, true).unwrap();
    let h: f64 = 0.5 - 1e-5;
    assert!(max_abs_diff(&sol.x, &(&z0 * ((1.0 - h + h * h / 2.0) * 0.5))) < 1e-15);
    let times: Vec<f64> = sol.path.unwrap().iter().map(|p| p.0).collect();
    assert_eq!(times, vec![1e-5, 0.5, 1.0]);
    // Euler on a constant field c: the state moves by c·(1 − 1e-5) in total, from (1 − 1e-5)·z.
    let c = |x: &Tensor, _t: &Tensor| x.ones_like() * 3.0;
    let cfg = SolverConfig::Rfpp {
        method: RfppMethod::Euler,
        sampler: RfppSampler::Default,
        nfe: 4,
    };
    let sol = solve(&cfg, &c, &z, 1e-5, 1.0, false).unwrap();
    assert!(max_abs_diff(&sol.x, &(&z0 + 3.0 * (1.0 - 1e-5))) < 1e-14);
    // "new" with 2 Euler steps on the constant field: x̂1 = z0 + (1 − 1e-5)·c, re-noised at 1/2:
    // x = z0 + (1 − 1e-5)·c/2, then x̂1 = x + c/2.
    let cfg = SolverConfig::Rfpp {
        method: RfppMethod::Euler,
        sampler: RfppSampler::New,
        nfe: 2,
    };
    let sol = solve(&cfg, &c, &z, 1e-5, 1.0, false).unwrap();
    assert!(max_abs_diff(&sol.x, &(&z0 + 3.0 * ((1.0 - 1e-5) / 2.0 + 0.5))) < 1e-14);
    // The ideal field of a straight path to `target` is solved exactly by the "new" sampler.
    let target = batch(&[0.25, 4.0]);
    let straight = |x: &Tensor, t: &Tensor| (&target - x) / (1.0 - t.reshape([-1, 1]));
    for method in [RfppMethod::Euler, RfppMethod::Heun] {
        let cfg = SolverConfig::Rfpp {
            method,
            sampler: RfppSampler::New,
            nfe: 5,
        };
        let sol = solve(&cfg, &straight, &z, 1e-5, 1.0, false).unwrap();
        assert!(max_abs_diff(&sol.x, &target) < 1e-12, "{method:?}");
    }
    // Inversion (backwards, rfpp's start t_r = 1e-3): grid [0.999, 2/3, 1/3, 0], no scaling.
    let cfg = SolverConfig::Rfpp {
        method: RfppMethod::Euler,
        sampler: RfppSampler::Default,
        nfe: 3,
    };
    let sol = solve(&cfg, &decay, &z, 1.0 - 1e-3, 0.0, true).unwrap();
    let times: Vec<f64> = sol.path.unwrap().iter().map(|p| p.0).collect();
    for (got, want) in times.iter().zip([1.0 - 1e-3, 2.0 / 3.0, 1.0 / 3.0, 0.0]) {
        assert!((got - want).abs() < 1e-15, "{times:?}");
    }
    assert_eq!(times.len(), 4);
    let f = (1.0 + (1.0 - 1e-3 - 2.0 / 3.0)) * (1.0 + 1.0 / 3.0) * (1.0 + 1.0 / 3.0);
    assert!(max_abs_diff(&sol.x, &(&z * f)) < 1e-14);
    // Rules rfpp enforces.
    let even_heun = SolverConfig::Rfpp {
        method: RfppMethod::Heun,
        sampler: RfppSampler::Default,
        nfe: 4,
    };
    assert!(even_heun.validate().is_err());
    let new = SolverConfig::Rfpp {
        method: RfppMethod::Euler,
        sampler: RfppSampler::New,
        nfe: 2,
    };
    assert!(solve(&new, &decay, &z, 1.0, 0.0, false).is_err());
    // A start outside rfpp's first cell.
    assert!(solve(&cfg, &decay, &z, 0.5, 1.0, false).is_err());
}

/// Gaussian data N(0, s²): D(x, σ) = x·s²/(s² + σ²); the flow is x(σ) = x0·sqrt((s² + σ²)/(s² + σ0²)).
struct Gaussian {
    s: f64,
    sigmas: RefCell<Vec<f64>>,
}

impl Denoiser for Gaussian {
    fn denoise(&self, x: &Tensor, sigma: &Tensor) -> Tensor {
        assert_eq!(
            x.kind(),
            tch::Kind::Double,
            "EDM's sampler keeps a float64 state"
        );
        self.sigmas.borrow_mut().push(sigma.double_value(&[0]));
        let s2 = self.s * self.s;
        x * (s2 / (sigma.square() + s2)).reshape([-1, 1])
    }
}

#[test]
fn edm_sampler_follows_the_exact_flow_of_gaussian_data() {
    let z = Tensor::from_slice(&[0.3f32, -1.1, 2.0]).reshape([3, 1]);
    let s = 0.5;
    let exact = z.to_kind(tch::Kind::Double) * (80.0 * s / (s * s + 80.0f64 * 80.0).sqrt());
    let err = |cfg: &EdmSamplerConfig| {
        let d = Gaussian {
            s,
            sigmas: RefCell::new(Vec::new()),
        };
        let sol = edm::sample(&d, &z, cfg, false).unwrap();
        assert_eq!(sol.nfe, cfg.nfe());
        assert_eq!(sol.nfe, d.sigmas.borrow().len());
        assert!(
            d.sigmas.borrow().iter().all(|&s| s > 0.0),
            "σ = 0 evaluated"
        );
        assert_eq!(sol.x.kind(), tch::Kind::Float);
        max_abs_diff(&sol.x.to_kind(tch::Kind::Double), &exact)
    };
    let heun = |steps| EdmSamplerConfig {
        steps,
        ..Default::default()
    };
    assert_eq!(heun(18).nfe(), 35);
    let euler18 = EdmSamplerConfig {
        heun: false,
        ..heun(18)
    };
    // Reference values of this discretisation (scalar float64 recurrence): Heun 18 is 0.055 off
    // for z = 2, Euler 18 0.154; Heun converges at second order on the Karras grid.
    let (e18, e50, e200) = (err(&heun(18)), err(&heun(50)), err(&heun(200)));
    let e_euler = err(&euler18);
    assert!((e18 - 0.05527).abs() < 1e-4, "Heun 18: {e18}");
    assert!((e_euler - 0.15392).abs() < 1e-4, "Euler 18: {e_euler}");
    assert!(e200 < 5e-4 && e50 / e200 > 8.0, "{e50} → {e200}");
    // The σ levels evaluated: Heun evaluates σ_0..σ_{N−1} and the corrections at σ_1..σ_{N−1}.
    let d = Gaussian {
        s,
        sigmas: RefCell::new(Vec::new()),
    };
    let cfg = EdmSamplerConfig {
        steps: 3,
        ..Default::default()
    };
    edm::sample(&d, &z, &cfg, false).unwrap();
    let g = karras_sigmas(3, 0.002, 80.0, 7.0);
    assert_eq!(*d.sigmas.borrow(), vec![g[0], g[1], g[1], g[2], g[2]]);
}

#[test]
fn edm_sampler_is_exact_on_a_point_mass_and_converts_at_its_boundary() {
    // Data = y: D = y, the flow is linear in σ, so Euler is exact even in one step.
    let y = batch(&[0.5, -0.25]);
    let z = batch(&[1.0, 2.0]);
    struct Point(Tensor);
    impl Denoiser for Point {
        fn denoise(&self, x: &Tensor, _sigma: &Tensor) -> Tensor {
            self.0.expand_as(x)
        }
    }
    for cfg in [
        EdmSamplerConfig {
            steps: 1,
            heun: false,
            ..Default::default()
        },
        EdmSamplerConfig {
            steps: 4,
            ..Default::default()
        },
    ] {
        let sol = edm::sample(&Point(y.copy()), &z, &cfg, true).unwrap();
        assert!(max_abs_diff(&sol.x, &y) < 1e-12, "{cfg:?}");
        let path = sol.path.unwrap();
        // Our time at the boundary: t = 1/(1 + σ), x_ours = x_σ/(1 + σ); x_0 = z·σ_max.
        assert!((path[0].0 - 1.0 / 81.0).abs() < 1e-15);
        assert!(max_abs_diff(&path[0].1, &(&z * (80.0 / 81.0))) < 1e-12);
        assert_eq!(path.last().unwrap().0, 1.0);
    }
    // The same through a velocity: the straight field to y has D = x + (1 − t)·v = y.
    let f = Recorder::new(
        |x: &Tensor, t: &Tensor| (&y - x) / (1.0 - t.reshape([-1, 1])),
        Domain::UNIT,
    );
    let cfg = SolverConfig::Edm(EdmSamplerConfig {
        steps: 6,
        ..Default::default()
    });
    let sol = solve(&cfg, &f, &z, 1e-3, 1.0, false).unwrap();
    assert_eq!(sol.nfe, 11);
    assert!(max_abs_diff(&sol.x, &y) < 1e-12);
    let times = f.times.borrow();
    assert_eq!(times.len(), 11);
    assert!((times[0] - 1.0 / 81.0).abs() < 1e-15);
    assert!(times.iter().all(|t| (1.0 / 81.0 - 1e-15..1.0).contains(t)));
    // Direction and end are fixed.
    assert!(solve(&cfg, &f, &z, 1.0, 1e-3, false).is_err());
    assert!(solve(&cfg, &f, &z, 1e-3, 0.9, false).is_err());
}

#[test]
fn edm_sampler_clips_its_range_to_the_field() {
    // A field defined on [0.5, 1] supports σ ≤ 1 only: the grid starts at σ_max = 1 (t = 0.5).
    let f = Recorder::new(decay, Domain::closed(0.5, 1.0).unwrap());
    let d = VelocityDenoiser(&f);
    assert_eq!(d.sigma_range(), (0.0, 1.0));
    let sol = edm::sample(&d, &batch(&[1.0]), &EdmSamplerConfig::default(), false).unwrap();
    assert_eq!(sol.nfe, 35);
    assert_eq!(f.times.borrow()[0], 0.5);
    // The EDM wrapper's domain maps to EDM's own range.
    let edm_like = Domain::new(
        Bound::Open {
            at: 0.0,
            near: 1.0 / 81.0,
        },
        Bound::Open {
            at: 1.0,
            near: 1.0 / 1.002,
        },
    )
    .unwrap();
    let (lo, hi) = edm::sigma_range_of(&edm_like);
    assert!((lo - 0.002).abs() < 1e-12 && (hi - 80.0).abs() < 1e-9);
}

#[test]
fn recipe_configs_parse_validate_and_label() {
    let c: SolverConfig = serde_json::from_str(r#"{"kind":"edm"}"#).unwrap();
    assert_eq!(c, SolverConfig::Edm(EdmSamplerConfig::default()));
    assert_eq!(c.label(), "edm_heun-18");
    let c: SolverConfig = serde_json::from_str(r#"{"kind":"edm","steps":5,"heun":false}"#).unwrap();
    assert_eq!(c.label(), "edm_euler-5");
    assert_eq!(c.nfe(&Domain::UNIT, 1.0), Some(5));
    assert!(serde_json::from_str::<SolverConfig>(r#"{"kind":"edm","s_churn":1}"#).is_err());
    let bad: SolverConfig = serde_json::from_str(r#"{"kind":"edm","sigma_min":0}"#).unwrap();
    assert!(bad.validate().is_err());
    let c: SolverConfig =
        serde_json::from_str(r#"{"kind":"rfpp","method":"heun","sampler":"new","nfe":9}"#).unwrap();
    assert_eq!(
        c,
        SolverConfig::Rfpp {
            method: RfppMethod::Heun,
            sampler: RfppSampler::New,
            nfe: 9
        }
    );
    assert_eq!(c.label(), "rfpp_new_heun-9");
    let c: SolverConfig = serde_json::from_str(r#"{"kind":"rfpp","nfe":20}"#).unwrap();
    assert_eq!(c.label(), "rfpp_euler-20");
    assert!(serde_json::from_str::<SolverConfig>(r#"{"kind":"rfpp","steps":3}"#).is_err());
    let even: SolverConfig =
        serde_json::from_str(r#"{"kind":"rfpp","method":"heun","nfe":4}"#).unwrap();
    assert!(even.validate().unwrap_err().to_string().contains("odd"));
}

#[test]
fn recipe_configs_read_from_toml_as_documented() {
    #[derive(serde::Deserialize)]
    struct Stage {
        solver: SolverConfig,
    }
    let parse = |text: &str| toml::from_str::<Stage>(text).map(|s| s.solver);
    assert_eq!(
        parse(
            r#"solver = { kind = "edm", steps = 18, rho = 7, sigma_min = 0.002, sigma_max = 80, heun = true }"#
        )
        .unwrap(),
        SolverConfig::Edm(EdmSamplerConfig::default())
    );
    assert_eq!(
        parse(r#"solver = { kind = "edm", steps = 5, heun = false }"#).unwrap(),
        SolverConfig::Edm(EdmSamplerConfig {
            steps: 5,
            heun: false,
            ..Default::default()
        })
    );
    assert_eq!(
        parse(r#"solver = { kind = "rfpp", method = "heun", sampler = "new", nfe = 9 }"#).unwrap(),
        SolverConfig::Rfpp {
            method: RfppMethod::Heun,
            sampler: RfppSampler::New,
            nfe: 9
        }
    );
    assert!(parse(r#"solver = { kind = "edm", S_churn = 0 }"#).is_err());
    assert!(parse(r#"solver = { kind = "rfpp", method = "midpoint", nfe = 3 }"#).is_err());
}
