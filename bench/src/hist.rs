//! A lock-free latency histogram in microseconds: log-linear buckets (64 per power of two, so
//! percentiles are within ~1.6%), shared by every member task of a process through atomics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

const EXACT: u64 = 128; // values below this get a bucket each
const SUB_BITS: u32 = 6; // 64 sub-buckets per power of two above that
const BUCKETS: usize = EXACT as usize + (64 - 7) * (1 << SUB_BITS);

pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros(); // >= 7
    let shift = msb - SUB_BITS;
    let mantissa = (v >> shift) - (1 << SUB_BITS); // 0..64
    EXACT as usize + ((msb - 7) as usize) * (1 << SUB_BITS) + mantissa as usize
}

/// The middle of bucket `i`'s value range.
fn value(i: usize) -> u64 {
    if i < EXACT as usize {
        return i as u64;
    }
    let j = i - EXACT as usize;
    let msb = (j >> SUB_BITS) as u32 + 7;
    let mantissa = (j & ((1 << SUB_BITS) - 1)) as u64 + (1 << SUB_BITS);
    let shift = msb - SUB_BITS;
    (mantissa << shift) + (1u64 << shift) / 2
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, micros: u64) {
        self.buckets[index(micros)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.max.fetch_max(micros, Relaxed);
    }

    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Relaxed);
        }
        self.count.store(0, Relaxed);
        self.max.store(0, Relaxed);
    }

    fn percentile(&self, counts: &[u64], total: u64, p: f64) -> u64 {
        let rank = ((total as f64 * p).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i);
            }
        }
        0
    }

    pub fn latency(&self) -> Latency {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Latency::default();
        }
        let max = self.max.load(Relaxed);
        let ms = |v: u64| crate::round3(v.min(max) as f64 / 1000.0);
        Latency {
            samples: total,
            p50_ms: ms(self.percentile(&counts, total, 0.50)),
            p99_ms: ms(self.percentile(&counts, total, 0.99)),
            max_ms: crate::round3(max as f64 / 1000.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for v in (0..2_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let i = index(v);
            assert!(i >= last && i < BUCKETS, "{v}");
            last = i;
            let mid = value(i) as f64;
            assert!(
                (mid - v as f64).abs() <= (v as f64 / 64.0).max(0.5) + 1.0,
                "{v} -> {mid}"
            );
        }
    }

    #[test]
    fn percentiles() {
        let h = Histogram::default();
        for v in 1..=1000 {
            h.record(v * 1000);
        }
        let l = h.latency();
        assert_eq!(l.samples, 1000);
        assert!((l.p50_ms - 500.0).abs() < 8.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 16.0, "{l:?}");
        assert_eq!(l.max_ms, 1000.0);
    }
}
