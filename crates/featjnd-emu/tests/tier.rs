//! The CPU emulation tier: every kernel entry point of the NVRTC module list runs,
//! from the very `kernels/*.cu` sources, on the GPU tests' cases and more (odd sizes 1, 7, 17,
//! 1025, 5137; the chain on both sides of its 512-block boundary; garbage workspaces; first bad
//! index), and is compared with the CPU path: bit for bit where the contract says bit-identical,
//! within its tolerance elsewhere (see `featjnd_emu` for the rule). Where a kernel uses warp
//! collectives or shared memory, a second schedule (reverse thread order, fully diverged
//! `__activemask`) must give the very same bits.
#[path = "common/cases.rs"]
mod cases;
use cases::ChainBad;
mod common;

use common::*;
use featjnd_emu::{Guarded, Sched, BACKWARD, BLOCK, SCHEDS};
use featjnd_kernels::cuda::compile::MODULES;
use featjnd_kernels::params::*;
use featjnd_kernels::{steps, Bits, Layout, NoiseKind, Reduce, Strategy};
use half::{bf16, f16};

/// Runs `f` under both schedules and demands the same fingerprint.
fn both(what: &str, f: impl Fn(Sched) -> cases::Out) {
    let a = f(SCHEDS[0]).unwrap_or_else(|e| panic!("{e}"));
    let b = f(SCHEDS[1]).unwrap_or_else(|e| panic!("{e} (second schedule)"));
    assert!(a == b, "{what}: results differ between the two schedules (a race or a schedule-dependent collective)");
}

fn one(f: impl Fn(Sched) -> cases::Out) {
    f(SCHEDS[0]).unwrap_or_else(|e| panic!("{e}"));
}

/// Also with the blocks run last to first (against the CPU only: f64 sums over blocks may round
/// differently): a kernel whose blocks depended on each other within a launch would fail here.
fn backward(f: impl Fn(Sched) -> cases::Out) {
    f(BACKWARD).unwrap_or_else(|e| panic!("{e} (blocks last to first)"));
}

#[test]
fn every_launched_kernel_is_emulated() {
    let launched = featjnd_kernels::cuda::raw::kernel_names();
    let mut emulated = 0;
    for (slot, m) in MODULES.iter().enumerate() {
        let e = module(slot);
        assert_eq!(e.label, m.label(), "slot {slot}: build.rs's module list is not compile::MODULES");
        for k in launched.iter().filter(|k| k.module == slot) {
            assert!(e.kernels.iter().any(|x| x.name() == k.name), "{} launches {} but the emulation has none", m.label(), k.name);
        }
        for k in &e.kernels {
            assert!(
                launched.iter().any(|x| x.module == slot && x.name == k.name()),
                "{}: emulated {} is launched by nobody",
                m.label(),
                k.name()
            );
        }
        emulated += e.kernels.len();
    }
    assert!(featjnd_emu::module(MODULES.len()).is_none());
    assert_eq!(emulated, launched.len());
    eprintln!("emulated kernel entry points: {emulated} in {} modules", MODULES.len());
}

// ---------------------------------------------------------------- token stats

#[test]
fn token_stats_match_cpu() {
    let m = module(0);
    for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
        let g = grid_of(layout, &sizes, patch);
        let seed = i as u64;
        for reduce in [Reduce::Mean, Reduce::Rms, Reduce::Min] {
            both(&format!("{sizes:?} {reduce:?}"), |s| cases::token_stats::<f32>(&m, &g, reduce, false, seed, None, s));
            backward(|s| cases::token_stats::<f32>(&m, &g, reduce, false, seed, None, s));
            one(|s| cases::token_stats::<f16>(&m, &g, reduce, false, seed, None, s));
            one(|s| cases::token_stats::<bf16>(&m, &g, reduce, false, seed, None, s));
        }
        // The token RMS of a feature (check = finite), as the capped allocation uses it.
        one(|s| cases::token_stats::<f32>(&m, &g, Reduce::Rms, true, seed, None, s));
        one(|s| cases::token_stats::<bf16>(&m, &g, Reduce::Rms, true, seed, None, s));
    }
}

#[test]
fn token_stats_report_the_first_bad_value() {
    let m = module(0);
    for (layout, sizes, patch, at) in [
        (Layout::Nchw, vec![2, 8, 6, 6], 1, ((8 + 2) * 6 + 1) * 6 + 1),
        (Layout::Nchw, vec![3, 17, 6, 10], 2, 2 * 17 * 60 + 5 * 60 + 13),
        (Layout::Ntc, vec![2, 50, 768], 1, 37 * 768 + 700),
        (Layout::Ntc, vec![1, 3, 5137], 1, 5137 + 5130),
    ] {
        let g = grid_of(layout, &sizes, patch);
        both(&format!("{sizes:?}"), |s| cases::token_stats::<f32>(&m, &g, Reduce::Mean, false, 3, Some(at), s));
        one(|s| cases::token_stats::<f16>(&m, &g, Reduce::Min, false, 3, Some(at), s));
        one(|s| cases::token_stats::<bf16>(&m, &g, Reduce::Rms, true, 3, Some(at), s));
    }
}

// ---------------------------------------------------------------- step allocation

/// fj_step_alloc reads Σj² from a device cell: given the CPU's own sum, its steps are the CPU's
/// bit for bit (one f64 formula rounded once, one f32 multiply), for every strategy and β.
#[test]
fn step_allocation_is_bit_identical_to_cpu() {
    let m = module(1);
    for t in [1usize, 7, 17, 1025, 1031, 5137] {
        let jt = jnd(t, 5 + t as u64);
        let sum = Guarded::new(&[steps::sum_sq(&jt)], 0.0);
        let jb = Guarded::new(&jt, GARBAGE_F32);
        for strategy in [Strategy::Uniform, Strategy::Jnd, Strategy::Permuted { seed: 9 }] {
            for beta in [1.0, 0.37] {
                let perm = featjnd_kernels::philox::permutation(t, 9);
                let pb = Guarded::new(&perm, 0);
                let out = Guarded::filled(t, GARBAGE_F32);
                let p = FjStepAllocParams {
                    token_tol: jb.addr(),
                    sum_sq: sum.addr(),
                    perm: if matches!(strategy, Strategy::Permuted { .. }) { pb.addr() } else { 0 },
                    steps: out.addr(),
                    budget: 0.02,
                    beta,
                    tokens: t as u32,
                    strategy: match strategy {
                        Strategy::Uniform => FJ_STRATEGY_UNIFORM,
                        Strategy::Jnd => FJ_STRATEGY_JND,
                        Strategy::Permuted { .. } => FJ_STRATEGY_PERMUTED,
                    },
                };
                run(&m, "fj_step_alloc", &p, (t as u64).div_ceil(BLOCK as u64), SCHEDS[0]).unwrap();
                out.check_res("steps").unwrap();
                let mut want = vec![0.0f32; t];
                steps::allocate_into(&jt, 0.02, strategy, beta, &mut want).unwrap();
                bits_eq(out.as_slice(), &want, &format!("T={t} {strategy:?} beta={beta}")).unwrap();
            }
        }
    }
}

// ---------------------------------------------------------------- the capped allocation

/// Caps spanning several orders of magnitude (capped and free tokens both occur).
fn caps_input(t: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let jt = jnd(t, seed);
    let x = feature(t, seed + 3);
    let e = jnd(t, seed + 7);
    let rms = x.iter().zip(&e).map(|(v, s)| (v.abs() * 2.0 + 1e-3) * 10f32.powf((s.log10().round()) * 3.0)).collect();
    (jt, rms)
}

struct Capped {
    jt: Guarded<f32>,
    rms: Guarded<f32>,
    caps: Guarded<f32>,
    scales: Guarded<f64>,
    steps: Guarded<f32>,
    /// max_rms (f32 bits), bad j, bad c, status
    cells: Guarded<u64>,
}

fn run_capped(jt: &[f32], rms: &[f32], budget: f64, beta: f64, kappa: f32, s: Sched) -> Result<Capped, String> {
    let m = module(1);
    let t = jt.len();
    let c = Capped {
        jt: Guarded::new(jt, GARBAGE_F32),
        rms: Guarded::new(rms, GARBAGE_F32),
        caps: Guarded::filled(t, GARBAGE_F32),
        scales: Guarded::new(&[f64::from_bits(GARBAGE_U64); 2], 0.0),
        steps: Guarded::filled(t, GARBAGE_F32),
        cells: Guarded::new(&[0u64; 4], 0),
    };
    let a = c.cells.addr();
    let p = FjCappedParams {
        token_tol: c.jt.addr(),
        rms: c.rms.addr(),
        max_rms: a,
        caps: c.caps.addr(),
        scales: c.scales.addr(),
        steps: c.steps.addr(),
        bad_jnd: a + 8,
        bad_cap: a + 16,
        status: a + 24,
        budget,
        beta,
        kappa,
        tokens: t as u32,
    };
    let blocks = (t as u64).div_ceil(BLOCK as u64);
    run(&m, "fj_max_pos", &p, blocks, s)?;
    run(&m, "fj_caps", &p, blocks, s)?;
    run(&m, "fj_capped_solve", &p, 1, s)?;
    run(&m, "fj_capped_steps", &p, blocks, s)?;
    for r in [
        c.jt.check_res("j"),
        c.rms.check_res("rms"),
        c.caps.check_res("caps"),
        c.scales.check_res("scales"),
        c.steps.check_res("steps"),
        c.cells.check_res("cells"),
    ] {
        r?;
    }
    Ok(c)
}

#[test]
fn capped_allocation_matches_cpu() {
    for (i, t) in [1usize, 7, 17, 1025, 5137].into_iter().enumerate() {
        let (jt, rms) = caps_input(t, 40 + i as u64);
        for (kappa, budget) in [(0.5f32, 0.02), (0.05, 0.5), (2.0, 1e-4), (0.01, 10.0)] {
            for beta in [1.0, 0.8] {
                let what = format!("T={t} kappa={kappa} D={budget} beta={beta}");
                let fp = |s| {
                    let c = run_capped(&jt, &rms, budget, beta, kappa, s).map_err(|e| format!("{what}: {e}"))?;
                    let cells = c.cells.as_slice();
                    ensure(cells[1] == 0 && cells[2] == 0 && cells[3] == 0, || format!("{what}: cells {cells:?}"))?;
                    // Max and caps: exact (order-free max, one f32 multiply each).
                    let want_caps = steps::caps_from_rms(&rms, kappa).unwrap();
                    bits_eq(c.caps.as_slice(), &want_caps, &format!("{what}: caps"))?;
                    // Steps: the solve finds the capped set by bisection, the CPU by sorting; their
                    // f64 scales may differ in the last bits, so a step by one f32 ulp.
                    let mut want = vec![0.0f32; t];
                    steps::allocate_capped_into(&jt, &want_caps, budget, beta, &mut want).unwrap();
                    for (k, (a, b)) in c.steps.as_slice().iter().zip(&want).enumerate() {
                        let d = (a.to_bits() as i64 - b.to_bits() as i64).abs();
                        ensure(*a > 0.0 && a.is_finite() && d <= 1, || format!("{what}: step {k}: {a} vs {b} ({d} ulps)"))?;
                    }
                    Ok(c.steps
                        .as_slice()
                        .iter()
                        .map(|v| v.to_bits() as u64)
                        .chain(c.scales.as_slice().iter().map(|v| v.to_bits()))
                        .collect())
                };
                if t >= 1025 {
                    both(&what, fp);
                } else {
                    one(fp);
                }
            }
        }
    }
}

#[test]
fn capped_allocation_reports_bad_tokens_and_zero_features() {
    let (mut jt, mut rms) = caps_input(1025, 77);
    jt[700] = f32::NAN;
    jt[900] = 0.0;
    // An infinite r_t makes the max infinite: the status says so, and every cap (floored at
    // 2^-24 max = Inf) is bad from token 0 on, as on the CPU (caps_from_rms refuses the feature).
    rms[300] = f32::INFINITY;
    assert!(steps::caps_from_rms(&rms, 0.5).is_err());
    let c = run_capped(&jt, &rms, 0.02, 1.0, 0.5, SCHEDS[0]).unwrap();
    let cells = c.cells.as_slice();
    assert_eq!(bad_of(cells[1]), Some(700), "first bad j");
    assert_eq!(bad_of(cells[2]), Some(0), "first bad cap");
    assert_eq!(cells[3] as u32, FJ_CAPPED_ZERO_FEATURE, "status of an infinite feature");
    assert!(c.scales.as_slice()[0].is_nan() && c.scales.as_slice()[1].is_nan());
    let zero = vec![0.0f32; 17];
    let c = run_capped(&jnd(17, 1), &zero, 0.02, 1.0, 0.5, SCHEDS[1]).unwrap();
    assert_eq!(c.cells.as_slice()[3] as u32, FJ_CAPPED_ZERO_FEATURE, "status of an all-zero feature");
}

// ---------------------------------------------------------------- quantize

#[test]
fn quantize_is_bit_identical_to_cpu() {
    for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
        let g = grid_of(layout, &sizes, patch);
        let seed = 100 + i as u64;
        for bits in [Bits::B8, Bits::B16] {
            for hist in [false, true] {
                let m = module(cases::quantize_module(bits, hist));
                for budget in [0.05, 1e-6] {
                    let w = format!("{sizes:?} {bits:?} hist={hist} D={budget}");
                    both(&w, |s| cases::quantize::<f32>(&m, &g, bits, hist, budget, seed, false, 0, None, s));
                    backward(|s| cases::quantize::<f32>(&m, &g, bits, hist, budget, seed, false, 0, None, s));
                    one(|s| cases::quantize::<f16>(&m, &g, bits, hist, budget, seed, false, 0, None, s));
                    if hist {
                        both(&w, |s| cases::quantize::<bf16>(&m, &g, bits, hist, budget, seed, false, 0, None, s));
                    } else {
                        one(|s| cases::quantize::<bf16>(&m, &g, bits, hist, budget, seed, false, 0, None, s));
                    }
                }
                // In place, and (NTC) from a misaligned x: the scalar path instead of 16-byte loads.
                one(|s| cases::quantize::<f32>(&m, &g, bits, hist, 0.05, seed, true, 0, None, s));
                one(|s| cases::quantize::<f16>(&m, &g, bits, hist, 1e-6, seed, true, 0, None, s));
                if layout == Layout::Ntc {
                    one(|s| cases::quantize::<f32>(&m, &g, bits, hist, 0.05, seed, false, 1, None, s));
                    one(|s| cases::quantize::<bf16>(&m, &g, bits, hist, 0.05, seed, true, 1, None, s));
                }
            }
        }
    }
}

#[test]
fn quantize_reports_the_first_non_finite_value() {
    for (layout, sizes, patch, at) in [
        (Layout::Nchw, vec![2, 8, 6, 6], 1, ((8 + 3) * 6 + 2) * 6 + 4),
        (Layout::Nchw, vec![1, 64, 28, 28], 4, 40 * 784 + 27 * 28 + 3),
        (Layout::Ntc, vec![3, 33, 1025], 1, 70 * 1025 + 1000),
        (Layout::Ntc, vec![2, 50, 768], 1, 99 * 768 + 767),
    ] {
        let g = grid_of(layout, &sizes, patch);
        for (bits, hist) in [(Bits::B8, true), (Bits::B16, false)] {
            let m = module(cases::quantize_module(bits, hist));
            both(&format!("{sizes:?}"), |s| cases::quantize::<f32>(&m, &g, bits, hist, 0.01, 1, false, 0, Some(at), s));
            one(|s| cases::quantize::<f16>(&m, &g, bits, hist, 0.01, 1, true, 0, Some(at), s));
        }
    }
}

/// A batch runs each item's single-item body: every item's outputs are those of its own launch,
/// bit for bit (and so the CPU's).
#[test]
fn quantize_batch_items_equal_their_single_launches() {
    let items = [
        (Layout::Nchw, vec![2, 7, 5, 3], 1),
        (Layout::Ntc, vec![2, 7, 17], 1),
        (Layout::Nchw, vec![3, 17, 6, 10], 2),
        (Layout::Ntc, vec![1, 3, 5137], 1),
    ];
    let other = [(Layout::Ntc, vec![1, 1, 1], 1), (Layout::Nchw, vec![1, 64, 28, 28], 4), (Layout::Ntc, vec![2, 50, 768], 1)];
    for (bits, hist) in [(Bits::B8, true), (Bits::B16, false), (Bits::B8, false), (Bits::B16, true)] {
        let m = module(cases::quantize_module(bits, hist));
        for items in [&items[..], &other[..]] {
            batch::<f32>(&m, items, bits, hist);
            batch::<f16>(&m, items, bits, hist);
            batch::<bf16>(&m, items, bits, hist);
        }
    }
}

fn batch<E: featjnd_kernels::Element + featjnd_emu::Plain>(
    m: &featjnd_emu::Module,
    items: &[(Layout, Vec<usize>, usize)],
    bits: Bits,
    hist: bool,
) {
    let mut bufs = Vec::new();
    let mut bp = FjQuantizeBatchParams::default();
    let mut start = 0u32;
    for (i, (layout, sizes, patch)) in items.iter().enumerate() {
        let g = grid_of(*layout, sizes, *patch);
        let n = g.numel();
        let x: Vec<E> = narrow(&feature(n, 200 + i as u64));
        let jt = featjnd_kernels::cpu::token_stats::token_tolerance(&narrow::<E>(&jnd(n, 200 + i as u64)), &g, Reduce::Mean).unwrap();
        let st = steps::allocate(&jt, 0.01, Strategy::Jnd).unwrap();
        let b = cases::QBufs::new(&x, &st, bits, 0);
        bp.items[i] = b.params(&g, bits, hist, false);
        bp.block_start[i] = start;
        start += cases::token_blocks(&g) as u32;
        bufs.push((g, x, st, b));
    }
    bp.count = items.len() as u32;
    run(m, &format!("fj_quantize_batch_{}", E::DTYPE.name()), &bp, start as u64, SCHEDS[0]).unwrap();
    for (i, (g, x, st, b)) in bufs.iter().enumerate() {
        let what = format!("batch item {i} {:?} {:?} {bits:?} hist={hist}", g.shape, E::DTYPE);
        b.check(&what).unwrap();
        let single = cases::QBufs::new(x, st, bits, 0);
        let name = format!("fj_quantize_{}_{}", if g.shape.layout == Layout::Nchw { "nchw" } else { "ntc" }, E::DTYPE.name());
        run(m, &name, &single.params(g, bits, hist, false), cases::token_blocks(g), SCHEDS[0]).unwrap();
        let (e, s) = (b.result(bits, false), single.result(bits, false));
        assert!(cases::qfp(&e) == cases::qfp(&s), "{what}: differs from its single launch");
        cases::compare_quant(&e, &cases::cpu_quantize(x, g, st, bits, hist).unwrap(), hist, &what).unwrap();
    }
}

// ---------------------------------------------------------------- the fused chain

fn chain_modules(bits: Bits, hist: bool) -> [featjnd_emu::Module; 3] {
    [module(0), module(1), module(cases::quantize_module(bits, hist))]
}

#[test]
fn chain_matches_cpu_on_the_gpu_test_shapes() {
    for (i, (layout, sizes, patch)) in shapes().into_iter().enumerate() {
        let g = grid_of(layout, &sizes, patch);
        for (bits, hist) in [(Bits::B8, false), (Bits::B16, true), (Bits::B8, true), (Bits::B16, false)] {
            let [ts, sa, q] = chain_modules(bits, hist);
            for strategy in [Strategy::Jnd, Strategy::Uniform] {
                both(&format!("{sizes:?}"), |s| {
                    cases::chain::<f32>(&ts, &sa, &q, &g, Reduce::Rms, strategy, bits, hist, 0.01, 300 + i as u64, None, s)
                });
                backward(|s| cases::chain::<f32>(&ts, &sa, &q, &g, Reduce::Rms, strategy, bits, hist, 0.01, 300 + i as u64, None, s));
            }
            one(|s| cases::chain::<f16>(&ts, &sa, &q, &g, Reduce::Mean, Strategy::Jnd, bits, hist, 0.01, 300 + i as u64, None, s));
            one(|s| cases::chain::<bf16>(&ts, &sa, &q, &g, Reduce::Min, Strategy::Jnd, bits, hist, 0.01, 300 + i as u64, None, s));
        }
    }
}

/// Both sides of FJ_CHAIN_MAX_PARTS = 512 token-stats blocks (two launches with per-block
/// partials; above it, token stats + fj_step_alloc + quantize), NCHW (32 tokens a block) and NTC
/// (8 a block), with garbage in every workspace cell, and a bad J reported from either form.
#[test]
fn chain_on_both_sides_of_its_512_block_boundary() {
    let [ts, sa, q] = chain_modules(Bits::B8, true);
    let cases: [(Layout, Vec<usize>); 6] = [
        (Layout::Ntc, vec![1, 4088, 3]),      // 511 blocks
        (Layout::Ntc, vec![2, 2048, 5]),      // 512
        (Layout::Ntc, vec![1, 4097, 3]),      // 513: the fallback
        (Layout::Nchw, vec![1, 1, 16, 1022]), // 511
        (Layout::Nchw, vec![1, 2, 16, 1024]), // 512
        (Layout::Nchw, vec![1, 1, 16, 1025]), // 513: the fallback
    ];
    for (i, (layout, sizes)) in cases.into_iter().enumerate() {
        let g = grid_of(layout, &sizes, 1);
        let parts = cases::token_blocks(&g);
        assert!((511..=513).contains(&parts), "{sizes:?}: {parts} blocks");
        both(&format!("{sizes:?}"), |s| {
            cases::chain::<f32>(&ts, &sa, &q, &g, Reduce::Mean, Strategy::Jnd, Bits::B8, true, 0.01, 900 + i as u64, None, s)
        });
        backward(|s| cases::chain::<f32>(&ts, &sa, &q, &g, Reduce::Mean, Strategy::Jnd, Bits::B8, true, 0.01, 900 + i as u64, None, s));
        backward(|s| {
            cases::chain::<f32>(
                &ts,
                &sa,
                &q,
                &g,
                Reduce::Mean,
                Strategy::Jnd,
                Bits::B8,
                true,
                0.01,
                900 + i as u64,
                Some(g.numel() - 2 - i),
                s,
            )
        });
        one(|s| cases::chain::<bf16>(&ts, &sa, &q, &g, Reduce::Rms, Strategy::Uniform, Bits::B8, true, 0.01, 900 + i as u64, None, s));
        let bad = g.numel() - 2 - i;
        one(|s| cases::chain::<f32>(&ts, &sa, &q, &g, Reduce::Mean, Strategy::Jnd, Bits::B8, true, 0.01, 900 + i as u64, Some(bad), s));
        one(|s| cases::chain::<f16>(&ts, &sa, &q, &g, Reduce::Mean, Strategy::Jnd, Bits::B8, true, 0.01, 900 + i as u64, Some(7 + i), s));
    }
}

// ---------------------------------------------------------------- perturbation and noise

/// (samples, sample length) of the GPU tests' shapes, plus odd sizes and a multi-chunk sample.
fn perturb_sizes() -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = shapes().into_iter().map(|(_, s, _)| (s[0], s[1..].iter().product())).collect();
    v.extend([(1, 1), (3, 7), (2, 17), (1, 1025), (1, 5137), (2, 4096 * 3 + 1)]);
    v
}

#[test]
fn perturbation_matches_cpu() {
    for (i, (n, len)) in perturb_sizes().into_iter().enumerate() {
        for noise in [NoiseKind::Uniform, NoiseKind::Gaussian] {
            for with_j in [false, true] {
                let m = module(cases::perturb_module(noise, with_j));
                let seed = 500 + i as u64;
                both(&format!("{n}x{len}"), |s| cases::perturb::<f32>(&m, n, len, noise, with_j, false, seed, None, s));
                backward(|s| cases::perturb::<f32>(&m, n, len, noise, with_j, false, seed, None, s));
                one(|s| cases::perturb::<f16>(&m, n, len, noise, with_j, i % 2 == 0, seed, None, s));
                one(|s| cases::perturb::<bf16>(&m, n, len, noise, with_j, i % 2 == 1, seed, None, s));
            }
        }
    }
}

#[test]
fn perturbation_with_a_bad_x_reports_it_and_writes_nothing() {
    for (n, len, at) in [(2usize, 288usize, 288 + 4 * 6 + 2), (2, 50176, 50176 + 9000), (1, 5137, 5136)] {
        for (noise, with_j) in [(NoiseKind::Gaussian, false), (NoiseKind::Uniform, true)] {
            let m = module(cases::perturb_module(noise, with_j));
            both(&format!("{n}x{len}"), |s| cases::perturb::<f32>(&m, n, len, noise, with_j, true, 1, Some(at), s));
            backward(|s| cases::perturb::<f32>(&m, n, len, noise, with_j, true, 1, Some(at), s));
            one(|s| cases::perturb::<bf16>(&m, n, len, noise, with_j, true, 1, Some(at), s));
        }
    }
}

/// A batch of perturbations (generic module: noise and J per item): each item bit for bit its own
/// single launch (of the specialised module), and so within tolerance of the CPU.
#[test]
fn perturb_batch_items_equal_their_single_launches() {
    let generic = module(10);
    let items = [
        (2usize, 105usize, NoiseKind::Gaussian, true),
        (1, 5137, NoiseKind::Uniform, false),
        (3, 4097, NoiseKind::Uniform, true),
        (1, 1, NoiseKind::Gaussian, false),
    ];
    let other = [(1usize, 17usize, NoiseKind::Uniform, true), (2, 4096, NoiseKind::Gaussian, true), (1, 7, NoiseKind::Uniform, false)];
    for items in [&items[..], &other[..]] {
        perturb_batch::<f32>(&generic, items);
        perturb_batch::<f16>(&generic, items);
        perturb_batch::<bf16>(&generic, items);
    }
}

fn perturb_batch<E: featjnd_kernels::Element + featjnd_emu::Plain>(m: &featjnd_emu::Module, items: &[(usize, usize, NoiseKind, bool)]) {
    use featjnd_kernels::cpu::perturb::NoiseSpec;
    let mut bp = FjPerturbBatchParams::default();
    let mut bufs = Vec::new();
    let mut start = 0u32;
    for (i, &(n, len, noise, with_j)) in items.iter().enumerate() {
        let x: Vec<E> = narrow(&feature(n * len, 700 + i as u64));
        let j: Vec<E> = narrow(&jnd(n * len, 700 + i as u64));
        let spec = NoiseSpec { kind: noise, seed: 40 + i as u64, subsequence: i as u32 };
        let b = cases::PBufs::new(&x, with_j.then_some(&j[..]), n);
        bp.items[i] = b.params(n, 0.2, spec, false);
        bp.block_start[i] = start;
        start += cases::perturb_blocks(n * len, n) as u32;
        bufs.push((x, j, spec, b));
    }
    bp.count = items.len() as u32;
    let dt = E::DTYPE.name();
    run(m, &format!("fj_perturb_norms_batch_{dt}"), &bp, start as u64, SCHEDS[0]).unwrap();
    run(m, &format!("fj_perturb_apply_batch_{dt}"), &bp, start as u64, SCHEDS[0]).unwrap();
    for (i, (x, j, spec, b)) in bufs.iter().enumerate() {
        let (n, len, noise, with_j) = items[i];
        let what = format!("perturb batch item {i} {n}x{len} {:?} {noise:?} J={with_j}", E::DTYPE);
        b.check(&what).unwrap();
        let single = cases::PBufs::new(x, with_j.then_some(&j[..]), n);
        let p = single.params(n, 0.2, *spec, false);
        let sm = module(cases::perturb_module(noise, with_j));
        run(&sm, &format!("fj_perturb_norms_{dt}"), &p, cases::perturb_blocks(n * len, n), SCHEDS[0]).unwrap();
        run(&sm, &format!("fj_perturb_apply_{dt}"), &p, cases::perturb_blocks(n * len, n), SCHEDS[0]).unwrap();
        assert!(b.fp(false) == single.fp(false), "{what}: differs from its single launch");
        cases::compare_perturb(b, x, with_j.then_some(&j[..]), n, 0.2, *spec, false, None, &what).unwrap();
    }
}

#[test]
fn noise_matches_cpu() {
    let m = module(10);
    for (numel, offset) in [(1usize, 0u64), (7, 3), (17, 5), (1025, 6), (5137, 1), (100_003, 1 << 33)] {
        for kind in [NoiseKind::Uniform, NoiseKind::Gaussian] {
            one(|s| cases::noise(&m, numel, offset, kind, s));
        }
    }
}

/// The fused chain exactly as `raw::quantize_with_jnd` plans it (its workspace layout, partials,
/// cleared cells, kernels and grids; decoded by `raw::decode_quantize`), on both sides of the
/// 512-block boundary, with a bad J reported through the launcher's own decoding.
#[test]
fn chain_as_the_launcher_plans_it() {
    let sizes: [(Layout, Vec<usize>, usize); 6] = [
        (Layout::Nchw, vec![2, 7, 5, 3], 1),
        (Layout::Ntc, vec![3, 33, 1025], 1),
        (Layout::Ntc, vec![2, 2048, 5], 1),
        (Layout::Ntc, vec![1, 4097, 3], 1),
        (Layout::Nchw, vec![1, 2, 16, 1024], 1),
        (Layout::Nchw, vec![1, 1, 16, 1025], 1),
    ];
    for (i, (layout, s, patch)) in sizes.into_iter().enumerate() {
        let g = grid_of(layout, &s, patch);
        for (bits, hist) in [(Bits::B8, true), (Bits::B16, false)] {
            let seed = 40 + i as u64;
            both(&format!("{s:?}"), |sc| {
                cases::chain_planned::<f32>(&g, Reduce::Mean, Strategy::Jnd, bits, hist, seed, ChainBad::None, sc)
            });
            one(|sc| cases::chain_planned::<bf16>(&g, Reduce::Rms, Strategy::Uniform, bits, hist, seed, ChainBad::None, sc));
            let bad_j = ChainBad::J(g.numel() / 2 + i);
            one(|sc| cases::chain_planned::<f16>(&g, Reduce::Min, Strategy::Jnd, bits, hist, seed, bad_j, sc));
            one(|sc| cases::chain_planned::<f32>(&g, Reduce::Mean, Strategy::Uniform, bits, hist, seed, ChainBad::HugeBudget, sc));
        }
    }
}

/// Bad steps on the device (contract §8: the sync-free calls check step values without a host
/// round trip): the kernels' bad-step cell decodes to the CPU's error for the same steps — the
/// first bad token, its value in the message — ahead of a non-finite x; single and batched, both
/// layouts, many blocks, both bit widths, every schedule.
#[test]
fn bad_steps_are_reported_as_the_cpu_reports_them() {
    let items = vec![
        (grid_of(Layout::Nchw, &[1, 3, 5, 7], 1), vec![(20, 0.0), (30, f32::NAN)]),
        (grid_of(Layout::Ntc, &[2, 17, 33], 1), vec![(3, f32::INFINITY), (1, -0.5)]),
        // A subnormal step: > 0, but 1/Δ overflows; and a NaN after it in a later block.
        (grid_of(Layout::Nchw, &[1, 2, 64, 64], 1), vec![(4000, 1e-40), (4095, f32::NAN)]),
        (grid_of(Layout::Ntc, &[1, 1, 1], 1), vec![(0, f32::NEG_INFINITY)]),
    ];
    for bits in [Bits::B8, Bits::B16] {
        for batched in [false, true] {
            for s in [SCHEDS[0], SCHEDS[1], BACKWARD] {
                cases::bad_steps_planned(&items, bits, batched, s).unwrap();
            }
        }
    }
}

/// Single and batched quantizations and perturbations exactly as `raw::quantize`,
/// `raw::quantize_batch`, `raw::perturb` and `raw::perturb_batch` plan them (the plans a device
/// is given, run by `run_plan`), statistics decoded by `raw`'s own decoders.
#[test]
fn quantize_and_perturb_as_planned() {
    let q: Vec<(featjnd_kernels::TokenGrid, u64)> = [
        (Layout::Nchw, vec![2, 7, 5, 3], 1),
        (Layout::Ntc, vec![3, 33, 1025], 1),
        (Layout::Nchw, vec![3, 17, 6, 10], 2),
        (Layout::Ntc, vec![1, 1, 1], 1),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (l, s, p))| (grid_of(l, &s, p), 60 + i as u64))
    .collect();
    for (bits, hist) in [(Bits::B8, true), (Bits::B16, false), (Bits::B8, false), (Bits::B16, true)] {
        for batched in [false, true] {
            cases::quantize_planned::<f32>(&q, bits, hist, batched, SCHEDS[0]).unwrap();
            cases::quantize_planned::<bf16>(&q, bits, hist, batched, SCHEDS[1]).unwrap();
            cases::quantize_planned::<f16>(&q, bits, hist, batched, BACKWARD).unwrap();
        }
    }
    let p = [
        (2usize, 105usize, NoiseKind::Gaussian, true),
        (1, 5137, NoiseKind::Uniform, false),
        (3, 4097, NoiseKind::Uniform, true),
        (1, 1, NoiseKind::Gaussian, false),
    ];
    for batched in [false, true] {
        cases::perturb_planned::<f32>(&p, batched, None, SCHEDS[0]).unwrap();
        cases::perturb_planned::<f16>(&p, batched, None, SCHEDS[1]).unwrap();
        cases::perturb_planned::<bf16>(&p, batched, Some(150), BACKWARD).unwrap();
    }
}

/// Token stats, step allocation, noise and the capped allocation exactly as planned (`raw::token_stats`, `step_alloc`, `noise`, `token_rms`,
/// `capped_caps`, `capped_solve`, `capped_steps`), decoded by their decoders.
#[test]
fn stats_steps_capped_and_noise_as_planned() {
    let grids = [
        grid_of(Layout::Nchw, &[2, 7, 5, 3], 1),
        grid_of(Layout::Ntc, &[1, 3, 5137], 1),
        grid_of(Layout::Nchw, &[3, 17, 6, 10], 2),
        grid_of(Layout::Ntc, &[2, 50, 768], 1),
    ];
    for (i, g) in grids.iter().enumerate() {
        for strategy in [Strategy::Uniform, Strategy::Jnd, Strategy::Permuted { seed: 5 }] {
            cases::stats_steps_noise_planned::<f32>(g, Reduce::Mean, strategy, None, SCHEDS[0]).unwrap();
        }
        cases::stats_steps_noise_planned::<bf16>(g, Reduce::Rms, Strategy::Jnd, None, SCHEDS[1]).unwrap();
        cases::stats_steps_noise_planned::<f16>(g, Reduce::Min, Strategy::Jnd, Some(g.numel() - 1 - i), BACKWARD).unwrap();
        for (kappa, budget) in [(0.5f32, 0.02), (0.05, 0.5), (2.0, 1e-4)] {
            cases::capped_planned::<f32>(g, kappa, budget, i % 2 == 0, None, SCHEDS[0]).unwrap();
            cases::capped_planned::<bf16>(g, kappa, budget, i % 2 == 1, None, SCHEDS[1]).unwrap();
        }
        cases::capped_planned::<f16>(g, 0.5, 0.02, true, Some(g.numel() / 3), BACKWARD).unwrap();
    }
}
