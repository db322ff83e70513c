//! Adaptive Dormand–Prince 5(4) (Dormand & Prince 1980) with scipy's step-size control, so that
//! tolerances mean what they mean in RectifiedFlow's `scipy.integrate.solve_ivp(method='RK45')`:
//! the whole batch is one system; error norm RMS(err / (atol + rtol·max(|y|, |y_new|))).
//!
//! Ending at an excluded end of the field's domain (the EDM wrapper at t = 1), it integrates to the
//! end's nearest evaluation time and finishes with one Euler step, the field's prediction of the
//! endpoint; one more NFE.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::solver::{Solution, Trace};
use crate::velocity::Field;

const C: [f64; 6] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0];
const A: [[f64; 5]; 6] = [
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [1.0 / 5.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0],
    [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
        0.0,
    ],
    [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
];
/// 5th-order weights.
const B: [f64; 6] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
];
/// Error weights (5th minus 4th order), including the FSAL stage k7.
const E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];
const SAFETY: f64 = 0.9;
const MIN_FACTOR: f64 = 0.2;
const MAX_FACTOR: f64 = 10.0;
const MAX_STEPS: usize = 100_000;

fn rms(x: &Tensor) -> f64 {
    x.to_kind(Kind::Double)
        .square()
        .mean(Kind::Double)
        .sqrt()
        .double_value(&[])
}

pub(crate) fn solve(
    field: &Field,
    x: &Tensor,
    from: f64,
    to: f64,
    rtol: f64,
    atol: f64,
    capture: bool,
) -> Result<Solution> {
    let dir = (to - from).signum();
    let mut trace = Trace::new(capture, from, x);
    let (y, t) = match field.domain().excluded_end(to) {
        Some(end) => {
            let near = end.last_evaluation();
            // Already closer to the end than its nearest evaluation: only the final Euler step.
            let (y, t) = if dir * (near - from) > 0.0 {
                integrate(field, x, from, near, rtol, atol, &mut trace)?
            } else {
                (x.shallow_clone(), from)
            };
            let y = &y + field.at(&y, t)? * (to - t);
            trace.push(to, &y);
            (y, to)
        }
        None => integrate(field, x, from, to, rtol, atol, &mut trace)?,
    };
    debug_assert_eq!(t, to);
    Ok(trace.finish(y, field.nfe()))
}

/// Dormand–Prince from `from` to `to`, every evaluation inside [from, to]; returns (y(to), to).
fn integrate(
    field: &Field,
    x: &Tensor,
    from: f64,
    to: f64,
    rtol: f64,
    atol: f64,
    trace: &mut Trace,
) -> Result<(Tensor, f64)> {
    let dir = (to - from).signum();
    let (lo, hi) = (from.min(to), from.max(to));
    let mut y = x.shallow_clone();
    let mut t = from;
    // Stage times are clamped to the span: t + c·h may round past `to` by an ulp, and the field
    // may not be defined there.
    let f = |y: &Tensor, t: f64| field.at(y, t.clamp(lo, hi));
    let mut k0 = f(&y, t)?;

    // Initial step (Hairer, Nørsett & Wanner, II.4; scipy `select_initial_step`).
    let scale = y.abs() * rtol + atol;
    let d0 = rms(&(&y / &scale));
    let d1 = rms(&(&k0 / &scale));
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    };
    // As scipy ≥ 1.11: the trial step stays inside the interval (the field may end there).
    let h0 = h0.min((to - from).abs());
    let y1 = &y + &k0 * (dir * h0);
    let k1 = f(&y1, t + dir * h0)?;
    let d2 = rms(&((&k1 - &k0) / &scale)) / h0;
    let h1 = if d1.max(d2) <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(1.0 / 5.0)
    };
    let mut h = (100.0 * h0).min(h1).min((to - from).abs());

    let mut steps = 0usize;
    while dir * (to - t) > 0.0 {
        steps += 1;
        if steps > MAX_STEPS {
            return Err(Error::TooManySteps {
                to,
                at: t,
                max_steps: MAX_STEPS,
            });
        }
        let min_step = 10.0 * (f64::EPSILON * t.abs()).max(f64::MIN_POSITIVE);
        if h < min_step {
            return Err(Error::TooManySteps {
                to,
                at: t,
                max_steps: steps,
            });
        }
        if h > (to - t).abs() {
            h = (to - t).abs();
        }
        let hs = dir * h;
        let mut k: Vec<Tensor> = Vec::with_capacity(7);
        k.push(k0.shallow_clone());
        for s in 1..6 {
            let mut dy = k[0].zeros_like();
            for (j, kj) in k.iter().enumerate().take(s) {
                if A[s][j] != 0.0 {
                    dy += kj * A[s][j];
                }
            }
            k.push(f(&(&y + dy * hs), t + C[s] * hs)?);
        }
        let mut dy = k[0].zeros_like();
        for (s, ks) in k.iter().enumerate() {
            if B[s] != 0.0 {
                dy += ks * B[s];
            }
        }
        let y_new = &y + dy * hs;
        let t_new = if (to - (t + hs)) * dir < 1e-15 {
            to
        } else {
            t + hs
        };
        let k_new = f(&y_new, t_new)?;
        k.push(k_new.shallow_clone());
        let mut err = k[0].zeros_like();
        for (s, ks) in k.iter().enumerate() {
            if E[s] != 0.0 {
                err += ks * E[s];
            }
        }
        let scale = y.abs().maximum(&y_new.abs()) * rtol + atol;
        let err_norm = rms(&(err * hs / scale));
        if !err_norm.is_finite() {
            return Err(Error::NonFinite { at: t });
        }
        if err_norm < 1.0 {
            let factor = if err_norm == 0.0 {
                MAX_FACTOR
            } else {
                (SAFETY * err_norm.powf(-0.2)).min(MAX_FACTOR)
            };
            y = y_new;
            t = t_new;
            k0 = k_new;
            trace.push(t, &y);
            h *= factor;
        } else {
            h *= (SAFETY * err_norm.powf(-0.2)).max(MIN_FACTOR);
        }
    }
    Ok((y, t))
}
