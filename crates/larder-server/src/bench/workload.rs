//! What the clients do: which key each operation touches (uniform, Zipf,
//! hotspot), whether it reads or writes, and when a client stops.
//!
//! Everything here is decided before the timed loop or costs a few
//! arithmetic steps inside it: the Zipf CDF is computed once, the random
//! generator is a SplitMix64 in a `u64` (seeded per client from `--seed`, so
//! a run is repeatable), and no operation allocates.

use anyhow::{bail, Context as _, Result};
use std::fmt;
use std::time::{Duration, Instant};

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Dist {
    /// Every key equally likely.
    Uniform,
    /// Key `k` (0-based) with probability ∝ 1 / (k + 1)^s.
    Zipf(f64),
    /// A fraction `keys` of the keys (the first ones) gets a share `ops`
    /// of the operations; the rest share the remainder uniformly.
    Hotspot {
        /// The hot fraction of the keys, in (0, 1).
        keys: f64,
        /// The share of operations that go to the hot keys, in [0, 1].
        ops: f64,
    },
}

impl Dist {
    /// Parses `uniform`, `zipf:S` (`zipf` alone is `zipf:1.0`) or
    /// `hotspot:KEYS:OPS` (`hotspot` alone is `hotspot:0.2:0.8`).
    pub(crate) fn parse(text: &str) -> Result<Dist> {
        let mut parts = text.split(':');
        let kind = parts.next().unwrap_or_default();
        let nums = parts
            .map(|p| {
                p.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .with_context(|| format!("--dist {text:?}: {p:?} is not a number"))
            })
            .collect::<Result<Vec<f64>>>()?;
        match (kind, nums.as_slice()) {
            ("uniform", []) => Ok(Dist::Uniform),
            ("zipf", []) => Ok(Dist::Zipf(1.0)),
            ("zipf", [s]) if *s > 0.0 && *s <= 10.0 => Ok(Dist::Zipf(*s)),
            ("zipf", [_]) => bail!("--dist {text:?}: the Zipf exponent must be in (0, 10]"),
            ("hotspot", []) => Ok(Dist::Hotspot {
                keys: 0.2,
                ops: 0.8,
            }),
            ("hotspot", [k, o]) if *k > 0.0 && *k < 1.0 && (0.0..=1.0).contains(o) => {
                Ok(Dist::Hotspot { keys: *k, ops: *o })
            }
            ("hotspot", [_, _]) => bail!(
                "--dist {text:?}: hotspot:KEYS:OPS needs 0 < KEYS < 1 and 0 <= OPS <= 1"
            ),
            _ => bail!("--dist {text:?}: use uniform, zipf:S or hotspot:KEYS:OPS (e.g. zipf:1.0, hotspot:0.2:0.8)"),
        }
    }
}

impl fmt::Display for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dist::Uniform => f.write_str("uniform"),
            Dist::Zipf(s) => write!(f, "zipf:{s}"),
            Dist::Hotspot { keys, ops } => write!(f, "hotspot:{keys}:{ops}"),
        }
    }
}

/// When a client stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// After this many operations in all (split evenly over the clients).
    Ops(u64),
    /// After this long.
    Duration(Duration),
}

/// A whole workload, validated.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// Keys `0..keys`, each a seeded row.
    pub(crate) keys: u64,
    /// How keys are drawn.
    pub(crate) dist: Dist,
    /// The share of reads, in [0, 1].
    pub(crate) read_ratio: f64,
    /// Bytes of payload per value.
    pub(crate) value_size: usize,
    /// Concurrent clients (tasks).
    pub(crate) clients: usize,
    /// When to stop.
    pub(crate) stop: Stop,
    /// Added to every database statement.
    pub(crate) db_latency: Duration,
    /// The seed of every client's generator.
    pub(crate) seed: u64,
    /// Open loop: operations per second in all, on a fixed schedule
    /// (`None`: closed loop, each client sends when it is answered).
    pub(crate) rate: Option<f64>,
}

impl Workload {
    /// How many operations client `client` runs under [`Stop::Ops`].
    pub(crate) fn ops_of(&self, client: usize) -> Option<u64> {
        match self.stop {
            Stop::Ops(total) => {
                let clients = self.clients as u64;
                let c = client as u64;
                Some(total / clients + u64::from(c < total % clients))
            }
            Stop::Duration(_) => None,
        }
    }

    /// Client `client`'s schedule under `--rate`, from `start`: the
    /// clients share the rate evenly and are offset from each other, so
    /// the operations of all clients together arrive every `1 / rate`.
    pub(crate) fn schedule_of(&self, client: usize, start: Instant) -> Option<Schedule> {
        let rate = self.rate?;
        let clients = self.clients as f64;
        Some(Schedule {
            first: start + Duration::from_secs_f64(client as f64 / rate),
            interval: Duration::from_secs_f64(clients / rate),
            sent: 0,
        })
    }
}

/// When one client's operations are due under an open loop (`--rate`).
///
/// Each operation's latency counts from its due time, not from when the
/// client got round to sending it: a slow answer delays the operations
/// queued behind it, and that wait is part of what their callers see
/// (wrk2's correction for coordinated omission).
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    first: Instant,
    interval: Duration,
    sent: u32,
}

impl Schedule {
    /// The due time of the next operation; advances the schedule.
    pub(crate) fn next_due(&mut self) -> Instant {
        let due = self.first + self.interval * self.sent;
        self.sent = self.sent.saturating_add(1);
        due
    }

    /// The due time of the next operation, without advancing.
    pub(crate) fn peek(&self) -> Instant {
        self.first + self.interval * self.sent
    }
}

/// SplitMix64: tiny, fast, good enough for choosing keys; one `u64` of state.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for client `client` of a run seeded with `seed`.
    pub(crate) fn new(seed: u64, client: usize) -> Rng {
        Rng(seed ^ (client as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F))
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Draws keys from a [`Dist`]; shared by every client (read-only).
#[derive(Debug)]
pub(crate) struct Keys {
    n: u64,
    kind: KeysKind,
}

#[derive(Debug)]
enum KeysKind {
    Uniform,
    /// The cumulative distribution, one entry per key.
    Cdf(Vec<f64>),
    Hotspot {
        hot: u64,
        ops: f64,
    },
}

impl Keys {
    /// A sampler of `n` keys (n ≥ 1).
    pub(crate) fn new(n: u64, dist: Dist) -> Keys {
        let kind = match dist {
            Dist::Uniform => KeysKind::Uniform,
            Dist::Zipf(s) => {
                let total: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
                let mut acc = 0.0;
                KeysKind::Cdf(
                    (1..=n)
                        .map(|k| {
                            acc += (k as f64).powf(-s) / total;
                            acc
                        })
                        .collect(),
                )
            }
            Dist::Hotspot { keys, ops } => KeysKind::Hotspot {
                hot: ((n as f64 * keys).ceil() as u64).clamp(1, n),
                ops,
            },
        };
        Keys { n, kind }
    }

    /// One key in `0..n`.
    pub(crate) fn sample(&self, rng: &mut Rng) -> u64 {
        match &self.kind {
            KeysKind::Uniform => rng.below(self.n),
            KeysKind::Cdf(cdf) => {
                let u = rng.unit();
                (cdf.partition_point(|&c| c < u) as u64).min(self.n - 1)
            }
            KeysKind::Hotspot { hot, ops } => {
                let cold = self.n - hot;
                if cold == 0 || rng.unit() < *ops {
                    rng.below(*hot)
                } else {
                    hot + rng.below(cold)
                }
            }
        }
    }
}

/// Parses a duration such as `10s`, `250ms` or `0ms` (one-line error).
pub(crate) fn parse_duration(flag: &str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .with_context(|| format!("{flag} {text:?}: not a duration (write e.g. 10s, 250ms)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dists_parse_and_refuse() {
        assert_eq!(Dist::parse("uniform").ok(), Some(Dist::Uniform));
        assert_eq!(Dist::parse("zipf:0.9").ok(), Some(Dist::Zipf(0.9)));
        assert_eq!(
            Dist::parse("hotspot:0.1:0.9").ok(),
            Some(Dist::Hotspot {
                keys: 0.1,
                ops: 0.9
            })
        );
        for bad in [
            "",
            "zipf:-1",
            "zipf:x",
            "hotspot:1.5:0.5",
            "normal",
            "uniform:3",
        ] {
            assert!(Dist::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn samplers_stay_in_range_and_skew() {
        let mut rng = Rng::new(7, 0);
        for dist in [
            Dist::Uniform,
            Dist::Zipf(1.0),
            Dist::Hotspot {
                keys: 0.2,
                ops: 0.8,
            },
        ] {
            let keys = Keys::new(100, dist);
            let mut counts = [0u32; 100];
            for _ in 0..100_000 {
                counts[keys.sample(&mut rng) as usize] += 1;
            }
            let first: u32 = counts[..20].iter().sum();
            match dist {
                Dist::Uniform => assert!((15_000..25_000).contains(&first)),
                _ => assert!(first > 60_000, "{dist}: {first}"),
            }
        }
    }

    #[test]
    fn ops_split_evenly() {
        let w = Workload {
            keys: 1,
            dist: Dist::Uniform,
            read_ratio: 0.5,
            value_size: 1,
            clients: 3,
            stop: Stop::Ops(10),
            db_latency: Duration::ZERO,
            seed: 1,
            rate: None,
        };
        let total: u64 = (0..3).filter_map(|c| w.ops_of(c)).sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn the_clients_schedules_interleave_into_the_rate() {
        let start = Instant::now();
        let w = Workload {
            keys: 1,
            dist: Dist::Uniform,
            read_ratio: 0.5,
            value_size: 1,
            clients: 4,
            stop: Stop::Ops(40),
            db_latency: Duration::ZERO,
            seed: 1,
            rate: Some(1000.0),
        };
        let mut due: Vec<Duration> = (0..4)
            .flat_map(|c| {
                let mut s = w.schedule_of(c, start).expect("a schedule under --rate");
                (0..10).map(move |_| s.next_due() - start)
            })
            .collect();
        due.sort();
        for (n, d) in due.iter().enumerate() {
            let want = n as f64 / 1000.0;
            assert!(
                (d.as_secs_f64() - want).abs() < 1e-6,
                "op {n}: due at {d:?}, want {want} s"
            );
        }
        let closed = Workload { rate: None, ..w };
        assert!(
            closed.schedule_of(0, start).is_none(),
            "no schedule in a closed loop"
        );
    }
}
