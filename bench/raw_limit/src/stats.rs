//! Latency summary. Nearest-rank percentiles, the same definition as the Elixir harness uses,
//! so the two sides' p50/p99 are comparable.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
}

/// Summarises latencies given in nanoseconds; sorts them in place.
pub fn summarize(latencies_ns: &mut [u64]) -> Summary {
    latencies_ns.sort_unstable();
    let count = latencies_ns.len();
    let us = |ns: u64| ns as f64 / 1000.0;
    if count == 0 {
        return Summary {
            count,
            p50_us: 0.0,
            p99_us: 0.0,
            mean_us: 0.0,
            max_us: 0.0,
        };
    }
    let total: u128 = latencies_ns.iter().map(|&ns| ns as u128).sum();
    Summary {
        count,
        p50_us: us(percentile(latencies_ns, 50.0)),
        p99_us: us(percentile(latencies_ns, 99.0)),
        mean_us: total as f64 / count as f64 / 1000.0,
        max_us: us(latencies_ns[count - 1]),
    }
}

/// The smallest value with at least `p` percent of the samples at or below it.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn summary_in_microseconds() {
        let mut v = vec![3000, 1000, 2000];
        let s = summarize(&mut v);
        assert_eq!(s.count, 3);
        assert_eq!(s.p50_us, 2.0);
        assert_eq!(s.max_us, 3.0);
        assert_eq!(s.mean_us, 2.0);
        assert_eq!(summarize(&mut []).count, 0);
    }
}
