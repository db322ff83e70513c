//! ODE time grids. A grid is a plain `Vec<f64>` of increasing (forward) or decreasing (backward) times.

/// `steps + 1` equally spaced times from `from` to `to` (either direction); endpoints are exact.
pub fn uniform(from: f64, to: f64, steps: usize) -> Vec<f64> {
    let steps = steps.max(1);
    (0..=steps)
        .map(|i| {
            if i == steps {
                to
            } else {
                from + (to - from) * i as f64 / steps as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_grid_has_exact_endpoints_and_even_spacing() {
        let g = uniform(1e-3, 1.0, 7);
        assert_eq!(g.len(), 8);
        assert_eq!(g[0], 1e-3);
        assert_eq!(g[7], 1.0);
        let dt = (1.0 - 1e-3) / 7.0;
        for w in g.windows(2) {
            assert!((w[1] - w[0] - dt).abs() < 1e-12);
        }
    }

    #[test]
    fn backward_grid_decreases() {
        let g = uniform(1.0, 0.0, 4);
        assert_eq!(g, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    }
}
