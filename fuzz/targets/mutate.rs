//! The stable-Rust fuzzing harness (docs/fuzzing.md): a mutation loop over seed inputs that runs a
//! target body (`targets/*.rs`, the same bodies the libFuzzer targets run) and turns a panic into a
//! saved input and a test failure. No coverage feedback (that needs nightly's instrumentation):
//! structure comes from the seeds and from the bodies' own structure-aware decoding.
//!
//! Deterministic: the random generator is seeded from the target's name, and the test command
//! runs a fixed number of inputs (`FEATJND_FUZZ_ITERS`, default per target), so a run never
//! passes or fails by timing; `FEATJND_FUZZ_SECS=60` runs by time instead (the documented
//! longer step).
#![allow(dead_code)]
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// SplitMix64: small, fast, and good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One mutation of `b` (from the seeds in `pool` for splices), its length kept below `max`.
fn mutate(r: &mut Rng, b: &mut Vec<u8>, pool: &[Vec<u8>], max: usize) {
    const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, b'"', b'-'];
    match r.below(9) {
        0 if !b.is_empty() => {
            let i = r.below(b.len());
            b[i] ^= 1 << r.below(8);
        }
        1 if !b.is_empty() => {
            let i = r.below(b.len());
            b[i] = r.next() as u8;
        }
        2 if !b.is_empty() => {
            let i = r.below(b.len());
            b[i] = INTERESTING[r.below(INTERESTING.len())];
        }
        3 => {
            let i = r.below(b.len() + 1);
            let n = 1 + r.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
            b.splice(i..i, bytes);
        }
        4 if !b.is_empty() => {
            let i = r.below(b.len());
            let n = 1 + r.below((b.len() - i).min(64));
            b.drain(i..i + n);
        }
        5 if !b.is_empty() => {
            // Duplicate a range somewhere else.
            let i = r.below(b.len());
            let n = 1 + r.below((b.len() - i).min(64));
            let chunk = b[i..i + n].to_vec();
            let at = r.below(b.len() + 1);
            b.splice(at..at, chunk);
        }
        6 if !pool.is_empty() => {
            // Splice: our head, another seed's tail.
            let other = &pool[r.below(pool.len())];
            let (i, j) = (r.below(b.len() + 1), r.below(other.len() + 1));
            b.truncate(i);
            b.extend_from_slice(&other[j..]);
        }
        7 if !b.is_empty() => {
            let n = r.below(b.len());
            b.truncate(n);
        }
        _ => {
            // A little-endian integer of 2, 4 or 8 bytes set to an edge value.
            if b.len() >= 8 {
                let i = r.below(b.len() - 7);
                let v: u64 = [0, 1, u64::MAX, i64::MAX as u64, 1 << 31, 1 << 32, 0xffff, 4096][r.below(8)];
                let n = [2, 4, 8][r.below(3)];
                b[i..i + n].copy_from_slice(&v.to_le_bytes()[..n]);
            }
        }
    }
    b.truncate(max);
}

/// Runs `body` on the seeds, then on mutated seeds (1–8 mutations each) until the iteration count
/// (or, with `FEATJND_FUZZ_SECS`, the time) is spent. A panic saves the input under
/// `target/fuzz-stable/` and fails with its path. Returns the number of inputs run.
pub fn campaign(name: &str, seeds: &[Vec<u8>], iters: u64, max_len: usize, body: impl Fn(&[u8])) -> u64 {
    let iters = std::env::var("FEATJND_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(iters);
    let deadline =
        std::env::var("FEATJND_FUZZ_SECS").ok().and_then(|v| v.parse::<f64>().ok()).map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut r = Rng::new(name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| (h ^ c as u64).wrapping_mul(0x100_0000_01b3)));
    let run = |input: &[u8], n: u64| {
        if catch_unwind(AssertUnwindSafe(|| body(input))).is_err() {
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-stable");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{name}-{n}.bin"));
            let _ = std::fs::write(&path, input);
            panic!("fuzz target {name} panicked on input {n} ({} bytes), saved to {}", input.len(), path.display());
        }
    };
    let mut n = 0u64;
    for s in seeds {
        run(s, n);
        n += 1;
    }
    loop {
        match deadline {
            Some(d) if Instant::now() >= d => break,
            None if n >= iters => break,
            _ => {}
        }
        let mut b = if seeds.is_empty() { Vec::new() } else { seeds[r.below(seeds.len())].clone() };
        for _ in 0..1 + r.below(8) {
            mutate(&mut r, &mut b, seeds, max_len);
        }
        run(&b, n);
        n += 1;
    }
    eprintln!("fuzz-stable {name}: {n} inputs");
    n
}
