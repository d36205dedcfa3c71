//! ns per rate-limit check: Switchyard's `KeyedRate` (src/limits.rs, compiled in as is) against
//! `governor`'s keyed limiter, on the shapes the server has: one hot key (a user publishing
//! from many tabs), many keys (users across a node), and both threads of this machine at once.
//!
//! Run: `cargo run --release --manifest-path bench/ab-governor/Cargo.toml`

#[path = "../../../src/limits.rs"]
#[allow(dead_code)]
mod limits;

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use governor::{Quota, RateLimiter};

const CHECKS: usize = 4_000_000;
// High enough that every check is admitted: the cost measured is the check, not a refusal.
const RATE: u32 = 1_000_000_000;

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

fn ours(keys: &[String], threads: usize) -> f64 {
    let limit = Arc::new(limits::KeyedRate::new(RATE as f64, RATE as f64));
    run(threads, keys, move |k| limit.try_take(k))
}

fn theirs(keys: &[String], threads: usize) -> f64 {
    let quota = Quota::per_second(NonZeroU32::new(RATE).expect("nonzero"));
    let limit = Arc::new(RateLimiter::keyed(quota));
    run(threads, keys, move |k| limit.check_key(k).is_ok())
}

/// ns per check, `threads` threads each doing CHECKS / threads checks over `keys`.
fn run(
    threads: usize,
    keys: &[String],
    check: impl Fn(&String) -> bool + Send + Sync + Clone + 'static,
) -> f64 {
    let keys = Arc::new(keys.to_vec());
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let keys = keys.clone();
            let check = check.clone();
            std::thread::spawn(move || {
                let mut ok = 0usize;
                for i in 0..CHECKS / threads {
                    ok += check(&keys[(i * 7 + t) % keys.len()]) as usize;
                }
                black_box(ok)
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    start.elapsed().as_nanos() as f64 / CHECKS as f64
}

fn main() {
    println!("| keys | threads | KeyedRate ns/check | governor ns/check |");
    println!("| ---: | ---: | ---: | ---: |");
    for (n, threads) in [(1, 1), (1_000, 1), (9_000, 1), (1, 2), (1_000, 2), (9_000, 2)] {
        let k = keys(n);
        // Best of five, alternating, so neither side gets the warmer machine.
        let (mut a, mut b) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            a = a.min(ours(&k, threads));
            b = b.min(theirs(&k, threads));
        }
        println!("| {n} | {threads} | {a:.1} | {b:.1} |");
    }
}
