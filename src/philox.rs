//! Counter-based random numbers: Philox4x32-10 (contract §5), bit-identical with `kernels/common.cuh`.
use crate::geom::NoiseKind;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;
#[allow(clippy::excessive_precision)]
const SQRT3: f32 = 1.732_050_807_568_877_2;

/// One Philox4x32-10 evaluation (the Random123 definition).
#[inline(always)]
pub fn philox4x32_10(mut c: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut k0, mut k1) = (key[0], key[1]);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [((p1 >> 32) as u32) ^ c[1] ^ k0, p1 as u32, ((p0 >> 32) as u32) ^ c[3] ^ k1, p0 as u32];
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
    }
    c
}

/// The key of a u64 seed: `(s & 0xffffffff, s >> 32)`.
#[inline(always)]
pub fn key_of(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// The 4 words of Philox block `g` (flat elements `4g..4g+3`) for a seed and subsequence (the third counter word).
#[inline(always)]
pub fn block(g: u64, seed: u64, subsequence: u32) -> [u32; 4] {
    philox4x32_10([g as u32, (g >> 32) as u32, subsequence, 0], key_of(seed))
}

/// `u = (r >> 8) · 2^-24` in `[0, 1)`, exact in f32.
#[inline(always)]
pub fn u01(r: u32) -> f32 {
    (r >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Unit-variance uniform noise `(2u − 1)·sqrt(3)`, one f32 operation per step.
#[inline(always)]
pub fn uniform_noise(r: u32) -> f32 {
    (2.0f32 * u01(r) - 1.0f32) * SQRT3
}

/// `u1 = u(r0) + 2^−25` (an `f32` addition, never 0) of a Box–Muller pair.
#[inline(always)]
pub fn u1_of(r0: u32) -> f32 {
    u01(r0) + 1.0 / 33_554_432.0
}

/// Box–Muller on a pair of words: `(sqrt(−2 ln u1)·cos(2πu2), sqrt(−2 ln u1)·sin(2πu2))`.
#[inline(always)]
pub fn box_muller(r0: u32, r1: u32) -> (f32, f32) {
    crate::boxmuller::box_muller(u1_of(r0), u01(r1))
}

/// The four noise values of block `g` (portable scalar build; [`fill`] may differ from it by an
/// `f32` ulp for Gaussian noise where it runs the AVX2+FMA Box–Muller, never for uniform noise).
#[inline(always)]
pub fn noise4(g: u64, seed: u64, subsequence: u32, kind: NoiseKind) -> [f32; 4] {
    let r = block(g, seed, subsequence);
    match kind {
        NoiseKind::Uniform => r.map(uniform_noise),
        NoiseKind::Gaussian => {
            let (a, b) = box_muller(r[0], r[1]);
            let (c, d) = box_muller(r[2], r[3]);
            [a, b, c, d]
        }
    }
}

/// Elements per batch of the portable and AVX2 generators (8 Philox blocks).
const BATCH: usize = 32;

/// The portable batch: blocks `g0 .. g0+8` one at a time.
fn batch_portable(g0: u64, seed: u64, subsequence: u32, kind: NoiseKind, out: &mut [f32; BATCH]) {
    for (b, o) in out.chunks_exact_mut(4).enumerate() {
        o.copy_from_slice(&noise4(g0 + b as u64, seed, subsequence, kind));
    }
}

/// Writes the noise of flat elements `offset .. offset + out.len()` through a batch generator
/// (`batch(g0, out)`: elements `4·g0 .. 4·g0 + N`). A batch's values do not depend on where it
/// starts (each element is a function of its own block), so any split of a range gives the same
/// values.
#[inline(always)]
fn fill_with<const N: usize>(out: &mut [f32], offset: u64, mut batch: impl FnMut(u64, &mut [f32; N])) {
    let mut g = offset / 4;
    let mut i = 0usize;
    let head = (offset % 4) as usize;
    let mut tmp = [0.0f32; N];
    if head != 0 {
        batch(g, &mut tmp);
        let m = (N - head).min(out.len());
        out[..m].copy_from_slice(&tmp[head..head + m]);
        i = m;
        g += N as u64 / 4;
    }
    while i + N <= out.len() {
        let o: &mut [f32; N] = (&mut out[i..i + N]).try_into().unwrap();
        batch(g, o);
        i += N;
        g += N as u64 / 4;
    }
    if i < out.len() {
        batch(g, &mut tmp);
        let m = out.len() - i;
        out[i..].copy_from_slice(&tmp[..m]);
    }
}

/// Writes the noise of flat elements `offset .. offset + out.len()` into `out` (contract §5.2:
/// element `i` takes lane `i mod 4` of block `⌊i/4⌋`). The fastest build this CPU runs is chosen
/// at run time ([`Isa::best`]): the Philox rounds with AVX-512 (16 blocks at a time, 8 per
/// register) or AVX2 (8 blocks, 4 per register), the conversion with AVX2+FMA; else portable
/// scalar code. Every build gives the same words; the uniform noise is bit-identical to [`noise4`]
/// and `reference::noise_at` on all of them, and the Gaussian noise is identical between the two
/// SIMD builds and within a few `f32` ulps of the reference on all.
pub fn fill(out: &mut [f32], offset: u64, seed: u64, subsequence: u32, kind: NoiseKind) {
    fill_isa(Isa::best(), out, offset, seed, subsequence, kind);
}

/// A build of the noise generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Scalar Rust, any CPU.
    Portable,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512F Philox rounds (where the CPU also has AVX-512 VBMI2, i.e. a core that runs 512-bit
    /// integer multiplies without the heavy frequency drop of the first AVX-512 parts), AVX2+FMA
    /// conversion.
    Avx512,
}

impl Isa {
    /// Whether this CPU runs the build.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::cpu::has_avx2_fma(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
                crate::cpu::has_avx2_fma()
                    && *AVX512.get_or_init(|| std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vbmi2"))
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest available build.
    pub fn best() -> Isa {
        [Isa::Avx512, Isa::Avx2].into_iter().find(|i| i.available()).unwrap_or(Isa::Portable)
    }
}

/// [`fill`] with a chosen build (for tests and benchmarks); an unavailable one falls back to the
/// portable build.
pub fn fill_isa(isa: Isa, out: &mut [f32], offset: u64, seed: u64, subsequence: u32, kind: NoiseKind) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && isa.available() {
        // SAFETY: `available` checked at run time that this CPU executes AVX2 and FMA, and for
        // `Isa::Avx512` AVX-512F.
        return unsafe { x86::fill(isa == Isa::Avx512, out, offset, seed, subsequence, kind) };
    }
    let _ = isa;
    fill_with(out, offset, |g, o: &mut [f32; BATCH]| batch_portable(g, seed, subsequence, kind, o))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::boxmuller::x86::box_muller8;
    use std::arch::x86_64::*;

    /// The round keys and the constant half of round 1, broadcast once per call.
    struct Keys {
        k0: [__m256i; 10],
        k1: [__m256i; 10],
        /// Round 1 multiplies the constant subsequence word: `hi(M1·c2) ^ k0` and `lo(M1·c2)`.
        r1_hi: __m256i,
        r1_lo: __m256i,
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn keys(seed: u64, subsequence: u32) -> Keys {
        let [mut k0, mut k1] = key_of(seed);
        let mut k = Keys {
            k0: [_mm256_setzero_si256(); 10],
            k1: [_mm256_setzero_si256(); 10],
            r1_hi: _mm256_setzero_si256(),
            r1_lo: _mm256_setzero_si256(),
        };
        let p1 = (M1 as u64) * (subsequence as u64);
        k.r1_hi = _mm256_set1_epi32(((p1 >> 32) as u32 ^ k0) as i32);
        k.r1_lo = _mm256_set1_epi32(p1 as u32 as i32);
        for r in 0..10 {
            k.k0[r] = _mm256_set1_epi32(k0 as i32);
            k.k1[r] = _mm256_set1_epi32(k1 as i32);
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        k
    }

    /// One Philox round on a set: `(c0, c1, c2, c3) → (hi(M1·c2) ^ c1 ^ k0, lo(M1·c2), hi(M0·c0) ^ c3 ^ k1, lo(M0·c0))`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn round(w: [__m256i; 4], k0: __m256i, k1: __m256i) -> [__m256i; 4] {
        let [c0, c1, c2, c3] = w;
        let p0 = _mm256_mul_epu32(c0, _mm256_set1_epi32(M0 as i32));
        let p1 = _mm256_mul_epu32(c2, _mm256_set1_epi32(M1 as i32));
        [
            _mm256_xor_si256(_mm256_srli_epi64(p1, 32), _mm256_xor_si256(c1, k0)),
            p1,
            _mm256_xor_si256(_mm256_srli_epi64(p0, 32), _mm256_xor_si256(c3, k1)),
            p0,
        ]
    }

    /// Round 1 for the 4 blocks `g0 .. g0+3`: `c1 = g >> 32`, `c2 = subsequence` (constant, its
    /// product precomputed), `c3 = 0`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn round1(g0: u64, k: &Keys) -> [__m256i; 4] {
        let g = _mm256_add_epi64(_mm256_set1_epi64x(g0 as i64), _mm256_set_epi64x(3, 2, 1, 0));
        let p0 = _mm256_mul_epu32(g, _mm256_set1_epi32(M0 as i32));
        [_mm256_xor_si256(_mm256_srli_epi64(g, 32), k.r1_hi), k.r1_lo, _mm256_xor_si256(_mm256_srli_epi64(p0, 32), k.k1[0]), p0]
    }

    /// Philox4x32-10 for blocks `g0 .. g0+8` as two sets of 4, one block per 64-bit lane, each
    /// word in the low half of its lane (the high halves carry garbage that `vpmuludq` never
    /// reads): per round and set two `vpmuludq`, two shifts and four xors; bit-identical with
    /// [`philox4x32_10`]. The two sets run interleaved (independent chains; 8 state registers,
    /// the keys read from memory once for both).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn blocks8(g0: u64, k: &Keys) -> ([__m256i; 4], [__m256i; 4]) {
        let (mut a, mut b) = (round1(g0, k), round1(g0 + 4, k));
        for r in 1..10 {
            let (k0, k1) = (k.k0[r], k.k1[r]);
            a = round(a, k0, k1);
            b = round(b, k0, k1);
        }
        (a, b)
    }

    /// Words `(a, b)` of a set's 4 blocks as 8 u32 lanes `[a₀, b₀, a₁, b₁, …]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn pair(a: __m256i, b: __m256i) -> __m256i {
        _mm256_blend_epi32::<0b1010_1010>(a, _mm256_slli_epi64(b, 32))
    }

    /// `(2u − 1)·√3` of every lane, bit-identical with [`uniform_noise`]: `2u − 1 = t·2^−24` with
    /// the integer `t = 2·(r >> 8) − 2^24` (exact in f32), times the f32 constant `√3·2^−24`
    /// (exact scaling), so one rounding as in the scalar formula.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn uniform8(r: __m256i) -> __m256 {
        let t = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(r, 7), _mm256_set1_epi32(!1)), _mm256_set1_epi32(1 << 24));
        _mm256_mul_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(SQRT3 / 16_777_216.0))
    }

    /// Interleaves two vectors of element pairs (`lo`: blocks 0 | 2, `hi`: blocks 1 | 3 of a set,
    /// one 128-bit half each) into element order and stores the set's 16 elements.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn store_set(lo: __m256, hi: __m256, out: &mut [f32; 16]) {
        let a = _mm256_permute2f128_ps::<0x20>(lo, hi);
        let b = _mm256_permute2f128_ps::<0x31>(lo, hi);
        // SAFETY: `out` is 16 f32 = 64 bytes: two unaligned 256-bit stores at 0 and 8.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), a);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), b);
        }
    }

    /// Noise of one set (4 blocks, 16 elements) from its words.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn convert<const GAUSSIAN: bool>(w: [__m256i; 4], out: &mut [f32; 16]) {
        let [w0, w1, w2, w3] = w;
        if GAUSSIAN {
            // Pairs (w0, w1) → lanes 0, 1 and (w2, w3) → lanes 2, 3: u1 from w0 and w2, u2 from
            // w1 and w3, 8 pairs in the order [b0 p0, b0 p1, b1 p0, …].
            let m1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(pair(w0, w2), 8));
            let m2 = _mm256_cvtepi32_ps(_mm256_srli_epi32(pair(w1, w3), 8));
            // u1 = m·2^−24 + 2^−25 (the product is exact: one rounding, as in `u1_of`);
            // θ = 2π·(m·2^−24) = m·(2π·2^−24) (exact scaling: one rounding).
            let u1 = _mm256_fmadd_ps(m1, _mm256_set1_ps(1.0 / 16_777_216.0), _mm256_set1_ps(1.0 / 33_554_432.0));
            let th = _mm256_mul_ps(m2, _mm256_set1_ps(std::f32::consts::TAU / 16_777_216.0));
            let (c, s) = box_muller8(u1, th);
            store_set(_mm256_unpacklo_ps(c, s), _mm256_unpackhi_ps(c, s), out);
        } else {
            // Lanes [w0, w1] and [w2, w3] of each block: 64-bit unpacks give whole blocks.
            let a = _mm256_castps_pd(uniform8(pair(w0, w1)));
            let b = _mm256_castps_pd(uniform8(pair(w2, w3)));
            store_set(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)), _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)), out);
        }
    }

    /// Blocks `g0 .. g0+8`: two sets of 4, converted from registers.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn batch<const GAUSSIAN: bool>(g0: u64, k: &Keys, out: &mut [f32; BATCH]) {
        let (a, b) = out.split_at_mut(16);
        let (a, b): (&mut [f32; 16], &mut [f32; 16]) = (a.try_into().unwrap(), b.try_into().unwrap());
        let (wa, wb) = blocks8(g0, k);
        convert::<GAUSSIAN>(wa, a);
        convert::<GAUSSIAN>(wb, b);
    }

    /// Blocks `g0 .. g0+16` with the AVX-512 rounds: two sets of 8 blocks, each converted as two
    /// halves of 4 (the AVX2 layout: one block per 64-bit lane).
    ///
    /// # Safety
    /// The CPU must execute AVX-512F.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn batch512<const GAUSSIAN: bool>(g0: u64, c: &avx512::Consts, out: &mut [f32; 64]) {
        let mut w = avx512::Words::default();
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { avx512::blocks16(g0, c, &mut w) };
        for (q, o) in out.chunks_exact_mut(16).enumerate() {
            let (set, half) = (q / 2, 4 * (q % 2));
            // SAFETY: `w.0[set][word]` is 8 u64; `half + 4 ≤ 8`, so each load reads 32 bytes inside it.
            let words = std::array::from_fn(|word| unsafe { _mm256_loadu_si256(w.0[set][word][half..].as_ptr() as *const __m256i) });
            convert::<GAUSSIAN>(words, o.try_into().unwrap());
        }
    }

    /// # Safety
    /// The CPU must execute AVX-512F when `avx512` is set.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fill(avx512: bool, out: &mut [f32], offset: u64, seed: u64, subsequence: u32, kind: NoiseKind) {
        if avx512 {
            let c = avx512::Consts::new(seed, subsequence);
            match kind {
                // SAFETY: the caller guarantees AVX-512F.
                NoiseKind::Uniform => fill_with(out, offset, |g, o| unsafe { batch512::<false>(g, &c, o) }),
                // SAFETY: the caller guarantees AVX-512F.
                NoiseKind::Gaussian => fill_with(out, offset, |g, o| unsafe { batch512::<true>(g, &c, o) }),
            }
            return;
        }
        let k = keys(seed, subsequence);
        match kind {
            NoiseKind::Uniform => fill_with(out, offset, |g, o| batch::<false>(g, &k, o)),
            NoiseKind::Gaussian => fill_with(out, offset, |g, o| batch::<true>(g, &k, o)),
        }
    }
}

/// Philox4x32-10 rounds with AVX-512F, in inline assembly: the crate's MSRV (1.87) predates the
/// AVX-512 intrinsics and target features (1.89). Same state layout as the AVX2 rounds (one block
/// per 64-bit lane, the word in the low half) with 8 lanes per `zmm`, and `vpternlogd` for the
/// three-way xor: per round and 8 blocks two `vpmuludq`, two shifts and two `vpternlogd` (the
/// AVX2 rounds need 16 instructions for the same work). Bit-identical with [`philox4x32_10`].
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{key_of, M0, M1, W0, W1};
    use std::arch::asm;

    /// Everything the rounds read from memory (broadcast operands).
    #[repr(C, align(64))]
    pub(super) struct Consts {
        /// Lane offsets 0..8 of the block counters.
        lanes: [u64; 8],
        m0: u64,
        m1: u64,
        eight: u64,
        subsequence: u64,
        /// Round keys: `k0` of rounds 0..10, then `k1` of rounds 0..10.
        keys: [u32; 20],
    }

    impl Consts {
        pub(super) fn new(seed: u64, subsequence: u32) -> Consts {
            let [mut k0, mut k1] = key_of(seed);
            let mut keys = [0u32; 20];
            for r in 0..10 {
                keys[r] = k0;
                keys[10 + r] = k1;
                k0 = k0.wrapping_add(W0);
                k1 = k1.wrapping_add(W1);
            }
            Consts { lanes: [0, 1, 2, 3, 4, 5, 6, 7], m0: M0 as u64, m1: M1 as u64, eight: 8, subsequence: subsequence as u64, keys }
        }
    }

    /// `w[set][word][lane]`: word `word` of block `g0 + 8·set + lane` in the low 32 bits.
    #[derive(Default)]
    #[repr(C, align(64))]
    pub(super) struct Words(pub [[[u64; 8]; 4]; 2]);

    /// One round for one set, from registers `s0..s3` into `t0..t3` (`r` the round: key offsets
    /// `4r` and `40 + 4r` bytes into `keys`).
    macro_rules! round {
        ($s0:literal, $s1:literal, $s2:literal, $s3:literal, $t0:literal, $t1:literal, $t2:literal, $t3:literal, $r:literal) => {
            concat!(
                "vpmuludq zmm",
                $t3,
                ", zmm",
                $s0,
                ", qword ptr [{c} + 64]{{1to8}}\n",
                "vpmuludq zmm",
                $t1,
                ", zmm",
                $s2,
                ", qword ptr [{c} + 72]{{1to8}}\n",
                "vpsrlq zmm",
                $t0,
                ", zmm",
                $t1,
                ", 32\n",
                "vpternlogd zmm",
                $t0,
                ", zmm",
                $s1,
                ", dword ptr [{c} + 96 + 4*",
                $r,
                "]{{1to16}}, 0x96\n",
                "vpsrlq zmm",
                $t2,
                ", zmm",
                $t3,
                ", 32\n",
                "vpternlogd zmm",
                $t2,
                ", zmm",
                $s3,
                ", dword ptr [{c} + 136 + 4*",
                $r,
                "]{{1to16}}, 0x96\n",
            )
        };
    }
    /// Round `r` for both sets: set A in `zmm0..3` ↔ `zmm4..7`, set B in `zmm8..11` ↔ `zmm12..15`
    /// (even rounds read the first bank, odd rounds the second, so ten rounds end where they began).
    macro_rules! rounds2 {
        (even $r:literal) => {
            concat!(round!("0", "1", "2", "3", "4", "5", "6", "7", $r), round!("8", "9", "10", "11", "12", "13", "14", "15", $r))
        };
        (odd $r:literal) => {
            concat!(round!("4", "5", "6", "7", "0", "1", "2", "3", $r), round!("12", "13", "14", "15", "8", "9", "10", "11", $r))
        };
    }

    /// Philox4x32-10 for blocks `g0 .. g0+16` into `w`.
    ///
    /// # Safety
    /// The CPU must execute AVX-512F.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn blocks16(g0: u64, c: &Consts, w: &mut Words) {
        // SAFETY: the caller guarantees AVX-512F. The assembly reads `c` (176 bytes, all offsets
        // below are inside it) and writes the 512 bytes of `w`, both 64-byte aligned as the
        // aligned moves need; it uses `zmm0..15` only, whose low halves are declared clobbered
        // (code compiled without AVX-512 keeps nothing in the upper halves), and clears the upper
        // halves with `vzeroupper` before returning. No stack, no flags.
        unsafe {
            asm!(
                // Counters: c0 = g (low word; the high half is garbage vpmuludq ignores), c1 = g >> 32,
                // c2 = subsequence, c3 = 0; set B starts 8 blocks later.
                "vpbroadcastq zmm0, {g}",
                "vpaddq zmm0, zmm0, zmmword ptr [{c}]",
                "vpaddq zmm8, zmm0, qword ptr [{c} + 80]{{1to8}}",
                "vpsrlq zmm1, zmm0, 32",
                "vpsrlq zmm9, zmm8, 32",
                "vpbroadcastq zmm2, qword ptr [{c} + 88]",
                "vmovdqa64 zmm10, zmm2",
                "vpxord zmm3, zmm3, zmm3",
                "vpxord zmm11, zmm11, zmm11",
                rounds2!(even "0"),
                rounds2!(odd "1"),
                rounds2!(even "2"),
                rounds2!(odd "3"),
                rounds2!(even "4"),
                rounds2!(odd "5"),
                rounds2!(even "6"),
                rounds2!(odd "7"),
                rounds2!(even "8"),
                rounds2!(odd "9"),
                "vmovdqa64 zmmword ptr [{w}], zmm0",
                "vmovdqa64 zmmword ptr [{w} + 64], zmm1",
                "vmovdqa64 zmmword ptr [{w} + 128], zmm2",
                "vmovdqa64 zmmword ptr [{w} + 192], zmm3",
                "vmovdqa64 zmmword ptr [{w} + 256], zmm8",
                "vmovdqa64 zmmword ptr [{w} + 320], zmm9",
                "vmovdqa64 zmmword ptr [{w} + 384], zmm10",
                "vmovdqa64 zmmword ptr [{w} + 448], zmm11",
                "vzeroupper",
                g = in(reg) g0,
                c = in(reg) c as *const Consts,
                w = in(reg) w as *mut Words,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// Fisher–Yates permutation of `0..t` for the `Permuted{seed}` strategy (contract §3): for
/// `t = T−1 … 1` swap `t` with `floor(u·(t+1))`, `u` from Philox with counter `(t,0,0,0)`, lane 0.
pub fn permutation(t: usize, seed: u64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..t as u32).collect();
    let key = key_of(seed);
    for k in (1..t).rev() {
        let u = u01(philox4x32_10([k as u32, 0, 0, 0], key)[0]);
        let i = ((u as f64) * ((k + 1) as f64)).floor() as usize;
        p.swap(k, i.min(k));
    }
    p
}
