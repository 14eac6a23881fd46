//! Freshness policy: how long entries live, and when a read refreshes early.
//!
//! DESIGN.md's words: `ttl` is how long an entry is fresh, scaled per write
//! by `jitter` (`fresh_for = ttl × (1 ± jitter)`, so entries written together
//! do not expire together); `stale` is the window after freshness in which
//! the entry may still be served (stale-while-revalidate and fail-safe);
//! `negative_ttl` is how long "not found" is remembered; `lease_ttl` is how
//! long a loader owns a key.
//!
//! Early refresh is XFetch (Vattani et al., "Optimal Probabilistic Cache
//! Stampede Prevention"): a read refreshes a fresh entry when
//! `now − δ·β·ln(r) ≥ fresh_until`, with δ the last load's duration, β the
//! `early_refresh` factor and `r` uniform in (0, 1]. Entries whose load was
//! slow start refreshing earlier; β = 0 turns it off.

use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use std::sync::Mutex;
use std::time::Duration;

/// Freshness and timing settings of one cache.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) ttl: Duration,
    pub(crate) jitter: f64,
    pub(crate) stale: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) load_timeout: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) wait_timeout: Duration,
    pub(crate) early_refresh: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            jitter: 0.1,
            stale: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(5),
            load_timeout: Duration::from_secs(2),
            soft_timeout: None,
            wait_timeout: Duration::from_secs(2),
            early_refresh: 1.0,
        }
    }
}

impl Policy {
    /// Checks that the settings can work together.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.ttl.is_zero() {
            return bad("ttl must be longer than 0".into());
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return bad(format!("jitter {} must be in [0, 1)", self.jitter));
        }
        if !(self.early_refresh.is_finite() && self.early_refresh >= 0.0) {
            return bad(format!(
                "early_refresh {} must be 0 (off) or more",
                self.early_refresh
            ));
        }
        for (name, d) in [
            ("load_timeout", self.load_timeout),
            ("wait_timeout", self.wait_timeout),
        ] {
            if d.is_zero() || d >= self.lease_ttl {
                return bad(format!(
                    "{name} ({d:?}) must be above 0 and shorter than lease_ttl ({:?}), or a slow load would lose its lease mid-way",
                    self.lease_ttl
                ));
            }
        }
        if let Some(soft) = self.soft_timeout {
            if soft >= self.load_timeout {
                return bad(format!(
                    "soft_timeout ({soft:?}) must be shorter than load_timeout ({:?})",
                    self.load_timeout
                ));
            }
        }
        Ok(())
    }

    /// `ttl × (1 ± jitter)` for one write, from `r` uniform in [0, 1).
    pub(crate) fn fresh_for(&self, r: f64) -> Duration {
        let factor = 1.0 + self.jitter * (2.0 * r - 1.0);
        self.ttl.mul_f64(factor.max(0.0))
    }
}

/// XFetch's decision: refresh early when `now + δ·β·(−ln r) ≥ fresh_until`.
/// `r` is uniform in (0, 1].
pub(crate) fn xfetch(now_ms: u64, fresh_until: u64, delta_ms: f64, beta: f64, r: f64) -> bool {
    if beta <= 0.0 || delta_ms <= 0.0 {
        return false;
    }
    let gap = fresh_until.saturating_sub(now_ms) as f64;
    delta_ms * beta * -r.ln() >= gap
}

/// Randomness for jitter, XFetch and lease tokens: the thread RNG, or a
/// seeded one so that tests can reproduce a sequence.
#[derive(Debug)]
pub(crate) enum Random {
    Thread,
    Seeded(Box<Mutex<StdRng>>),
}

impl Random {
    pub(crate) fn seeded(seed: u64) -> Self {
        Random::Seeded(Box::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&self) -> f64 {
        match self {
            Random::Thread => rand::rng().random::<f64>(),
            Random::Seeded(rng) => rng
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random::<f64>(),
        }
    }

    /// A random lease token.
    pub(crate) fn token(&self) -> String {
        // Tokens must differ between processes even with the same seed, so
        // they always come from the thread RNG.
        format!("{:032x}", rand::rng().random::<u128>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_bounds() {
        let p = Policy {
            ttl: Duration::from_secs(100),
            jitter: 0.1,
            ..Policy::default()
        };
        assert_eq!(p.fresh_for(0.0), Duration::from_secs(90));
        assert_eq!(p.fresh_for(0.5), Duration::from_secs(100));
        assert!(p.fresh_for(0.999_999) <= Duration::from_secs(110));
    }

    #[test]
    fn timeouts_must_fit_inside_the_lease() {
        let p = Policy {
            load_timeout: Duration::from_secs(5),
            ..Policy::default()
        };
        assert!(p.validate().is_err());
        let p = Policy {
            soft_timeout: Some(Duration::from_secs(3)),
            ..Policy::default()
        };
        assert!(p.validate().is_err());
        assert!(Policy::default().validate().is_ok());
    }

    /// Over many reads at a distance Δt before expiry, the fraction of early
    /// refreshes is exp(−Δt/(δβ)), within a 4σ binomial bound.
    #[test]
    fn xfetch_refreshes_with_the_predicted_probability() {
        let random = Random::seeded(7);
        let (delta, fresh_until, n) = (100.0, 10_000u64, 20_000u32);
        for beta in [0.5, 1.0, 2.0] {
            for gap in [10u64, 50, 100, 200, 400] {
                let now = fresh_until - gap;
                let early = (0..n)
                    .filter(|_| xfetch(now, fresh_until, delta, beta, 1.0 - random.unit()))
                    .count() as f64;
                let p = (-(gap as f64) / (delta * beta)).exp();
                let sigma = (p * (1.0 - p) / f64::from(n)).sqrt();
                let seen = early / f64::from(n);
                assert!(
                    (seen - p).abs() <= 4.0 * sigma + 1e-12,
                    "beta {beta}, gap {gap} ms: {seen:.4} early, expected {p:.4} ± {:.4}",
                    4.0 * sigma
                );
            }
        }
    }

    #[test]
    fn xfetch_is_off_at_zero_beta_and_certain_at_expiry() {
        assert!(!xfetch(0, 1000, 100.0, 0.0, 0.001));
        assert!(xfetch(1000, 1000, 100.0, 1.0, 0.5));
        // Far from expiry with r = 1 (−ln r = 0): never.
        assert!(!xfetch(0, 1000, 100.0, 1.0, 1.0));
    }
}
