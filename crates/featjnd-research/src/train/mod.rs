//! Training of the task models (`featjnd train-task`): data streams, optimiser schedule, progress.

pub mod classify;
pub mod detect;
pub mod real;

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Progress of a long loop: an indicatif bar on a terminal; elsewhere (logs, CI) a plain line on
/// stderr every 10% so that a redirected run still shows where it is. Silent when `quiet`.
pub struct Progress {
    bar: ProgressBar,
    lines: bool,
    what: String,
    total: u64,
    done: u64,
    msg: String,
}

impl Progress {
    pub fn new(total: u64, what: &str, quiet: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = if quiet || !tty {
            ProgressBar::hidden()
        } else {
            let pb = ProgressBar::new(total);
            pb.set_style(
                ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {elapsed}<{eta} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            pb.set_prefix(what.to_string());
            pb
        };
        Progress { bar, lines: !quiet && !tty, what: what.into(), total, done: 0, msg: String::new() }
    }

    /// One step done; `msg` is shown beside the bar (and in the periodic lines).
    pub fn step(&mut self, msg: impl Into<String>) {
        self.done += 1;
        self.msg = msg.into();
        self.bar.set_message(self.msg.clone());
        self.bar.inc(1);
        let tenth = (self.total / 10).max(1);
        if self.lines && (self.done.is_multiple_of(tenth) || self.done == self.total) {
            eprintln!("{}: {}/{} {}", self.what, self.done, self.total, self.msg);
        }
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// SplitMix64: a tiny seeded generator for shuffles and augmentation (no global RNG anywhere).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// Cosine learning rate with linear warm-up over `warm` of `total` steps.
pub fn cosine_lr(base: f64, step: usize, total: usize, warm: usize) -> f64 {
    if step < warm {
        return base * (step + 1) as f64 / warm as f64;
    }
    let t = (step - warm) as f64 / (total - warm).max(1) as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}
