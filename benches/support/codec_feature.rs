//! The synthetic feature of the codec benchmarks (shared by `benches/codec.rs` and
//! `examples/codec_sweep.rs`): f32 NCHW `[N, 256, 128, 128]`-like, Gaussian values times a smooth
//! positive scale per token (spatial position), per-token steps proportional to the scale. With
//! 8-bit symbols it codes at about 4.1 bits per element.

/// xorshift64*, seeded.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// A standard normal value (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u = self.uniform().max(1e-7);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// `(x, dims [n, c, h, w], per-token steps)` of about `mib` MiB of f32 (`c = 256`, `h = w`
/// chosen so that the size is met with `n ≤ 4`).
pub fn feature(mib: usize, seed: u64) -> (Vec<f32>, [usize; 4], Vec<f32>) {
    let numel = mib * (1 << 20) / 4;
    let c = 256;
    let (n, hw) = match numel / c {
        p if p >= 4 * 128 * 128 => (p / (128 * 128), 128),
        p => (1, (p as f64).sqrt() as usize),
    };
    let (h, w) = (hw, numel / c / n / hw);
    let mut r = Rng::new(seed);
    // Smooth scale per token: two low-frequency waves in log2.
    let (a, b, ph) = (r.uniform() * 0.2, r.uniform() * 0.2, r.uniform() * 6.0);
    let scale: Vec<f32> = (0..n * h * w)
        .map(|t| {
            let (y, x) = (((t / w) % h) as f32, (t % w) as f32);
            (1.5 * ((a * y + ph).sin() * (b * x).cos())).exp2()
        })
        .collect();
    let mut x = vec![0.0f32; n * c * h * w];
    for s in 0..n {
        for ch in 0..c {
            let plane = &mut x[(s * c + ch) * h * w..(s * c + ch + 1) * h * w];
            for (i, v) in plane.iter_mut().enumerate() {
                *v = r.normal() * scale[s * h * w + i];
            }
        }
    }
    let steps = scale.iter().map(|&s| 0.24 * s).collect();
    (x, [n, c, h, w], steps)
}
