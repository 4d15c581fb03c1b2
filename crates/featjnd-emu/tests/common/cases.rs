//! One function per kernel family: builds the inputs, launches the emulated kernels of the given
//! module(s) exactly as the launchers of `src/cuda/raw.rs` do (same parameter structs, grids and
//! workspace layout), compares with the CPU path under the contract's rule, and returns a
//! fingerprint of every output (so a test can also demand identical results under another
//! schedule). A mismatch is an `Err` naming the case.
#![allow(dead_code)]
use featjnd_emu::{Guarded, Module, Sched, BLOCK};
use featjnd_kernels::cpu::perturb::NoiseSpec;
use featjnd_kernels::cpu::quantize::{QuantOut, Symbols};
use featjnd_kernels::params::*;
use featjnd_kernels::{cpu, philox, steps, Bits, Dtype, Element, Layout, NoiseKind, Reduce, Strategy, TokenGrid};

use super::*;

pub type Out = Result<Vec<u64>, String>;

fn reduce_code(r: Reduce) -> u32 {
    match r {
        Reduce::Mean => FJ_REDUCE_MEAN,
        Reduce::Rms => FJ_REDUCE_RMS,
        Reduce::Min => FJ_REDUCE_MIN,
    }
}

fn lay(g: &TokenGrid) -> &'static str {
    if g.shape.layout == Layout::Nchw {
        "nchw"
    } else {
        "ntc"
    }
}

/// Blocks of a token kernel (raw::token_grid).
pub fn token_blocks(g: &TokenGrid) -> u64 {
    let per = if g.shape.layout == Layout::Nchw { FJ_NCHW_TOKENS_PER_BLOCK } else { FJ_NTC_TOKENS_PER_BLOCK };
    (g.tokens() as u64).div_ceil(per as u64)
}

fn fp_f32(v: &[f32]) -> impl Iterator<Item = u64> + '_ {
    v.iter().map(|x| x.to_bits() as u64)
}

// ---------------------------------------------------------------- token stats

/// Token tolerance (check = J) or token RMS (check = finite) of `vals` through
/// fj_token_stats_*, with the sum of squares and the max; `bad` = an index set to 0 (J) or NaN (x)
/// whose report is checked instead of the values.
pub fn token_stats<E: Element + featjnd_emu::Plain>(
    m: &Module,
    g: &TokenGrid,
    reduce: Reduce,
    rms_of_x: bool,
    seed: u64,
    bad: Option<usize>,
    s: Sched,
) -> Out {
    let n = g.numel();
    let mut v = if rms_of_x { feature(n, seed) } else { jnd(n, seed) };
    if let Some(i) = bad {
        v[i] = if rms_of_x { f32::NAN } else { 0.0 };
        // A later bad value too: the first must win.
        if i + 5 < n {
            v[i + 5] = f32::INFINITY;
        }
    }
    let ve: Vec<E> = narrow(&v);
    let what = format!("token stats {:?} {:?} {} {reduce:?} rms={rms_of_x} bad={bad:?}", g.shape, E::DTYPE, g.patch);
    let xb = Guarded::new(&ve, E::from_f32(0.0));
    let tt = Guarded::filled(g.tokens(), GARBAGE_F32);
    let ss = Guarded::new(&[0.0f64], 0.0);
    let bc = Guarded::new(&[0u64], 0);
    let mx = Guarded::new(&[0u32], 0);
    let p = FjTokenStatsParams {
        geom: g.to_params(),
        jnd: xb.addr(),
        token_tol: tt.addr(),
        sum_sq: ss.addr(),
        bad_index: bc.addr(),
        max_out: mx.addr(),
        reduce: if rms_of_x { FJ_REDUCE_RMS } else { reduce_code(reduce) },
        check: if rms_of_x { FJ_CHECK_FINITE } else { FJ_CHECK_JND },
        ..Default::default()
    };
    run(m, &format!("fj_token_stats_{}_{}", lay(g), E::DTYPE.name()), &p, token_blocks(g), s)?;
    for r in [tt.check_res("token_tol"), ss.check_res("sum_sq"), bc.check_res("bad"), mx.check_res("max")] {
        r.map_err(|e| format!("{what}: {e}"))?;
    }
    let cpu = if rms_of_x { cpu::token_stats::token_rms(&ve, g) } else { cpu::token_stats::token_tolerance(&ve, g, reduce) };
    let got_bad = bad_of(bc.as_slice()[0]);
    match (bad, cpu) {
        (Some(i), Err(e)) => {
            ensure(got_bad == Some(i as u64), || format!("{what}: bad cell {got_bad:?}, want {i} ({e})"))?;
        }
        (None, Ok(jt)) => {
            ensure(got_bad.is_none(), || format!("{what}: bad cell {got_bad:?} on valid input"))?;
            close(tt.as_slice(), &jt, 1e-5, 0.0, &format!("{what}: j_t"))?;
            close64(ss.as_slice()[0], steps::sum_sq(tt.as_slice()), 1e-12, &format!("{what}: sum_sq"))?;
            let want_max = tt.as_slice().iter().fold(0.0f32, |a, &b| a.max(b));
            ensure(f32::from_bits(mx.as_slice()[0]) == want_max, || {
                format!("{what}: max {} vs {want_max}", f32::from_bits(mx.as_slice()[0]))
            })?;
        }
        (b, c) => return Err(format!("{what}: bad {b:?} but CPU says {c:?}")),
    }
    Ok(fp_f32(tt.as_slice()).chain([ss.as_slice()[0].to_bits(), bc.as_slice()[0], mx.as_slice()[0] as u64]).collect())
}

// ---------------------------------------------------------------- quantize

/// The outputs of one quantization (emulated), for comparisons between launches.
pub struct QRun<E: Element> {
    pub symbols: Vec<i16>,
    pub recon: Vec<E>,
    pub sse: Vec<f32>,
    pub total: f64,
    pub clamped: u64,
    pub hist: Vec<u64>,
    pub bad: u64,
    /// The bad-step cell (a key; 0 = none).
    pub bad_step: u64,
}

/// Buffers of one quantization, laid out as the launchers do.
pub struct QBufs<E: Element + featjnd_emu::Plain> {
    pub x: Guarded<E>,
    pub steps: Guarded<f32>,
    pub sym8: Guarded<i8>,
    pub sym16: Guarded<i16>,
    pub recon: Guarded<E>,
    pub sse: Guarded<f32>,
    /// clamp count, total sse (f64 bits), first bad x, the bad-step key, then the histogram
    pub cells: Guarded<u64>,
    pub misalign: usize,
}

impl<E: Element + featjnd_emu::Plain> QBufs<E> {
    /// The buffers as a quantization plan's pointers (the symbols of `bits`' width).
    pub fn ptrs(&self, bits: Bits) -> featjnd_kernels::cuda::raw::QuantPtrs {
        featjnd_kernels::cuda::raw::QuantPtrs {
            x: ptr(self.x.addr()),
            steps: ptr(self.steps.addr()),
            symbols: ptr_mut(if bits == Bits::B8 { self.sym8.addr() } else { self.sym16.addr() }),
            recon: ptr_mut(self.recon.addr()),
            token_sse: ptr_mut(self.sse.addr()),
        }
    }

    pub fn new(x: &[E], steps: &[f32], bits: Bits, misalign: usize) -> Self {
        let mut xs = vec![E::from_f32(0.0); misalign];
        xs.extend_from_slice(x);
        let n = x.len();
        QBufs {
            x: Guarded::new(&xs, E::from_f32(0.0)),
            steps: Guarded::new(steps, GARBAGE_F32),
            sym8: Guarded::filled(if bits == Bits::B8 { n } else { 0 }, 0x55),
            sym16: Guarded::filled(if bits == Bits::B16 { n } else { 0 }, 0x5555),
            recon: Guarded::filled(n, E::from_f32(GARBAGE_F32)),
            sse: Guarded::filled(steps.len(), GARBAGE_F32),
            cells: Guarded::new(&vec![0u64; 4 + bits.hist_bins()], 0),
            misalign,
        }
    }
    pub fn x_addr(&self) -> u64 {
        self.x.addr() + (self.misalign * std::mem::size_of::<E>()) as u64
    }
    pub fn params(&self, g: &TokenGrid, bits: Bits, hist: bool, in_place: bool) -> FjQuantizeParams {
        let c = self.cells.addr();
        FjQuantizeParams {
            geom: g.to_params(),
            x: self.x_addr(),
            steps: self.steps.addr(),
            symbols: if bits == Bits::B8 { self.sym8.addr() } else { self.sym16.addr() },
            recon: if in_place { self.x_addr() } else { self.recon.addr() },
            token_sse: self.sse.addr(),
            total_sse: c + 8,
            clamp_count: c,
            histogram: if hist { c + 32 } else { 0 },
            bad_index: c + 16,
            bad_step: c + 24,
            bits: bits.bits(),
            pad0: 0,
        }
    }
    pub fn check(&self, what: &str) -> Res {
        for r in [
            self.x.check_res("x"),
            self.steps.check_res("steps"),
            self.sym8.check_res("symbols"),
            self.sym16.check_res("symbols"),
            self.recon.check_res("recon"),
            self.sse.check_res("token sse"),
            self.cells.check_res("statistics"),
        ] {
            r.map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(())
    }
    pub fn result(&self, bits: Bits, in_place: bool) -> QRun<E> {
        let c = self.cells.as_slice();
        QRun {
            symbols: if bits == Bits::B8 {
                self.sym8.as_slice().iter().map(|&v| v as i16).collect()
            } else {
                self.sym16.as_slice().to_vec()
            },
            recon: if in_place { self.x.as_slice()[self.misalign..].to_vec() } else { self.recon.as_slice().to_vec() },
            sse: self.sse.as_slice().to_vec(),
            total: f64::from_bits(c[1]),
            clamped: c[0],
            hist: c[4..].to_vec(),
            bad: c[2],
            bad_step: c[3],
        }
    }
}

pub fn quantize_module(bits: Bits, hist: bool) -> usize {
    2 + 2 * (bits == Bits::B16) as usize + hist as usize
}

/// The CPU quantization of `x` with `steps` (symbols widened to i16).
pub fn cpu_quantize<E: Element>(x: &[E], g: &TokenGrid, st: &[f32], bits: Bits, hist: bool) -> Result<QRun<E>, String> {
    let n = x.len();
    let (mut s8, mut s16) = (vec![0i8; n], vec![0i16; n]);
    let mut recon = vec![E::from_f32(0.0); n];
    let mut sse = vec![0.0f32; g.tokens()];
    let symbols = if bits == Bits::B8 { Symbols::I8(&mut s8) } else { Symbols::I16(&mut s16) };
    let stats =
        cpu::quantize::quantize(x, g, st, bits, QuantOut { symbols, recon: Some(&mut recon), token_sse: Some(&mut sse), histogram: hist })
            .map_err(|e| format!("CPU: {e}"))?;
    Ok(QRun {
        symbols: if bits == Bits::B8 { s8.iter().map(|&v| v as i16).collect() } else { s16 },
        recon,
        sse,
        total: stats.total_sse,
        clamped: stats.clamped,
        hist: stats.histogram.unwrap_or_default(),
        bad: 0,
        bad_step: 0,
    })
}

/// Emulated vs CPU quantization of the same steps (contract §4: symbols and reconstruction bit for
/// bit, clamp count and histogram exact, errors within 1e-4).
pub fn compare_quant<E: Element>(e: &QRun<E>, c: &QRun<E>, hist: bool, what: &str) -> Res {
    ensure(e.bad == 0, || format!("{what}: bad cell {:?} on finite input", bad_of(e.bad)))?;
    ensure(e.bad_step == 0, || format!("{what}: bad-step cell {:#x} on valid steps", e.bad_step))?;
    ensure(e.symbols == c.symbols, || {
        let i = e.symbols.iter().zip(&c.symbols).position(|(a, b)| a != b).unwrap_or(0);
        format!("{what}: symbols differ first at {i}: {} vs {}", e.symbols[i], c.symbols[i])
    })?;
    bits_eq(&e.recon, &c.recon, &format!("{what}: recon"))?;
    close(&e.sse, &c.sse, 1e-4, 1e-30, &format!("{what}: token sse"))?;
    close64(e.total, c.total, 1e-4, &format!("{what}: total sse"))?;
    ensure(e.clamped == c.clamped, || format!("{what}: clamped {} vs {}", e.clamped, c.clamped))?;
    if hist {
        ensure(e.hist == c.hist, || {
            format!("{what}: histogram differs (sums {} vs {})", e.hist.iter().sum::<u64>(), c.hist.iter().sum::<u64>())
        })?;
    }
    Ok(())
}

pub fn qfp<E: Element>(r: &QRun<E>) -> Vec<u64> {
    r.symbols
        .iter()
        .map(|&v| v as u64)
        .chain(bits_of(&r.recon).into_iter().map(|b| b as u64))
        .chain(fp_f32(&r.sse))
        .chain([r.total.to_bits(), r.clamped, r.bad, r.bad_step])
        .chain(r.hist.iter().copied())
        .collect()
}

/// One quantization (fj_quantize_{nchw,ntc}_*) against the CPU; `misalign` shifts x by that many
/// elements (the NTC vector path then falls back to scalar loads); `bad` puts a NaN there (and an
/// Inf later) and checks the first is reported.
#[allow(clippy::too_many_arguments)]
pub fn quantize<E: Element + featjnd_emu::Plain>(
    m: &Module,
    g: &TokenGrid,
    bits: Bits,
    hist: bool,
    budget: f64,
    seed: u64,
    in_place: bool,
    misalign: usize,
    bad: Option<usize>,
    s: Sched,
) -> Out {
    let n = g.numel();
    let mut xv = feature(n, seed);
    if let Some(i) = bad {
        xv[i] = f32::NAN;
        if i + 3 < n {
            xv[i + 3] = f32::NEG_INFINITY;
        }
    }
    let x: Vec<E> = narrow(&xv);
    let jt = cpu::token_stats::token_tolerance(&narrow::<E>(&jnd(n, seed)), g, Reduce::Mean).unwrap();
    let st = steps::allocate(&jt, budget, Strategy::Jnd).unwrap();
    let what = format!(
        "quantize {:?} p{} {:?} {bits:?} hist={hist} D={budget} in_place={in_place} misalign={misalign} bad={bad:?}",
        g.shape,
        g.patch,
        E::DTYPE
    );
    let b = QBufs::new(&x, &st, bits, misalign);
    let p = b.params(g, bits, hist, in_place);
    run(m, &format!("fj_quantize_{}_{}", lay(g), E::DTYPE.name()), &p, token_blocks(g), s).map_err(|e| format!("{what}: {e}"))?;
    b.check(&what)?;
    let e = b.result(bits, in_place);
    if let Some(i) = bad {
        ensure(bad_of(e.bad) == Some(i as u64), || format!("{what}: bad cell {:?}, want {i}", bad_of(e.bad)))?;
        return Ok(vec![e.bad]);
    }
    compare_quant(&e, &cpu_quantize(&x, g, &st, bits, hist)?, hist, &what)?;
    Ok(qfp(&e))
}

// ---------------------------------------------------------------- the fused chain

/// J -> j_t -> steps -> quantize as raw::quantize_with_jnd launches it: two launches
/// (fj_token_stats_* with partials, fj_quantize_chain_*) up to FJ_CHAIN_MAX_PARTS token-stats
/// blocks, else token stats + fj_step_alloc + fj_quantize_*; every workspace cell starts as
/// garbage except the one accumulator the fallback's memset zeroes. `bad_j` zeroes J there.
#[allow(clippy::too_many_arguments)]
pub fn chain<E: Element + featjnd_emu::Plain>(
    m_ts: &Module,
    m_sa: &Module,
    m_q: &Module,
    g: &TokenGrid,
    reduce: Reduce,
    strategy: Strategy,
    bits: Bits,
    hist: bool,
    budget: f64,
    seed: u64,
    bad_j: Option<usize>,
    s: Sched,
) -> Out {
    let n = g.numel();
    let t = g.tokens();
    let x: Vec<E> = narrow(&feature(n, seed));
    let mut jv = jnd(n, seed);
    if let Some(i) = bad_j {
        jv[i] = 0.0;
    }
    let j: Vec<E> = narrow(&jv);
    let parts = token_blocks(g);
    let two_launch = parts <= FJ_CHAIN_MAX_PARTS as u64;
    let what =
        format!("chain {:?} p{} {:?} {reduce:?} {strategy:?} {bits:?} hist={hist} parts={parts} bad={bad_j:?}", g.shape, g.patch, E::DTYPE);
    let jb = Guarded::new(&j, E::from_f32(1.0));
    let jt = Guarded::filled(t, GARBAGE_F32);
    let partials = Guarded::filled(2 * parts as usize, GARBAGE_U64);
    // Token-stats cells: first bad J, sum of squares (f64 bits) — garbage: written, not added to.
    let mut tcells = Guarded::new(&[GARBAGE_U64, GARBAGE_U64], 0);
    let mut b = QBufs::new(&x, &vec![GARBAGE_F32; t], bits, 0);
    b.cells.as_mut_slice().fill(GARBAGE_U64);
    let q = b.params(g, bits, hist, false);
    let dt = E::DTYPE.name();
    let ts_name = format!("fj_token_stats_{}_{dt}", lay(g));
    let tp = FjTokenStatsParams {
        geom: g.to_params(),
        jnd: jb.addr(),
        token_tol: jt.addr(),
        reduce: reduce_code(reduce),
        check: FJ_CHECK_JND,
        ..Default::default()
    };
    if two_launch {
        let tp = FjTokenStatsParams { partials: partials.addr(), zero: b.cells.addr(), zero_count: b.cells.as_slice().len() as u32, ..tp };
        run(m_ts, &ts_name, &tp, parts, s).map_err(|e| format!("{what}: {e}"))?;
        let c = FjQuantizeChainParams {
            q,
            token_tol: jt.addr(),
            partials: partials.addr(),
            sum_sq_out: tcells.addr() + 8,
            bad_jnd_out: tcells.addr(),
            budget,
            beta: 1.0,
            nparts: parts as u32,
            strategy: if strategy == Strategy::Uniform { FJ_STRATEGY_UNIFORM } else { FJ_STRATEGY_JND },
        };
        run(m_q, &format!("fj_quantize_chain_{}_{dt}", lay(g)), &c, parts, s).map_err(|e| format!("{what}: {e}"))?;
    } else {
        // The fallback: the memset of the statistics, then three launches.
        tcells.as_mut_slice().fill(0);
        b.cells.as_mut_slice().fill(0);
        let tp = FjTokenStatsParams { sum_sq: tcells.addr() + 8, bad_index: tcells.addr(), ..tp };
        run(m_ts, &ts_name, &tp, parts, s).map_err(|e| format!("{what}: {e}"))?;
        if bad_of(tcells.as_slice()[0]).is_none() {
            let sp = FjStepAllocParams {
                token_tol: jt.addr(),
                sum_sq: tcells.addr() + 8,
                perm: 0,
                steps: b.steps.addr(),
                budget,
                beta: 1.0,
                tokens: t as u32,
                strategy: if strategy == Strategy::Uniform { FJ_STRATEGY_UNIFORM } else { FJ_STRATEGY_JND },
            };
            run(m_sa, "fj_step_alloc", &sp, (t as u64).div_ceil(BLOCK as u64), s).map_err(|e| format!("{what}: {e}"))?;
            run(m_q, &format!("fj_quantize_{}_{dt}", lay(g)), &q, parts, s).map_err(|e| format!("{what}: {e}"))?;
        }
    }
    for r in [jb.check_res("J"), jt.check_res("j_t"), partials.check_res("partials"), tcells.check_res("token-stats cells")] {
        r.map_err(|e| format!("{what}: {e}"))?;
    }
    b.check(&what)?;
    let got_bad = bad_of(tcells.as_slice()[0]);
    if let Some(i) = bad_j {
        ensure(got_bad == Some(i as u64), || format!("{what}: J's bad cell {got_bad:?}, want {i}"))?;
        return Ok(vec![tcells.as_slice()[0]]);
    }
    ensure(got_bad.is_none(), || format!("{what}: J's bad cell {got_bad:?} on valid J"))?;
    let cjt = cpu::token_stats::token_tolerance(&j, g, reduce).unwrap();
    close(jt.as_slice(), &cjt, 1e-5, 0.0, &format!("{what}: j_t"))?;
    let sum = f64::from_bits(tcells.as_slice()[1]);
    close64(sum, steps::sum_sq(jt.as_slice()), 1e-12, &format!("{what}: sum_sq"))?;
    // The steps: the f64 scale of the emulated sum, rounded once, times j_t: bit for bit what
    // steps::allocate makes of the same j_t and sum (Uniform: of nothing but D); and within 1e-6 of
    // the CPU's own chain (its j_t and sum are reduced in another order).
    let scale = steps::scale(strategy, budget, t, sum, 1.0);
    let want: Vec<f32> = jt.as_slice().iter().map(|&j| if strategy == Strategy::Uniform { scale } else { scale * j }).collect();
    bits_eq(b.steps.as_slice(), &want, &format!("{what}: steps vs the same scale"))?;
    close(b.steps.as_slice(), &steps::allocate(&cjt, budget, strategy).unwrap(), 1e-6, 0.0, &format!("{what}: steps vs CPU"))?;
    let e = b.result(bits, false);
    compare_quant(&e, &cpu_quantize(&x, g, b.steps.as_slice(), bits, hist)?, hist, &what)?;
    let mut fp = qfp(&e);
    fp.extend(fp_f32(b.steps.as_slice()));
    fp.push(tcells.as_slice()[1]);
    Ok(fp)
}

// ---------------------------------------------------------------- perturbation

/// Module slot of the single perturbation (raw::perturb_module).
pub fn perturb_module(noise: NoiseKind, with_j: bool) -> usize {
    6 + 2 * (noise == NoiseKind::Uniform) as usize + with_j as usize
}

/// Buffers of one perturbation.
pub struct PBufs<E: Element + featjnd_emu::Plain> {
    pub x: Guarded<E>,
    pub j: Option<Guarded<E>>,
    pub out: Guarded<E>,
    pub norms: Guarded<f64>,
    pub scales: Guarded<f32>,
    pub cells: Guarded<u64>,
}

impl<E: Element + featjnd_emu::Plain> PBufs<E> {
    pub fn new(x: &[E], j: Option<&[E]>, samples: usize) -> Self {
        PBufs {
            x: Guarded::new(x, E::from_f32(0.0)),
            j: j.map(|j| Guarded::new(j, E::from_f32(1.0))),
            out: Guarded::filled(x.len(), E::from_f32(GARBAGE_F32)),
            norms: Guarded::new(&vec![0.0; 2 * samples], 0.0),
            scales: Guarded::filled(samples, GARBAGE_F32),
            cells: Guarded::new(&[0u64, 0], 0),
        }
    }
    pub fn params(&self, samples: usize, nrmse: f64, noise: NoiseSpec, in_place: bool) -> FjPerturbParams {
        let n = self.x.as_slice().len();
        FjPerturbParams {
            x: self.x.addr(),
            jnd: self.j.as_ref().map_or(0, |j| j.addr()),
            out: if in_place { self.x.addr() } else { self.out.addr() },
            norms: self.norms.addr(),
            scales: self.scales.addr(),
            bad_index: self.cells.addr(),
            bad_jnd: self.cells.addr() + 8,
            numel: n as u64,
            sample_len: (n / samples) as u64,
            seed: noise.seed,
            nrmse,
            samples: samples as u32,
            subsequence: noise.subsequence,
            noise: if noise.kind == NoiseKind::Uniform { FJ_NOISE_UNIFORM } else { FJ_NOISE_GAUSSIAN },
            pad0: 0,
        }
    }
    pub fn check(&self, what: &str) -> Res {
        let j = self.j.as_ref().map_or(Ok(()), |j| j.check_res("J"));
        for r in [
            self.x.check_res("x"),
            j,
            self.out.check_res("out"),
            self.norms.check_res("norms"),
            self.scales.check_res("scales"),
            self.cells.check_res("cells"),
        ] {
            r.map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(())
    }
    pub fn fp(&self, in_place: bool) -> Vec<u64> {
        let o = if in_place { self.x.as_slice() } else { self.out.as_slice() };
        bits_of(o)
            .into_iter()
            .map(|b| b as u64)
            .chain(fp_f32(self.scales.as_slice()))
            .chain(self.cells.as_slice().iter().copied())
            .collect()
    }
}

/// Blocks of one perturbation launch (raw::perturb_params).
pub fn perturb_blocks(numel: usize, samples: usize) -> u64 {
    samples as u64 * ((numel / samples) as u64).div_ceil(FJ_PT_CHUNK as u64)
}

/// x' = x + s_n J xi (contract §6) through fj_perturb_norms_* then fj_perturb_apply_*, against
/// cpu::perturb (tolerance: the per-sample f64 norms are summed in another order, and Gaussian
/// noise uses glibc's logf/sincosf); `bad` puts a NaN into x (in place: x must stay untouched).
#[allow(clippy::too_many_arguments)]
pub fn perturb<E: Element + featjnd_emu::Plain>(
    m: &Module,
    samples: usize,
    sample_len: usize,
    noise: NoiseKind,
    with_j: bool,
    in_place: bool,
    seed: u64,
    bad: Option<usize>,
    s: Sched,
) -> Out {
    let n = samples * sample_len;
    let mut xv = feature(n, seed);
    if let Some(i) = bad {
        xv[i] = f32::NAN;
    }
    let x: Vec<E> = narrow(&xv);
    let j: Vec<E> = narrow(&jnd(n, seed));
    let spec = NoiseSpec { kind: noise, seed: 11 + seed, subsequence: 2 };
    let nrmse = 0.3;
    let what = format!("perturb {samples}x{sample_len} {:?} {noise:?} J={with_j} in_place={in_place} bad={bad:?}", E::DTYPE);
    let b = PBufs::new(&x, with_j.then_some(&j[..]), samples);
    let p = b.params(samples, nrmse, spec, in_place);
    let dt = E::DTYPE.name();
    let blocks = perturb_blocks(n, samples);
    run(m, &format!("fj_perturb_norms_{dt}"), &p, blocks, s).map_err(|e| format!("{what}: {e}"))?;
    run(m, &format!("fj_perturb_apply_{dt}"), &p, blocks, s).map_err(|e| format!("{what}: {e}"))?;
    b.check(&what)?;
    compare_perturb(&b, &x, with_j.then_some(&j[..]), samples, nrmse, spec, in_place, bad, &what)?;
    Ok(b.fp(in_place))
}

/// The emulated perturbation in `b` against the CPU's.
#[allow(clippy::too_many_arguments)]
pub fn compare_perturb<E: Element + featjnd_emu::Plain>(
    b: &PBufs<E>,
    x: &[E],
    j: Option<&[E]>,
    samples: usize,
    nrmse: f64,
    spec: NoiseSpec,
    in_place: bool,
    bad: Option<usize>,
    what: &str,
) -> Res {
    let got_bad = bad_of(b.cells.as_slice()[0]);
    if let Some(i) = bad {
        ensure(got_bad == Some(i as u64), || format!("{what}: bad cell {got_bad:?}, want {i}"))?;
        if in_place {
            // Nothing written: x (NaN included) exactly as it was.
            ensure(bits_of(b.x.as_slice()) == bits_of(x), || format!("{what}: x written despite a bad value"))?;
        }
        return Ok(());
    }
    ensure(got_bad.is_none() && b.cells.as_slice()[1] == 0, || format!("{what}: bad cells {:?} on valid input", b.cells.as_slice()))?;
    let mut out = vec![E::from_f32(0.0); x.len()];
    let rep = cpu::perturb::perturb(x, j, samples, nrmse, spec, &mut out).map_err(|e| format!("{what}: CPU: {e}"))?;
    let o = if in_place { b.x.as_slice() } else { b.out.as_slice() };
    let f = |v: &[E]| v.iter().map(|e| e.to_f32()).collect::<Vec<f32>>();
    let tol = if E::DTYPE == featjnd_kernels::Dtype::F32 { 1e-5 } else { 1e-2 };
    let scale = x.iter().fold(0.0f32, |a, v| a.max(v.to_f32().abs()));
    close(&f(o), &f(&out), tol, tol * scale, &format!("{what}: x'"))?;
    close(b.scales.as_slice(), &rep.scales, 1e-5, 0.0, &format!("{what}: scales"))?;
    Ok(())
}

// ---------------------------------------------------------------- noise

/// fj_noise against philox::fill: uniform bit for bit, Gaussian within 1e-5 (glibc logf/sincosf).
pub fn noise(m: &Module, numel: usize, offset: u64, kind: NoiseKind, s: Sched) -> Out {
    let what = format!("noise {numel} at {offset} {kind:?}");
    let out = Guarded::filled(numel, GARBAGE_F32);
    let p = FjNoiseParams {
        out: out.addr(),
        numel: numel as u64,
        offset,
        seed: 0xfeed_beef_1234,
        subsequence: 3,
        noise: if kind == NoiseKind::Uniform { FJ_NOISE_UNIFORM } else { FJ_NOISE_GAUSSIAN },
    };
    let blocks = (offset + numel as u64).div_ceil(4).saturating_sub(offset / 4).div_ceil(BLOCK as u64);
    run(m, "fj_noise", &p, blocks, s).map_err(|e| format!("{what}: {e}"))?;
    out.check_res("noise").map_err(|e| format!("{what}: {e}"))?;
    let mut want = vec![0.0f32; numel];
    philox::fill(&mut want, offset, 0xfeed_beef_1234, 3, kind);
    match kind {
        NoiseKind::Uniform => bits_eq(out.as_slice(), &want, &what)?,
        NoiseKind::Gaussian => close(out.as_slice(), &want, 1e-5, 1e-6, &what)?,
    }
    Ok(fp_f32(out.as_slice()).collect())
}

// ---------------------------------------------------------------- the chain, as the launcher plans it

/// What a planned chain is given wrong.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ChainBad {
    None,
    /// A NaN at this element of J.
    J(usize),
    /// A budget so large that the uniform step overflows f32 (every step +Inf): the bad-step cell
    /// must give the CPU's error for token 0.
    HugeBudget,
}

/// The fused chain through `raw::quantize_with_jnd`, the very plan `raw::quantize_with_jnd`
/// enqueues (workspace layout, partials, zeroed cells, kernels, grids), run on the emulator over a
/// host workspace full of garbage and decoded with `raw::decode_quantize`.
#[allow(clippy::too_many_arguments)]
pub fn chain_planned<E: Element + featjnd_emu::Plain>(
    g: &TokenGrid,
    reduce: Reduce,
    strategy: Strategy,
    bits: Bits,
    hist: bool,
    seed: u64,
    wrong: ChainBad,
    s: Sched,
) -> Out {
    use featjnd_kernels::cuda::raw::{self, DevPtr, DevPtrMut, Elems, QuantPtrs, StatsBuf};
    let (n, t) = (g.numel(), g.tokens());
    let budget = if wrong == ChainBad::HugeBudget { 1e300 } else { 0.01 };
    let bad_j = match wrong {
        ChainBad::J(i) => Some(i),
        _ => None,
    };
    let x: Vec<E> = narrow(&feature(n, seed));
    let mut jv = jnd(n, seed);
    if let Some(i) = bad_j {
        jv[i] = f32::NAN;
    }
    let j: Vec<E> = narrow(&jv);
    let xb = Guarded::new(&x, E::from_f32(0.0));
    let jb = Guarded::new(&j, E::from_f32(1.0));
    let steps = Guarded::filled(t, GARBAGE_F32);
    let sym8 = Guarded::filled(if bits == Bits::B8 { n } else { 0 }, 0x55i8);
    let sym16 = Guarded::filled(if bits == Bits::B16 { n } else { 0 }, 0x5555i16);
    let recon = Guarded::filled(n, E::from_f32(GARBAGE_F32));
    let sse = Guarded::filled(t, GARBAGE_F32);
    let slots = raw::jnd_chain_slots(bits, t);
    let ws = Guarded::filled(slots, GARBAGE_U64);
    let p = QuantPtrs {
        x: DevPtr::from_addr(xb.addr()),
        steps: DevPtr::from_addr(steps.addr()),
        symbols: DevPtrMut::from_addr(if bits == Bits::B8 { sym8.addr() } else { sym16.addr() }),
        recon: DevPtrMut::from_addr(recon.addr()),
        token_sse: DevPtrMut::from_addr(sse.addr()),
    };
    let jnd_e = Elems { ptr: DevPtr::from_addr(jb.addr()), dt: E::DTYPE };
    let plan = raw::quantize_with_jnd(
        E::DTYPE,
        g,
        jnd_e,
        reduce,
        budget,
        strategy,
        &p,
        DevPtrMut::from_addr(steps.addr()),
        bits,
        hist,
        StatsBuf::new(DevPtrMut::from_addr(ws.addr()), slots),
    )
    .map_err(|e| format!("plan: {e}"))?;
    let what =
        format!("planned chain {:?} p{} {:?} {reduce:?} {strategy:?} {bits:?} hist={hist} wrong={wrong:?}", g.shape, g.patch, E::DTYPE);
    let two_launch = !run_plan(&plan, s).map_err(|e| format!("{what}: {e}"))?;
    for r in [
        xb.check_res("x"),
        jb.check_res("J"),
        steps.check_res("steps"),
        sym8.check_res("symbols"),
        sym16.check_res("symbols"),
        recon.check_res("recon"),
        sse.check_res("token sse"),
        ws.check_res("workspace"),
    ] {
        r.map_err(|e| format!("{what}: {e}"))?;
    }
    let cells: Vec<i64> = ws.as_slice()[..raw::quantize_slots(bits, true)].iter().map(|&v| v as i64).collect();
    let (bad, st) = raw::decode_quantize(&cells, bits, hist);
    if let Some(i) = bad_j {
        let b = bad.ok_or_else(|| format!("{what}: no bad element reported"))?;
        ensure(b.index == i, || format!("{what}: bad element {b:?}, want J[{i}]"))?;
        return Ok(vec![b.index as u64]);
    }
    if wrong == ChainBad::HugeBudget {
        let got = bad.map(|b| b.error(f32::NAN).to_string());
        let cjt = cpu::token_stats::token_tolerance(&j, g, reduce).unwrap();
        let want = cpu::quantize::check_steps_values(&steps::allocate(&cjt, budget, strategy).unwrap()).err().map(|e| e.to_string());
        ensure(want.is_some() && got == want, || format!("{what}: device says {got:?}, the CPU {want:?}"))?;
        return Ok(vec![]);
    }
    ensure(bad.is_none(), || format!("{what}: bad element {bad:?} on valid input"))?;
    let cjt = cpu::token_stats::token_tolerance(&j, g, reduce).unwrap();
    close(
        steps.as_slice(),
        &steps::allocate(&cjt, budget, strategy).unwrap(),
        1e-6,
        0.0,
        &format!("{what}: steps vs CPU (two launches: {two_launch})"),
    )?;
    let c = cpu_quantize(&x, g, steps.as_slice(), bits, hist)?;
    let e = QRun {
        symbols: if bits == Bits::B8 { sym8.as_slice().iter().map(|&v| v as i16).collect() } else { sym16.as_slice().to_vec() },
        recon: recon.as_slice().to_vec(),
        sse: sse.as_slice().to_vec(),
        total: st.total_sse,
        clamped: st.clamped,
        hist: st.histogram.clone().unwrap_or_default(),
        bad: 0,
        bad_step: 0,
    };
    compare_quant(&e, &c, hist, &what)?;
    Ok(qfp(&e))
}

// ---------------------------------------------------------------- quantize and perturb, as the launchers plan them

fn ptr<T>(addr: u64) -> featjnd_kernels::cuda::raw::DevPtr<T> {
    featjnd_kernels::cuda::raw::DevPtr::from_addr(addr)
}
fn ptr_mut<T>(addr: u64) -> featjnd_kernels::cuda::raw::DevPtrMut<T> {
    featjnd_kernels::cuda::raw::DevPtrMut::from_addr(addr)
}

/// Quantizations through `raw::quantize` (one item) or `raw::quantize_batch` (all of
/// them), statistics in the launcher's slots (zeroed, as its contract asks) decoded by
/// `raw::decode_quantize`, each item against the CPU.
pub fn quantize_planned<E: Element + featjnd_emu::Plain>(
    items: &[(TokenGrid, u64)],
    bits: Bits,
    hist: bool,
    batched: bool,
    s: Sched,
) -> Res {
    use featjnd_kernels::cuda::raw::{self, BatchItem, StatsBuf};
    let slots = raw::quantize_slots(bits, hist);
    let mut bufs = Vec::new();
    for (g, seed) in items {
        let n = g.numel();
        let x: Vec<E> = narrow(&feature(n, *seed));
        let jt = cpu::token_stats::token_tolerance(&narrow::<E>(&jnd(n, *seed)), g, Reduce::Mean).unwrap();
        let st = steps::allocate(&jt, 0.02, Strategy::Jnd).unwrap();
        let b = QBufs::new(&x, &st, bits, 0);
        let stats = Guarded::filled(slots, 0u64);
        bufs.push((g, x, st, b, stats));
    }
    let what = format!("planned quantize {:?} {bits:?} hist={hist} batched={batched}", E::DTYPE);
    if batched {
        let its: Vec<BatchItem> = bufs
            .iter()
            .map(|(g, _, _, b, st)| BatchItem { grid: **g, p: b.ptrs(bits), stats: StatsBuf::new(ptr_mut(st.addr()), slots) })
            .collect();
        let plan = raw::quantize_batch(E::DTYPE, &its, bits, hist).map_err(|e| format!("{what}: plan: {e}"))?;
        run_plan(&plan, s).map_err(|e| format!("{what}: {e}"))?;
    } else {
        for (g, _, _, b, st) in &bufs {
            let plan = raw::quantize(E::DTYPE, g, &b.ptrs(bits), bits, hist, StatsBuf::new(ptr_mut(st.addr()), slots))
                .map_err(|e| format!("{what}: plan: {e}"))?;
            run_plan(&plan, s).map_err(|e| format!("{what}: {e}"))?;
        }
    }
    for (i, (g, x, st, b, stats)) in bufs.iter().enumerate() {
        let what = format!("{what} item {i} {:?}", g.shape);
        b.check(&what)?;
        stats.check_res("statistics").map_err(|e| format!("{what}: {e}"))?;
        let cells: Vec<i64> = stats.as_slice().iter().map(|&v| v as i64).collect();
        let (bad, d) = raw::decode_quantize(&cells, bits, hist);
        ensure(bad.is_none(), || format!("{what}: bad {bad:?}"))?;
        let mut e = b.result(bits, false);
        (e.total, e.clamped, e.hist) = (d.total_sse, d.clamped, d.histogram.clone().unwrap_or_default());
        compare_quant(&e, &cpu_quantize(x, g, st, bits, hist)?, hist, &what)?;
    }
    Ok(())
}

/// Bad steps through `raw::quantize` / `raw::quantize_batch` (contract §4.2, §8): each
/// item's steps get bad values at `bad` tokens (the first is the one to report) and its `x` a NaN
/// as well; the kernels' bad-step cell must decode, through the launcher's own decoding, to the
/// error the CPU gives for the same steps (variant, token and message), ahead of the bad `x`.
pub fn bad_steps_planned(items: &[(TokenGrid, Vec<(usize, f32)>)], bits: Bits, batched: bool, s: Sched) -> Res {
    use featjnd_kernels::cuda::raw::{self, BatchItem, StatsBuf};
    let slots = raw::quantize_slots(bits, true);
    let mut bufs = Vec::new();
    for (i, (g, bad)) in items.iter().enumerate() {
        let mut xv = feature(g.numel(), 300 + i as u64);
        xv[g.numel() / 2] = f32::NAN;
        let x: Vec<f32> = xv;
        let mut st = vec![0.25f32; g.tokens()];
        for &(t, v) in bad {
            st[t] = v;
        }
        let b = QBufs::new(&x, &st, bits, 0);
        bufs.push((g, st, b, Guarded::filled(slots, 0u64)));
    }
    let what = format!("bad steps {bits:?} batched={batched}");
    if batched {
        let its: Vec<BatchItem> = bufs
            .iter()
            .map(|(g, _, b, st)| BatchItem { grid: **g, p: b.ptrs(bits), stats: StatsBuf::new(ptr_mut(st.addr()), slots) })
            .collect();
        let plan = raw::quantize_batch(Dtype::F32, &its, bits, true).map_err(|e| format!("{what}: plan: {e}"))?;
        run_plan(&plan, s).map_err(|e| format!("{what}: {e}"))?;
    } else {
        for (g, _, b, st) in &bufs {
            let plan = raw::quantize(Dtype::F32, g, &b.ptrs(bits), bits, true, StatsBuf::new(ptr_mut(st.addr()), slots))
                .map_err(|e| format!("{what}: plan: {e}"))?;
            run_plan(&plan, s).map_err(|e| format!("{what}: {e}"))?;
        }
    }
    for (i, (g, st, _, stats)) in bufs.iter().enumerate() {
        let what = format!("{what} item {i} {:?}", g.shape);
        stats.check_res("statistics").map_err(|e| format!("{what}: {e}"))?;
        let cells: Vec<i64> = stats.as_slice().iter().map(|&v| v as i64).collect();
        let (bad, _) = raw::decode_quantize(&cells, bits, true);
        let got = bad.ok_or_else(|| format!("{what}: no bad element reported"))?.error(f32::NAN).to_string();
        let want = cpu::quantize::check_steps_values(st).expect_err("the steps are bad").to_string();
        ensure(got == want, || format!("{what}: device says {got:?}, the CPU {want:?}"))?;
    }
    Ok(())
}

/// Perturbations through `raw::perturb` / `raw::perturb_batch`, statistics in the
/// launcher's slots decoded by `raw::decode_perturb`, each against the CPU; `bad` puts a NaN into
/// the first item's x.
pub fn perturb_planned<E: Element + featjnd_emu::Plain>(
    items: &[(usize, usize, NoiseKind, bool)],
    batched: bool,
    bad: Option<usize>,
    s: Sched,
) -> Res {
    use featjnd_kernels::cuda::raw::{self, PerturbItem, PerturbPtrs, StatsBuf};
    let mut bufs = Vec::new();
    for (i, &(n, len, noise, with_j)) in items.iter().enumerate() {
        let mut xv = feature(n * len, 800 + i as u64);
        if let (0, Some(at)) = (i, bad) {
            xv[at] = f32::NAN;
        }
        let x: Vec<E> = narrow(&xv);
        let j: Vec<E> = narrow(&jnd(n * len, 800 + i as u64));
        let spec = NoiseSpec { kind: noise, seed: 60 + i as u64, subsequence: 1 + i as u32 };
        let b = PBufs::new(&x, with_j.then_some(&j[..]), n);
        let stats = Guarded::filled(raw::perturb_slots(n), 0u64);
        bufs.push((x, j, spec, b, stats));
    }
    let what = format!("planned perturb {:?} batched={batched} bad={bad:?}", E::DTYPE);
    let its: Vec<PerturbItem> = bufs
        .iter()
        .zip(items)
        .map(|((_, _, spec, b, st), &(n, len, _, _))| PerturbItem {
            a: PerturbPtrs {
                dt: E::DTYPE,
                x: ptr(b.x.addr()),
                jnd: ptr(b.j.as_ref().map_or(0, |j| j.addr())),
                out: ptr_mut(b.out.addr()),
                numel: n * len,
                samples: n,
            },
            nrmse: 0.25,
            noise: *spec,
            stats: StatsBuf::new(ptr_mut(st.addr()), raw::perturb_slots(n)),
        })
        .collect();
    let plans = if batched {
        vec![raw::perturb_batch(E::DTYPE, &its)]
    } else {
        its.iter().map(|it| raw::perturb(&it.a, it.nrmse, it.noise, it.stats)).collect()
    };
    for plan in plans {
        run_plan(&plan.map_err(|e| format!("{what}: plan: {e}"))?, s).map_err(|e| format!("{what}: {e}"))?;
    }
    for (i, ((x, j, spec, b, stats), &(n, len, noise, with_j))) in bufs.iter().zip(items).enumerate() {
        let what = format!("{what} item {i} {n}x{len} {noise:?} J={with_j}");
        stats.check_res("statistics").map_err(|e| format!("{what}: {e}"))?;
        for r in [b.x.check_res("x"), b.out.check_res("out")] {
            r.map_err(|e| format!("{what}: {e}"))?;
        }
        let cells: Vec<i64> = stats.as_slice().iter().map(|&v| v as i64).collect();
        let (bad_el, rep) = raw::decode_perturb(&cells, n);
        if let (0, Some(at)) = (i, bad) {
            ensure(bad_el.map(|e| e.index) == Some(at), || format!("{what}: bad {bad_el:?}, want x[{at}]"))?;
            continue;
        }
        ensure(bad_el.is_none(), || format!("{what}: bad {bad_el:?} on valid input"))?;
        let mut out = vec![E::from_f32(0.0); x.len()];
        let cpu = cpu::perturb::perturb(x, with_j.then_some(&j[..]), n, 0.25, *spec, &mut out).map_err(|e| format!("{what}: CPU: {e}"))?;
        let f = |v: &[E]| v.iter().map(|e| e.to_f32()).collect::<Vec<f32>>();
        let tol = if E::DTYPE == featjnd_kernels::Dtype::F32 { 1e-5 } else { 1e-2 };
        let scale = x.iter().fold(0.0f32, |a, v| a.max(v.to_f32().abs()));
        close(&f(b.out.as_slice()), &f(&out), tol, tol * scale, &format!("{what}: x'"))?;
        close(&rep.scales, &cpu.scales, 1e-5, 0.0, &format!("{what}: scales"))?;
        ensure(rep.zero_samples == cpu.zero_samples, || format!("{what}: zero samples {:?} vs {:?}", rep.zero_samples, cpu.zero_samples))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- token stats, steps, capped allocation and noise, as planned

/// J -> j_t (`raw::token_stats`, with Σj²) -> steps (`raw::step_alloc` reading that
/// device Σj²), and noise (`raw::noise`): decoded by `raw::decode_token_stats`.
pub fn stats_steps_noise_planned<E: Element + featjnd_emu::Plain>(
    g: &TokenGrid,
    reduce: Reduce,
    strategy: Strategy,
    bad: Option<usize>,
    s: Sched,
) -> Res {
    use featjnd_kernels::cuda::raw::{self, Elems, StatsBuf, StepPtrs};
    let (n, t) = (g.numel(), g.tokens());
    let mut jv = jnd(n, 31);
    if let Some(i) = bad {
        jv[i] = -1.0;
    }
    let j: Vec<E> = narrow(&jv);
    let what = format!("planned token stats + steps {:?} {:?} {reduce:?} {strategy:?} bad={bad:?}", g.shape, E::DTYPE);
    let jb = Guarded::new(&j, E::from_f32(1.0));
    let jt = Guarded::filled(t, GARBAGE_F32);
    let stats = Guarded::filled(raw::TOKEN_STATS_SLOTS, 0u64);
    let sb = StatsBuf::new(ptr_mut(stats.addr()), raw::TOKEN_STATS_SLOTS);
    let plan = raw::token_stats(g, reduce, Elems { ptr: ptr(jb.addr()), dt: E::DTYPE }, ptr_mut(jt.addr()), sb, true)
        .map_err(|e| format!("{what}: {e}"))?;
    run_plan(&plan, s).map_err(|e| format!("{what}: {e}"))?;
    let cells: Vec<i64> = stats.as_slice().iter().map(|&v| v as i64).collect();
    let decoded = raw::decode_token_stats(&cells);
    if let Some(i) = bad {
        ensure(decoded.map(|b| b.index) == Some(i), || format!("{what}: bad {decoded:?}, want J[{i}]"))?;
        return Ok(());
    }
    ensure(decoded.is_none(), || format!("{what}: bad {decoded:?} on valid J"))?;
    let cjt = cpu::token_stats::token_tolerance(&j, g, reduce).unwrap();
    close(jt.as_slice(), &cjt, 1e-5, 0.0, &format!("{what}: j_t"))?;
    let perm = featjnd_kernels::philox::permutation(t, 5);
    let pb = Guarded::new(&perm, 0u32);
    let steps = Guarded::filled(t, GARBAGE_F32);
    let sp = StepPtrs {
        token_tol: ptr(jt.addr()),
        sum_sq: sb.sum_sq(),
        perm: if matches!(strategy, Strategy::Permuted { .. }) { ptr(pb.addr()) } else { ptr(0) },
        steps: ptr_mut(steps.addr()),
    };
    let plan = raw::step_alloc(&sp, t, 0.03, strategy, 0.9).map_err(|e| format!("{what}: {e}"))?;
    run_plan(&plan, s).map_err(|e| format!("{what}: {e}"))?;
    let mut want = vec![0.0f32; t];
    steps::allocate_into(jt.as_slice(), 0.03, strategy, 0.9, &mut want).unwrap();
    let strategy_seed_5 = match strategy {
        Strategy::Permuted { seed } => seed == 5,
        _ => true,
    };
    ensure(strategy_seed_5, || format!("{what}: the test's permutation has seed 5"))?;
    // Σj² summed by the device in another order than steps::sum_sq: the scale within an ulp.
    close(steps.as_slice(), &want, 3e-7, 0.0, &format!("{what}: steps"))?;
    for r in [jb.check_res("J"), jt.check_res("j_t"), stats.check_res("stats"), steps.check_res("steps")] {
        r.map_err(|e| format!("{what}: {e}"))?;
    }
    // Noise over the same number of elements, at an odd offset.
    let out = Guarded::filled(n, GARBAGE_F32);
    let spec = NoiseSpec { kind: NoiseKind::Uniform, seed: 77, subsequence: 4 };
    let plan = raw::noise(ptr_mut(out.addr()), n, 13, spec).map_err(|e| format!("{what}: {e}"))?;
    run_plan(&plan, s).map_err(|e| format!("{what}: {e}"))?;
    let mut want = vec![0.0f32; n];
    philox::fill(&mut want, 13, 77, 4, NoiseKind::Uniform);
    bits_eq(out.as_slice(), &want, &format!("{what}: noise"))?;
    out.check_res("noise").map_err(|e| format!("{what}: {e}"))
}

/// x -> r_t (`raw::token_rms`) -> caps (`raw::capped_caps`, max from the RMS launch or
/// from its own max kernel) -> (a, b) (`raw::capped_solve`) -> steps
/// (`raw::capped_steps`), decoded by `raw::decode_capped`, against the CPU.
pub fn capped_planned<E: Element + featjnd_emu::Plain>(
    g: &TokenGrid,
    kappa: f32,
    budget: f64,
    max_known: bool,
    bad_x: Option<usize>,
    s: Sched,
) -> Res {
    use featjnd_kernels::cuda::raw::{self, CappedBad, Elems, StatsBuf};
    let (n, t) = (g.numel(), g.tokens());
    let mut xv = feature(n, 91);
    if let Some(i) = bad_x {
        xv[i] = f32::INFINITY;
    }
    let x: Vec<E> = narrow(&xv);
    let j: Vec<E> = narrow(&jnd(n, 92));
    let cjt = cpu::token_stats::token_tolerance(&j, g, Reduce::Mean).unwrap();
    let what = format!("planned capped {:?} {:?} kappa={kappa} D={budget} max_known={max_known} bad={bad_x:?}", g.shape, E::DTYPE);
    let xb = Guarded::new(&x, E::from_f32(0.0));
    let jt = Guarded::new(&cjt, GARBAGE_F32);
    let rms = Guarded::filled(t, GARBAGE_F32);
    let caps = Guarded::filled(t, GARBAGE_F32);
    let steps = Guarded::filled(t, GARBAGE_F32);
    let stats = Guarded::filled(raw::CAPPED_SLOTS, 0u64);
    let sb = StatsBuf::new(ptr_mut(stats.addr()), raw::CAPPED_SLOTS);
    let e = |e: featjnd_kernels::Error| format!("{what}: plan: {e}");
    for plan in [
        raw::token_rms(g, Elems { ptr: ptr(xb.addr()), dt: E::DTYPE }, ptr_mut(rms.addr()), sb).map_err(e)?,
        raw::capped_caps(ptr(rms.addr()), t, kappa, max_known, ptr_mut(caps.addr()), sb).map_err(e)?,
        raw::capped_solve(ptr(jt.addr()), ptr(caps.addr()), t, budget, sb).map_err(e)?,
        raw::capped_steps(ptr(jt.addr()), ptr(caps.addr()), t, 1.0, ptr_mut(steps.addr()), sb).map_err(e)?,
    ] {
        run_plan(&plan, s).map_err(|e| format!("{what}: {e}"))?;
    }
    for r in [
        xb.check_res("x"),
        jt.check_res("j_t"),
        rms.check_res("rms"),
        caps.check_res("caps"),
        steps.check_res("steps"),
        stats.check_res("stats"),
    ] {
        r.map_err(|e| format!("{what}: {e}"))?;
    }
    let cells: Vec<i64> = stats.as_slice().iter().map(|&v| v as i64).collect();
    let d = raw::decode_capped(&cells);
    if let Some(i) = bad_x {
        ensure(d.bad == Some(CappedBad::X(i)), || format!("{what}: bad {:?}, want x[{i}]", d.bad))?;
        return Ok(());
    }
    ensure(d.bad.is_none(), || format!("{what}: bad {:?}", d.bad))?;
    let crms = cpu::token_stats::token_rms(&x, g).unwrap();
    close(rms.as_slice(), &crms, 1e-5, 0.0, &format!("{what}: r_t"))?;
    // The caps from the emulated r_t: exactly the CPU's formula (max, one multiply each).
    let want_caps = steps::caps_from_rms(rms.as_slice(), kappa).unwrap();
    bits_eq(caps.as_slice(), &want_caps, &format!("{what}: caps"))?;
    let mut want = vec![0.0f32; t];
    steps::allocate_capped_into(&cjt, &want_caps, budget, 1.0, &mut want).unwrap();
    for (i, (a, b)) in steps.as_slice().iter().zip(&want).enumerate() {
        let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
        ensure(ulps <= 1, || format!("{what}: step {i}: {a} vs {b}"))?;
    }
    Ok(())
}
