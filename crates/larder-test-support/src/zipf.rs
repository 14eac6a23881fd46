//! Zipf-distributed picks, for the workloads of tests and examples that
//! hammer a few hot keys (counters, leaderboards).

/// The cumulative distribution of ranks `0..n` with P(k) ∝ 1 / (k + 1)
/// (Zipf 1.0).
pub fn zipf_cdf(n: u64) -> Vec<f64> {
    let mut cdf: Vec<f64> = (1..=n)
        .scan(0.0, |total, k| {
            *total += 1.0 / k as f64;
            Some(*total)
        })
        .collect();
    let total = cdf.last().copied().unwrap_or(1.0);
    for p in &mut cdf {
        *p /= total;
    }
    cdf
}

/// The rank a uniform `u` in [0, 1) picks from `cdf` (see [`zipf_cdf`]).
pub fn zipf_pick(cdf: &[f64], u: f64) -> usize {
    cdf.partition_point(|&c| c < u)
        .min(cdf.len().saturating_sub(1))
}
