//! Property-based robustness ("structured fuzzing", not coverage-guided) of the C entry points:
//! random descriptors, option sizes, enum codes, null and misaligned pointers. Invariants: no panic, a known status, nothing written on an
//! argument error, and results equal to the Rust API when the call succeeds.
use featjnd::*;
use proptest::prelude::*;
use std::ptr::{null, null_mut};

const STATUSES: [i32; 12] = [
    FJ_OK,
    FJ_ERR_NULL,
    FJ_ERR_ARG,
    FJ_ERR_SHAPE,
    FJ_ERR_DTYPE,
    FJ_ERR_ALIGN,
    FJ_ERR_NONFINITE,
    FJ_ERR_JND,
    FJ_ERR_BUDGET,
    FJ_ERR_UNREACHABLE,
    FJ_ERR_DEVICE,
    FJ_ERR_PANIC,
];

fn ctx() -> *mut FjContext {
    let mut c = null_mut();
    // SAFETY: null options are allowed; `c` is a writable out-pointer.
    assert_eq!(unsafe { fj_context_create(null(), &mut c) }, FJ_OK);
    c
}

/// A buffer large enough for any descriptor drawn below (dims ≤ 5 each: ≤ 625 elements).
const CAP: usize = 5 * 5 * 5 * 5 + 8;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn c_entry_points_never_panic(
        dtype in 0u32..4, layout in 0u32..3, dims in prop::array::uniform4(0u64..6),
        ptr_kind in 0u8..3, patch in 0u32..4, reduce in 0u32..4, bits in prop::sample::select(vec![0u32, 8, 16, 3]),
        size in prop::sample::select(vec![0u32, 2, 4, 12, 48, 4096]), strategy in 0u32..4,
        budget in prop::sample::select(vec![-1.0, 0.0, 1e-4, 0.5, f64::NAN]), nrmse in prop::sample::select(vec![-0.5, 0.0, 0.3]),
        seed: u64, noise in 0u32..3, with_j: bool,
    ) {
        let c = ctx();
        let vals: Vec<f32> = (0..CAP).map(|i| ((i as u64).wrapping_mul(seed | 1) % 1000) as f32 / 100.0 + 0.01).collect();
        let base = vals.as_ptr() as *const u8;
        // SAFETY: one byte into `vals`, still inside it (a deliberately misaligned pointer).
        let data = match ptr_kind { 0 => base as *const _, 1 => null(), _ => (unsafe { base.add(1) }) as *const _ };
        let f = FjFeature { dtype, layout, dims, data };
        let mut out = vec![-7.0f32; CAP];
        let mut sym = vec![0x55u8; 2 * CAP];
        // SAFETY: every buffer is live and at least as large as any descriptor drawn here (CAP);
        // null and misaligned pointers are what the entry points must refuse.
        unsafe {
            let mut t = 0u64;
            let st = fj_token_count(&f, patch, &mut t);
            prop_assert!(STATUSES.contains(&st) && st != FJ_ERR_PANIC);
            let len = if st == FJ_OK { t } else { 3 };
            let st = fj_token_tolerance(c, &f, patch, reduce, out.as_mut_ptr(), len, null_mut());
            prop_assert!(STATUSES.contains(&st) && st != FJ_ERR_PANIC, "status {}", st);
            if st != FJ_OK {
                prop_assert!(out.iter().all(|&v| v == -7.0), "an error wrote to the output");
            }
            let steps = vec![0.25f32; CAP];
            let q = FjQuantizeOptions { size, bits, patch, pad0: 0, symbols: sym.as_mut_ptr() as *mut _, recon: out.as_mut_ptr() as *mut _, token_sse: null_mut(), histogram: null_mut() };
            let mut r = FjQuantizeResult::default();
            let st = fj_quantize(c, &f, steps.as_ptr(), &q, &mut r, null_mut());
            prop_assert!(STATUSES.contains(&st) && st != FJ_ERR_PANIC, "status {}", st);
            let jt = vec![1.0f32; CAP];
            let st = fj_allocate_steps(c, jt.as_ptr(), len.min(CAP as u64), budget, strategy, seed, out.as_mut_ptr());
            prop_assert!(STATUSES.contains(&st) && st != FJ_ERR_PANIC, "status {}", st);
            let po = FjPerturbOptions { size, noise, seed, subsequence: 0, pad0: 0, scales: null_mut() };
            let jf = FjFeature { dtype, layout, dims, data: vals.as_ptr() as *const _ };
            let st = fj_perturb(c, &f, if with_j { &jf } else { null() }, nrmse, &po, out.as_mut_ptr() as *mut _, null_mut());
            prop_assert!(STATUSES.contains(&st) && st != FJ_ERR_PANIC, "status {}", st);
            // The batched calls on one item of the drawn size, in a zeroed 8 KiB array (readable
            // for any declared size).
            let mut stats = vec![-3i64; 600];
            let mut items = vec![0u64; 1024];
            let qi = FjQuantizeItem { size, patch, x: &f, steps: steps.as_ptr(), symbols: sym.as_mut_ptr() as *mut _, recon: null_mut(), token_sse: null_mut() };
            std::ptr::write(items.as_mut_ptr() as *mut FjQuantizeItem, qi);
            let st = fj_quantize_batch_async(c, items.as_ptr() as *const FjQuantizeItem, 1, bits, stats.as_mut_ptr(), 600, null_mut());
            prop_assert!(STATUSES.contains(&st) && st != FJ_ERR_PANIC, "status {}", st);
            if st != FJ_OK && st != FJ_ERR_NONFINITE {
                prop_assert!(stats.iter().all(|&v| v == -3), "an error wrote the statistics");
            }
            let pi = FjPerturbItem { size, noise, seed, subsequence: 0, pad0: 0, nrmse, x: &f, jnd: if with_j { &jf } else { null() }, out: out.as_mut_ptr() as *mut _ };
            std::ptr::write(items.as_mut_ptr() as *mut FjPerturbItem, pi);
            let mut total = 0u64;
            let st = fj_perturb_batch_stats_slots(items.as_ptr() as *const FjPerturbItem, 1, &mut total, null_mut());
            prop_assert!(STATUSES.contains(&st) && st != FJ_ERR_PANIC, "status {}", st);
            let st = fj_perturb_batch_async(c, items.as_ptr() as *const FjPerturbItem, 1, stats.as_mut_ptr(), 600, null_mut());
            prop_assert!(STATUSES.contains(&st) && st != FJ_ERR_PANIC, "status {}", st);
            fj_context_destroy(c);
        }
    }
}
