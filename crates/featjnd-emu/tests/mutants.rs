//! The emulation tier catches broken kernels: build.rs compiles deliberately broken
//! copies of the kernel sources (`MUTANTS`: an off-by-one in a tail loop, a missing
//! `__syncthreads`, a wrong partial index, a histogram that counts leaders instead of peers, a
//! quantizer tail loop one element too far). Each test runs a case of the tier on the intact module
//! (it must pass) and on the broken copy (it must fail), and prints what caught it.
#[path = "common/cases.rs"]
mod cases;
mod common;

use common::*;
use featjnd_emu::{mutant, SCHEDS};
use featjnd_emu::{Guarded, BLOCK};
use featjnd_kernels::params::FjCappedParams;
use featjnd_kernels::{Bits, Layout, Reduce, Strategy};

fn caught(name: &str, intact: cases::Out, broken: cases::Out) {
    intact.unwrap_or_else(|e| panic!("{name}: the intact kernel fails: {e}"));
    match broken {
        Ok(_) => panic!("{name}: the broken kernel passed the tier"),
        Err(e) => eprintln!("caught {name}: {e}"),
    }
}

#[test]
fn off_by_one_in_the_token_row_tail_is_caught() {
    let g = grid_of(Layout::Ntc, &[2, 7, 17], 1);
    let bad = mutant("ntc_tail_off_by_one");
    let s = SCHEDS[0];
    caught(
        "ntc_tail_off_by_one",
        cases::token_stats::<f32>(&module(0), &g, Reduce::Mean, false, 1, None, s),
        cases::token_stats::<f32>(&bad, &g, Reduce::Mean, false, 1, None, s),
    );
}

/// Caught by the tier's first schedule, which resumes the threads of even blocks first to last
/// (warp 0 then reads the other warps' partials before they are written), and by the shuffled
/// one. (Last to first, as the second schedule runs every block, the writes happen to come first
/// and hide this race: a race shows only under an order that exposes it.)
#[test]
fn missing_syncthreads_is_caught() {
    let g = grid_of(Layout::Nchw, &[2, 256, 14, 14], 1);
    let bad = mutant("nchw_missing_syncthreads");
    for s in [SCHEDS[0], featjnd_emu::BACKWARD] {
        caught(
            "nchw_missing_syncthreads",
            cases::token_stats::<f32>(&module(0), &g, Reduce::Rms, false, 2, None, s),
            cases::token_stats::<f32>(&bad, &g, Reduce::Rms, false, 2, None, s),
        );
    }
}

#[test]
fn wrong_chain_partial_index_is_caught() {
    let [sa, q] = [module(1), module(cases::quantize_module(Bits::B8, false))];
    let bad = mutant("chain_wrong_partial_index");
    for sizes in [vec![2, 7, 17], vec![2, 2048, 5]] {
        let g = grid_of(Layout::Ntc, &sizes, 1);
        let s = SCHEDS[0];
        let intact = module(0);
        let run =
            |ts: &featjnd_emu::Module| cases::chain::<f32>(ts, &sa, &q, &g, Reduce::Mean, Strategy::Jnd, Bits::B8, false, 0.01, 4, None, s);
        caught("chain_wrong_partial_index", run(&intact), run(&bad));
    }
}

/// A histogram that adds 1 per warp leader instead of the leader's peer count: only a converged
/// warp (several lanes in one `__match_any_sync` group) shows it, which is why the tier runs the
/// converged schedule; the fully diverged one (every lane its own leader) cannot see it.
#[test]
fn histogram_counting_leaders_is_caught_by_converged_warps() {
    let g = grid_of(Layout::Nchw, &[2, 256, 14, 14], 1);
    let bad = mutant("histogram_one_per_leader");
    let intact = module(3);
    let run = |m: &featjnd_emu::Module, s| cases::quantize::<f32>(m, &g, Bits::B8, true, 0.05, 5, false, 0, None, s);
    caught("histogram_one_per_leader", run(&intact, SCHEDS[0]), run(&bad, SCHEDS[0]));
    run(&bad, SCHEDS[1]).expect("with fully diverged warps every lane leads its own group of one");
}

#[test]
fn quantizer_tail_loop_past_the_row_is_caught() {
    let g = grid_of(Layout::Ntc, &[2, 7, 17], 1); // K = 17: the scalar path
    let bad = mutant("quantize_tail_off_by_one");
    let intact = module(2);
    let run = |m: &featjnd_emu::Module| cases::quantize::<f32>(m, &g, Bits::B8, false, 0.05, 6, false, 0, None, SCHEDS[0]);
    caught("quantize_tail_off_by_one", run(&intact), run(&bad));
}

/// A thread-dependent return before block reductions: the emulator refuses the launch (a warp
/// shuffle waiting for a lane that has exited), where a GPU would hang or read garbage.
#[test]
fn divergent_early_return_is_caught() {
    let t = 1025;
    let mut j = jnd(t, 8);
    j[300] = f32::NAN;
    let c = jnd(t, 9);
    let run = |m: &featjnd_emu::Module| -> cases::Out {
        let (jb, cb) = (Guarded::new(&j, 0.0), Guarded::new(&c, 0.0));
        let scales = Guarded::new(&[0.0f64; 2], 0.0);
        let cells = Guarded::new(&[0u64; 2], 0);
        let p = FjCappedParams {
            token_tol: jb.addr(),
            caps: cb.addr(),
            scales: scales.addr(),
            bad_jnd: cells.addr(),
            bad_cap: cells.addr() + 8,
            budget: 0.02,
            beta: 1.0,
            kappa: 1.0,
            tokens: t as u32,
            ..Default::default()
        };
        run(m, "fj_capped_solve", &p, 1, SCHEDS[0])?;
        ensure(bad_of(cells.as_slice()[0]) == Some(300), || format!("bad j {:?}", bad_of(cells.as_slice()[0])))?;
        Ok(vec![])
    };
    assert_eq!(BLOCK, 256);
    caught("capped_divergent_return", run(&module(1)), run(&mutant("capped_divergent_return")));
}

/// `__syncthreads` in a branch that only warp 0 takes: the emulator refuses a barrier that two
/// call sites meet in (on a GPU: undefined; in practice a hang or a silent mismatch).
#[test]
fn barrier_in_a_divergent_branch_is_caught() {
    let g = grid_of(Layout::Nchw, &[2, 7, 5, 3], 1);
    let run = |m: &featjnd_emu::Module| cases::token_stats::<f32>(m, &g, Reduce::Mean, false, 3, None, SCHEDS[0]);
    caught("nchw_barrier_in_a_branch", run(&module(0)), run(&mutant("nchw_barrier_in_a_branch")));
}
