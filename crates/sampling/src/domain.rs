//! Where a velocity field may be evaluated.
//!
//! Most fields are defined on the whole closed interval [0, 1]. Some are not: rfpp's EDM-velocity
//! wrapper divides by σ = (1 − t)/t, which is 0 at t = 1, and takes ln σ, which is +∞ at t = 0. Such a
//! field declares those ends *open*. An open end still has to be reachable — a sampler must end at
//! the data — so it carries the nearest time a solver that must reach it evaluates at; the solver
//! then finishes with one Euler step, which for a velocity field is exactly the prediction of the
//! endpoint (x̂1 = x + (1 − t)·v at t = 1). For the EDM wrapper these nearest times are EDM's own
//! noise range: σ_min = 0.002 at t = 1 and σ_max = 80 at t = 0.

use std::fmt;

use crate::error::{Error, Result};

/// One end of a [`Domain`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// The field may be evaluated at this time.
    Closed(f64),
    /// The field is undefined at `at`; a solver that must reach `at` evaluates no closer than
    /// `near` and takes a single Euler (prediction) step from there.
    Open {
        /// The excluded end.
        at: f64,
        /// The nearest time a solver that must reach `at` evaluates at.
        near: f64,
    },
}

impl Bound {
    /// The time of this end.
    pub fn at(&self) -> f64 {
        match *self {
            Bound::Closed(t) | Bound::Open { at: t, .. } => t,
        }
    }

    /// Whether the end itself is excluded.
    pub fn is_open(&self) -> bool {
        matches!(self, Bound::Open { .. })
    }

    /// The last time a solver evaluates at before reaching this end: the end itself when closed.
    pub fn last_evaluation(&self) -> f64 {
        match *self {
            Bound::Closed(t) => t,
            Bound::Open { near, .. } => near,
        }
    }
}

/// The time interval on which a field may be evaluated, each end closed or open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Domain {
    lo: Bound,
    hi: Bound,
}

impl Default for Domain {
    fn default() -> Self {
        Domain::UNIT
    }
}

impl Domain {
    /// The closed interval [0, 1]: every time of a rectified flow, both ends included.
    pub const UNIT: Domain = Domain {
        lo: Bound::Closed(0.0),
        hi: Bound::Closed(1.0),
    };

    /// The interval from `lo` to `hi`. Fails unless lo < hi (both finite) and every open end's
    /// nearest evaluation lies strictly inside the interval.
    pub fn new(lo: Bound, hi: Bound) -> Result<Domain> {
        let (a, b) = (lo.at(), hi.at());
        let bad = |reason: String| Error::InvalidSetting {
            name: "domain",
            reason,
        };
        if !(a.is_finite() && b.is_finite() && a < b) {
            return Err(bad(format!("need finite ends lo < hi, got {a} and {b}")));
        }
        for end in [lo, hi] {
            if let Bound::Open { at, near } = end {
                if !(near > a && near < b) {
                    return Err(bad(format!(
                        "the nearest evaluation {near} of the open end {at} must lie strictly \
                         between {a} and {b}"
                    )));
                }
            }
        }
        Ok(Domain { lo, hi })
    }

    /// The closed interval [lo, hi].
    pub fn closed(lo: f64, hi: f64) -> Result<Domain> {
        Domain::new(Bound::Closed(lo), Bound::Closed(hi))
    }

    /// The lower end (the noise side in slimflow's time).
    pub fn lo(&self) -> Bound {
        self.lo
    }

    /// The upper end (the data side).
    pub fn hi(&self) -> Bound {
        self.hi
    }

    /// Whether the field may be evaluated at `t` (false for NaN).
    pub fn contains(&self, t: f64) -> bool {
        let above = if self.lo.is_open() {
            t > self.lo.at()
        } else {
            t >= self.lo.at()
        };
        let below = if self.hi.is_open() {
            t < self.hi.at()
        } else {
            t <= self.hi.at()
        };
        above && below
    }

    /// Whether `t` lies in the closed hull [lo, hi], i.e. a solve may end there.
    pub fn reaches(&self, t: f64) -> bool {
        t >= self.lo.at() && t <= self.hi.at()
    }

    /// The open end located exactly at `t`, if there is one.
    pub fn excluded_end(&self, t: f64) -> Option<Bound> {
        [self.lo, self.hi]
            .into_iter()
            .find(|b| b.is_open() && b.at() == t)
    }

    /// Whether `t` is an excluded (open) end.
    pub fn excludes(&self, t: f64) -> bool {
        self.excluded_end(t).is_some()
    }

    /// `Ok` when the field may be evaluated at `t`, else the error naming `t` and this domain.
    pub fn check(&self, t: f64) -> Result<()> {
        if self.contains(t) {
            Ok(())
        } else {
            Err(Error::OutsideDomain { t, domain: *self })
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let open = if self.lo.is_open() { '(' } else { '[' };
        let close = if self.hi.is_open() { ')' } else { ']' };
        write!(f, "{open}{}, {}{close}", self.lo.at(), self.hi.at())?;
        let nears: Vec<String> = [self.lo, self.hi]
            .iter()
            .filter_map(|b| match b {
                Bound::Open { at, near } => Some(format!("{at} is reached from {near}")),
                Bound::Closed(_) => None,
            })
            .collect();
        if !nears.is_empty() {
            write!(f, " ({})", nears.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_and_closed_ends() {
        let d = Domain::new(
            Bound::Open { at: 0.0, near: 0.1 },
            Bound::Open { at: 1.0, near: 0.9 },
        )
        .unwrap();
        assert!(!d.contains(0.0) && !d.contains(1.0) && d.contains(0.05) && d.contains(0.95));
        assert!(d.reaches(0.0) && d.reaches(1.0) && !d.reaches(1.5));
        assert!(d.excludes(1.0) && !d.excludes(0.5));
        assert!(!d.contains(f64::NAN));
        assert!(Domain::UNIT.contains(0.0) && Domain::UNIT.contains(1.0));
        assert!(!Domain::UNIT.contains(1.0 + 1e-12));
        assert_eq!(Domain::UNIT.to_string(), "[0, 1]");
        assert_eq!(
            d.to_string(),
            "(0, 1) (0 is reached from 0.1, 1 is reached from 0.9)"
        );
        let err = d.check(1.0).unwrap_err().to_string();
        assert!(err.contains("t = 1") && err.contains("(0, 1)"), "{err}");
    }

    #[test]
    fn invalid_domains_are_refused() {
        assert!(Domain::closed(1.0, 0.0).is_err());
        assert!(Domain::closed(0.0, f64::INFINITY).is_err());
        assert!(Domain::new(Bound::Closed(0.0), Bound::Open { at: 1.0, near: 1.0 }).is_err());
        assert!(Domain::new(
            Bound::Open {
                at: 0.0,
                near: -0.1
            },
            Bound::Closed(1.0)
        )
        .is_err());
    }
}
