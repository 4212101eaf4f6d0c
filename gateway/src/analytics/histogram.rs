//! Fixed log-scale latency histograms: bucket `i` holds latencies up to
//! `0.1 ms * 2^(i/2)` (a ratio of about 1.41 between bounds), from 0.1 ms
//! to about 105 s, plus one bucket above. Histograms of any pod and minute
//! merge by adding counts, so percentiles of any range are exact to within
//! one bucket.

/// Buckets, the last one open-ended.
pub const BUCKETS: usize = 42;

/// Upper bound of bucket `i`, milliseconds (infinite for the last).
pub fn upper_ms(i: usize) -> f64 {
    if i + 1 >= BUCKETS { f64::INFINITY } else { 0.1 * 2f64.powf(i as f64 / 2.0) }
}

/// The bucket of a latency.
pub fn bucket(ms: f64) -> usize {
    if ms.is_nan() || ms <= 0.1 {
        return 0;
    }
    let i = (2.0 * (ms / 0.1).log2()).ceil() as usize;
    i.min(BUCKETS - 1)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram(pub Vec<u64>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(vec![0; BUCKETS])
    }
}

impl Histogram {
    pub fn record(&mut self, ms: f64) {
        self.0[bucket(ms)] += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `q` quantile (0..1): the upper bound of the bucket holding it
    /// (the last finite bound for the open bucket); None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.0.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let ub = upper_ms(i);
                return Some(if ub.is_finite() { ub } else { upper_ms(BUCKETS - 2) });
            }
        }
        None
    }

    /// Compact text form for the database (counts, comma-separated).
    pub fn to_text(&self) -> String {
        self.0.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    }

    pub fn from_text(s: &str) -> Histogram {
        let mut h = Histogram::default();
        for (i, v) in s.split(',').enumerate().take(BUCKETS) {
            h.0[i] = v.parse().unwrap_or(0);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_bucket_of_the_truth() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(ms as f64);
        }
        for (q, truth) in [(0.5, 50.0), (0.95, 95.0), (0.99, 99.0)] {
            let got = h.quantile(q).unwrap();
            assert!(got >= truth && got <= truth * 1.42, "q{q}: {got} vs {truth}");
        }
        let mut other = Histogram::default();
        other.record(5000.0);
        h.merge(&other);
        assert_eq!(h.count(), 101);
        assert!(h.quantile(1.0).unwrap() >= 5000.0);
        assert_eq!(Histogram::from_text(&h.to_text()), h);
        assert_eq!(Histogram::default().quantile(0.5), None);
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(1e12), BUCKETS - 1);
    }
}
