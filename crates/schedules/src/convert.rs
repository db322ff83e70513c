//! Conversions between slimflow's time (t = 0 noise, t = 1 data) and the reversed conventions of
//! 2-rectified flow++ (t_r = 1 − t, t_r = 0 data) and EDM (noise level σ, x = x_data + σ·n).
//!
//! This module is the only place such conversions are written; code ported from rfpp or EDM calls
//! it at its boundary.

/// rfpp time t_r = 1 − t.
pub fn to_rfpp_time(t: f64) -> f64 {
    1.0 - t
}

/// Our time t = 1 − t_r from rfpp's t_r.
pub fn from_rfpp_time(t_r: f64) -> f64 {
    1.0 - t_r
}

/// EDM noise level of x_t: σ = t_r / (1 − t_r) = (1 − t)/t, since x_t / t = x1 + ((1 − t)/t)·x0.
pub fn edm_sigma(t: f64) -> f64 {
    (1.0 - t) / t
}

/// Our time for an EDM noise level: t = 1 / (1 + σ).
pub fn t_from_edm_sigma(sigma: f64) -> f64 {
    1.0 / (1.0 + sigma)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        for i in 1..100 {
            let t = i as f64 / 100.0;
            assert!((from_rfpp_time(to_rfpp_time(t)) - t).abs() < 1e-15);
            assert!((t_from_edm_sigma(edm_sigma(t)) - t).abs() < 1e-14);
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(to_rfpp_time(0.0), 1.0);
        assert_eq!(edm_sigma(0.5), 1.0);
        assert!((edm_sigma(0.2) - 4.0).abs() < 1e-15);
        assert!(edm_sigma(1.0) == 0.0);
    }
}
