//! Parity of the U-shaped time distribution with rfpp's `t_dist.py` (case `u_shaped_t`).

#[path = "../../../tests/support/parity.rs"]
mod support;

use rand::SeedableRng;
use slimflow_schedules::{Density, TimeDist, TimeDistribution};

fn f64_tensor(st: &safetensors::SafeTensors, key: &str) -> Vec<f64> {
    let view = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(view.dtype(), safetensors::Dtype::F64, "{key}");
    view.data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect()
}

fn close(actual: f64, expected: f64, atol: f64, rtol: f64) -> bool {
    (actual - expected).abs() <= atol + rtol * expected.abs()
}

#[test]
fn u_shaped_matches_rfpp_reference() {
    let Some(dir) = support::parity_dir() else {
        return;
    };
    let bytes = std::fs::read(dir.join("u_shaped_t.io.safetensors")).expect("read io file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse io file");
    let levels = f64_tensor(&st, "input.levels");
    let grid = f64_tensor(&st, "input.t_grid");
    for (a, tag) in [(4.0, "a4"), (2.0, "a2")] {
        let d = TimeDist::UShaped { a };
        let quantiles = f64_tensor(&st, &format!("output.analytic_quantiles_{tag}"));
        for (p, q) in levels.iter().zip(&quantiles) {
            assert!(close(d.icdf(*p), *q, 1e-12, 1e-10), "{tag} quantile {p}");
        }
        let pdf = f64_tensor(&st, &format!("output.pdf_{tag}"));
        let cdf = f64_tensor(&st, &format!("output.cdf_{tag}"));
        for ((t, p), c) in grid.iter().zip(&pdf).zip(&cdf) {
            assert!(close(d.pdf(*t), *p, 1e-12, 1e-10), "{tag} pdf at {t}");
            assert!(close(d.cdf(*t), *c, 1e-12, 1e-10), "{tag} cdf at {t}");
        }
        // Statistical: our sampler's empirical quantiles against the reference's, 5 σ rule.
        let n = 200_000usize;
        let mut s = d.sample(&mut rand_chacha::ChaCha20Rng::seed_from_u64(17), n);
        s.sort_by(|x, y| x.total_cmp(y));
        let reference = f64_tensor(&st, &format!("output.empirical_quantiles_{tag}"));
        let stderr = f64_tensor(&st, &format!("output.quantile_stderr_{tag}"));
        let n_ref = 1_000_000f64;
        for ((p, q_ref), se) in levels.iter().zip(&reference).zip(&stderr) {
            let pos = p * (n - 1) as f64;
            let (lo, frac) = (pos.floor() as usize, pos.fract());
            let q = s[lo] + frac * (s[(lo + 1).min(n - 1)] - s[lo]);
            let bound = 5.0 * (1.0 + n_ref / n as f64).sqrt() * se;
            assert!((q - q_ref).abs() <= bound, "{tag} empirical quantile {p}");
        }
    }
}
