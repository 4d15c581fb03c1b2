//! Rate estimate of contract §4: empirical entropy of the symbol histogram plus the per-token side
//! information (default 16 bits per token: Δ_t sent as f16).

/// Bits of side information per token by default.
pub const SIDE_BITS_PER_TOKEN: f64 = 16.0;

/// Empirical entropy `H = −Σ p log2 p` of a histogram, in bits per symbol.
pub fn entropy_bits(hist: &[u64]) -> f64 {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Bits per feature element: `(H·T·K + side·T) / (T·K)`.
pub fn bits_per_element(entropy: f64, tokens: usize, k: usize, side_bits_per_token: f64) -> f64 {
    let (t, k) = (tokens as f64, k as f64);
    (entropy * t * k + side_bits_per_token * t) / (t * k)
}

/// The rate of one quantization.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Rate {
    pub entropy_bits: f64,
    pub bits_per_element: f64,
}

impl Rate {
    pub fn from_histogram(hist: &[u64], tokens: usize, k: usize) -> Self {
        let h = entropy_bits(hist);
        Rate { entropy_bits: h, bits_per_element: bits_per_element(h, tokens, k, SIDE_BITS_PER_TOKEN) }
    }
}
