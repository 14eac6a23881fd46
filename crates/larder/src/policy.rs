//! Freshness policy: how long entries live, and when a read refreshes early.
//!
//! The words every setting and doc uses: `ttl` is how long an entry is fresh, scaled per write
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
//!
//! Every default and every limit of these settings is a constant here, and
//! [`Policy::validate`] is their only check: the service's configuration
//! takes its defaults from these constants and its verdicts from the
//! builder, so the two cannot drift apart.

use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};
use serde::{Deserialize, Deserializer};
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

/// Default of [`CacheBuilder::ttl`](crate::CacheBuilder::ttl): 60 s.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Default of [`CacheBuilder::jitter`](crate::CacheBuilder::jitter): 0.1.
pub const DEFAULT_JITTER: f64 = 0.1;
/// Default of [`CacheBuilder::stale`](crate::CacheBuilder::stale): 5 min.
pub const DEFAULT_STALE: Duration = Duration::from_secs(300);
/// Default of [`CacheBuilder::negative_ttl`](crate::CacheBuilder::negative_ttl): 10 s.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Default of [`CacheBuilder::lease_ttl`](crate::CacheBuilder::lease_ttl): 5 s.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// Default of [`CacheBuilder::load_timeout`](crate::CacheBuilder::load_timeout)
/// (and of `wait_timeout`, which follows it unless set): 2 s.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of [`CacheBuilder::early_refresh`](crate::CacheBuilder::early_refresh): 1.0.
pub const DEFAULT_EARLY_REFRESH: f64 = 1.0;
/// The values `jitter` may take: `[0, 1)` (a factor of 1 could make an
/// entry expire as it is written).
const JITTER_RANGE: Range<f64> = 0.0..1.0;

/// Parses a duration as configuration files write it (humantime): `"60s"`,
/// `"5m"`, `"250ms"`, `"1h 30m"`. The error says what was given and how to
/// write it.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?}: {e} (write e.g. \"60s\", \"5m\", \"250ms\")")
    })
}

/// Deserializes a [`parse_duration`] string (for the option types' serde).
pub(crate) fn deserialize_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// A duration as settings' messages show it: `5s`, `1m 30s`, `250ms`.
pub(crate) fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

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
            ttl: DEFAULT_TTL,
            jitter: DEFAULT_JITTER,
            stale: DEFAULT_STALE,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            lease_ttl: DEFAULT_LEASE_TTL,
            load_timeout: DEFAULT_LOAD_TIMEOUT,
            soft_timeout: None,
            wait_timeout: DEFAULT_LOAD_TIMEOUT,
            early_refresh: DEFAULT_EARLY_REFRESH,
        }
    }
}

impl Policy {
    /// Checks that each setting is in its range and that they can work
    /// together; the error names the setting as its builder method is
    /// named ([`Error::InvalidSetting`]).
    pub(crate) fn validate(&self) -> Result<()> {
        if self.ttl.is_zero() {
            return Err(Error::setting("ttl", "must be longer than 0s"));
        }
        if !JITTER_RANGE.contains(&self.jitter) {
            return Err(Error::setting(
                "jitter",
                format!(
                    "{} must be in [{}, {})",
                    self.jitter, JITTER_RANGE.start, JITTER_RANGE.end
                ),
            ));
        }
        if !(self.early_refresh.is_finite() && self.early_refresh >= 0.0) {
            return Err(Error::setting(
                "early_refresh",
                format!("{} must be 0 (off) or more", self.early_refresh),
            ));
        }
        for (name, d) in [
            ("load_timeout", self.load_timeout),
            ("wait_timeout", self.wait_timeout),
        ] {
            if d.is_zero() || d >= self.lease_ttl {
                return Err(Error::setting(
                    name,
                    format!(
                        "{} must be above 0s and shorter than lease_ttl ({}), or a slow load would lose its lease",
                        show(d),
                        show(self.lease_ttl)
                    ),
                ));
            }
        }
        if let Some(soft) = self.soft_timeout {
            if soft >= self.load_timeout {
                return Err(Error::setting(
                    "soft_timeout",
                    format!(
                        "{} must be shorter than load_timeout ({})",
                        show(soft),
                        show(self.load_timeout)
                    ),
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
        assert!(matches!(
            p.validate(),
            Err(Error::InvalidSetting {
                setting: "load_timeout",
                ..
            })
        ));
        let p = Policy {
            soft_timeout: Some(Duration::from_secs(3)),
            ..Policy::default()
        };
        assert!(matches!(
            p.validate(),
            Err(Error::InvalidSetting {
                setting: "soft_timeout",
                ..
            })
        ));
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
