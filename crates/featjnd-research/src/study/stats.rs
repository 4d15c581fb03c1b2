//! Statistics of the studies: rate–metric curves, the Bjøntegaard delta rate, the bits a curve
//! needs for a metric, and percentile bootstrap intervals over images.
//!
//! The bootstrap resamples images with replacement (`philox` draws, seeded, so a report is
//! reproducible and tests never share a generator): every replicate recomputes the whole
//! statistic (e.g. both curves and their BD-rate) from the resampled images.

use featjnd_kernels::philox;

/// One curve point: bits per element and the metric (higher is better).
pub type RatePoint = (f64, f64);

/// The upper envelope of a rate–metric curve: sorted by rate, and a point whose metric is below
/// that of a cheaper point is dropped (a coder would never choose it). The result is strictly
/// increasing in rate and non-decreasing in metric.
pub fn envelope(points: &[RatePoint]) -> Vec<RatePoint> {
    let mut p: Vec<RatePoint> = points.iter().copied().filter(|(r, m)| r.is_finite() && *r > 0.0 && m.is_finite()).collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<RatePoint> = Vec::new();
    for q in p {
        match out.last() {
            Some(l) if q.1 <= l.1 => {}
            Some(l) if q.0 == l.0 => {
                out.pop();
                out.push(q);
            }
            _ => out.push(q),
        }
    }
    out
}

/// `log(rate)` of an envelope at `metric` (linear interpolation in `(metric, log rate)`), `None`
/// outside its metric range.
fn log_rate_at(env: &[RatePoint], metric: f64) -> Option<f64> {
    let (first, last) = (env.first()?, env.last()?);
    if metric < first.1 || metric > last.1 {
        return None;
    }
    if env.len() == 1 || metric == first.1 {
        return Some(first.0.ln());
    }
    env.windows(2).find(|w| metric >= w[0].1 && metric <= w[1].1).map(|w| {
        let t = if w[1].1 > w[0].1 { (metric - w[0].1) / (w[1].1 - w[0].1) } else { 1.0 };
        w[0].0.ln() + t * (w[1].0.ln() - w[0].0.ln())
    })
}

/// Bits the curve needs to reach `metric` (on its envelope), `None` when it never does. A curve
/// whose cheapest point already reaches `metric` answers with that point's rate.
pub fn bits_at(points: &[RatePoint], metric: f64) -> Option<f64> {
    let env = envelope(points);
    let first = env.first()?;
    if metric <= first.1 {
        return Some(first.0);
    }
    log_rate_at(&env, metric).map(f64::exp)
}

/// Bjøntegaard delta rate of `test` against `anchor`: the mean difference of `log(rate)` over
/// the metric range both curves cover, as a fraction (−0.2 = 20% fewer bits). Piecewise-linear
/// interpolation of `log rate` against the metric on each curve's envelope (the cubic fit of the
/// original proposal oscillates with few, noisy points), integrated on 256 evenly spaced metric
/// values. `None` when the shared range is empty or shorter than `min_span` of the metric.
pub fn bd_rate(anchor: &[RatePoint], test: &[RatePoint], min_span: f64) -> Option<f64> {
    let (a, t) = (envelope(anchor), envelope(test));
    let lo = a.first()?.1.max(t.first()?.1);
    let hi = a.last()?.1.min(t.last()?.1);
    if !(hi - lo >= min_span) || hi <= lo {
        return None;
    }
    let n = 256;
    let mut sum = 0.0;
    for i in 0..=n {
        let m = lo + (hi - lo) * i as f64 / n as f64;
        sum += log_rate_at(&t, m)? - log_rate_at(&a, m)?;
    }
    Some((sum / (n + 1) as f64).exp() - 1.0)
}

/// `B` resamples of `n` image indices with replacement, from `seed` (Philox: replicate `b`, draw
/// `i` uses counter `(i, b, 0, 0)`).
pub fn resamples(n: usize, replicates: usize, seed: u64) -> Vec<Vec<usize>> {
    let key = philox::key_of(seed);
    (0..replicates)
        .map(|b| {
            (0..n)
                .map(|i| {
                    let r = philox::philox4x32_10([i as u32, b as u32, 0, 0], key)[0];
                    ((r as u64 * n as u64) >> 32) as usize
                })
                .collect()
        })
        .collect()
}

/// The 2.5% and 97.5% percentiles of the finite values (`None` when fewer than 20 are finite:
/// the interval would say nothing).
pub fn interval95(values: &[f64]) -> Option<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.len() < 20 {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (v.len() - 1) as f64;
        let (i, f) = (pos.floor() as usize, pos - pos.floor());
        v[i] + f * (v[(i + 1).min(v.len() - 1)] - v[i])
    };
    Some((q(0.025), q(0.975)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bd_rate_of_a_scaled_curve_is_the_scale() {
        let a: Vec<RatePoint> = (1..8).map(|i| (i as f64, (i as f64).ln())).collect();
        // Same metric at 0.8× the rate everywhere: −20%.
        let t: Vec<RatePoint> = a.iter().map(|&(r, m)| (0.8 * r, m)).collect();
        let bd = bd_rate(&a, &t, 0.0).unwrap();
        assert!((bd + 0.2).abs() < 1e-12, "{bd}");
        assert!((bd_rate(&a, &a, 0.0).unwrap()).abs() < 1e-12);
        // Disjoint metric ranges: undefined.
        let far: Vec<RatePoint> = a.iter().map(|&(r, m)| (r, m + 10.0)).collect();
        assert_eq!(bd_rate(&a, &far, 0.0), None);
    }

    #[test]
    fn envelope_drops_dominated_points() {
        let e = envelope(&[(3.0, 0.5), (1.0, 0.6), (2.0, 0.9), (4.0, 0.95), (f64::NAN, 1.0)]);
        assert_eq!(e, vec![(1.0, 0.6), (2.0, 0.9), (4.0, 0.95)]);
        assert_eq!(bits_at(&e, 0.5), Some(1.0));
        assert!((bits_at(&e, 0.925).unwrap() - (2.0f64.ln() + 0.5 * (2.0f64.ln())).exp()).abs() < 1e-12);
        assert_eq!(bits_at(&e, 0.99), None);
    }

    #[test]
    fn resamples_are_seeded_and_in_range() {
        let a = resamples(7, 50, 3);
        assert_eq!(a, resamples(7, 50, 3));
        assert_ne!(a, resamples(7, 50, 4));
        assert!(a.iter().flatten().all(|&i| i < 7));
        // Every index shows up somewhere across 50 replicates of 7.
        assert!((0..7).all(|i| a.iter().flatten().any(|&j| j == i)));
    }

    #[test]
    fn interval_of_a_known_sample() {
        let v: Vec<f64> = (0..=100).map(|i| i as f64).collect();
        let (lo, hi) = interval95(&v).unwrap();
        assert!((lo - 2.5).abs() < 1e-12 && (hi - 97.5).abs() < 1e-12);
        assert_eq!(interval95(&v[..10]), None);
    }
}
