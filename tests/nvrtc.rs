//! Every kernel module (kernels/ and its specialisations) compiles to PTX through NVRTC (no GPU
//! needed) for sm_80 and sm_90, with an empty log: any NVRTC error or warning fails the test.
use featjnd_kernels::cuda::compile::{self, Compiled, MODULES};

/// The PTX of every module for compute_90, compiled once per test binary.
fn ptx90() -> &'static [Compiled] {
    static ALL: std::sync::OnceLock<Vec<Compiled>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| compile::compile_all("compute_90").unwrap())
}

#[test]
fn every_kernel_compiles_cleanly_for_sm80_and_sm90() {
    assert!(compile::nvrtc_present(), "libnvrtc not found: run scripts/setup.sh (CI installs it)");
    let sm80 = compile::compile_all("compute_80").unwrap_or_else(|e| panic!("compute_80: {e}"));
    for (arch, all) in [("compute_80", &sm80[..]), ("compute_90", ptx90())] {
        assert_eq!(all.len(), MODULES.len());
        for (c, m) in all.iter().zip(&MODULES) {
            let what = m.label();
            assert!(c.name == m.file && c.defines == m.defines, "{what}: compiled out of order");
            assert!(c.log.is_empty(), "{what} for {arch}: NVRTC said:\n{}", c.log);
            assert!(c.ptx.contains(".entry"), "{what} for {arch}: no kernel entry in the PTX");
            // -lineinfo must reach the PTX (Nsight source view).
            assert!(c.ptx.contains(".loc"), "{what} for {arch}: no line info");
        }
    }
}

#[test]
fn kernel_names_match_what_the_launchers_ask_for() {
    let all = ptx90();
    let ptx: String = all.iter().map(|c| c.ptx.as_str()).collect();
    for dt in ["f32", "f16", "bf16"] {
        for k in [
            "fj_token_stats_nchw_",
            "fj_token_stats_ntc_",
            "fj_quantize_nchw_",
            "fj_quantize_ntc_",
            "fj_quantize_batch_",
            "fj_perturb_norms_",
            "fj_perturb_apply_",
            "fj_perturb_norms_batch_",
            "fj_perturb_apply_batch_",
        ] {
            assert!(ptx.contains(&format!(".entry {k}{dt}(")), "missing kernel {k}{dt}");
        }
    }
    for k in ["fj_step_alloc", "fj_noise", "fj_max_pos", "fj_caps", "fj_capped_solve", "fj_capped_steps"] {
        assert!(ptx.contains(&format!(".entry {k}(")), "missing kernel {k}");
    }
}

#[test]
fn every_launched_kernel_is_in_its_module() {
    // The launchers' own table (raw::kernel_names), module by module, against that module's PTX.
    let all = ptx90();
    for k in featjnd_kernels::cuda::raw::kernel_names() {
        assert!(all[k.module].ptx.contains(&format!(".entry {}(", k.name)), "{} has no kernel {}", MODULES[k.module].label(), k.name);
    }
}

/// Modules of `file` whose definitions include every one of `with`.
fn modules<'a>(file: &'a str, with: &'a [&'a str]) -> impl Iterator<Item = (String, &'static str)> + 'a {
    MODULES
        .iter()
        .zip(ptx90())
        .filter(move |(m, _)| m.file == file && with.iter().all(|d| m.defines.contains(d)))
        .map(|(m, c)| (m.label(), c.ptx.as_str()))
}

/// Sizes of the shared arrays named `sh` (the quantizer's histogram) in a module's PTX.
fn hist_smem(ptx: &str) -> Vec<usize> {
    let mut v: Vec<usize> = ptx
        .lines()
        .filter(|l| l.contains(".shared") && l.contains("E2sh["))
        .filter_map(|l| l.split("E2sh[").nth(1)?.split(']').next()?.parse().ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn the_quantizer_is_specialised_for_bits_and_histogram() {
    // f32 constants as PTX writes them: qmax 127 and 32767.
    let (q8, q16) = ("0f42FE0000", "0f46FFFE00");
    let mut seen = 0;
    for (what, ptx) in modules("quantize.cu", &["FJ_Q_HIST=0"]) {
        // No histogram: no warp match, no shared atomics, no shared histogram at all.
        assert!(!ptx.contains("match.any") && !ptx.contains("atom.shared"), "{what} counts a histogram");
        assert!(hist_smem(ptx).iter().all(|&b| b <= 4), "{what} reserves histogram memory: {:?}", hist_smem(ptx));
        seen += 1;
    }
    for (what, ptx) in modules("quantize.cu", &["FJ_Q_HIST=1"]) {
        assert!(ptx.contains("match.any") && ptx.contains("atom.shared"), "{what} has no histogram code");
        let bins = if what.contains("BITS=8,") { 255 } else { 512 };
        assert_eq!(hist_smem(ptx), vec![4 * bins], "{what}: histogram of {bins} u32 bins");
        seen += 1;
    }
    for (what, ptx) in modules("quantize.cu", &["FJ_Q_BITS=8"]) {
        assert!(ptx.contains(q8) && !ptx.contains(q16), "{what} is not the 8-bit quantizer alone");
    }
    for (what, ptx) in modules("quantize.cu", &["FJ_Q_BITS=16"]) {
        assert!(ptx.contains(q16) && !ptx.contains(q8), "{what} is not the 16-bit quantizer alone");
    }
    assert_eq!(seen, 4);
    // Without a specialisation the file refuses to compile, naming what it needs.
    let src = MODULES.iter().find(|m| m.file == "quantize.cu").unwrap().source();
    let e = compile::compile("quantize.cu", src, "compute_90").expect_err("quantize.cu compiled without -D").to_string();
    assert!(e.contains("FJ_Q_BITS"), "{e}");
}

#[test]
fn the_single_perturbation_is_specialised_for_noise_and_jnd() {
    // f32 constants: 2 pi (Box-Muller's angle) and sqrt(3) (unit-variance uniform noise).
    let (two_pi, sqrt3) = ("0f40C90FDB", "0f3FDDB3D7");
    for (what, ptx) in modules("perturb.cu", &["FJ_P_NOISE=0"]) {
        assert!(ptx.contains(two_pi) && !ptx.contains(sqrt3), "{what} is not Gaussian alone");
        assert!(!ptx.contains("_batch_"), "{what} holds batch kernels");
    }
    for (what, ptx) in modules("perturb.cu", &["FJ_P_NOISE=1"]) {
        assert!(ptx.contains(sqrt3) && !ptx.contains(two_pi), "{what} is not uniform alone");
    }
    // Without J the kernels load nothing for it: fewer global loads than the same noise with J.
    for noise in ["FJ_P_NOISE=0", "FJ_P_NOISE=1"] {
        let loads = |j: &'static str| modules("perturb.cu", &[noise, j]).map(|(_, p)| p.matches("ld.global").count()).sum::<usize>();
        let (without, with) = (loads("FJ_P_JND=0"), loads("FJ_P_JND=1"));
        assert!(without > 0 && without < with, "{noise}: {without} global loads without J, {with} with");
    }
    // The generic module keeps both noises (batches mix them) and fj_noise.
    let generic = &ptx90()[compile::M_PERTURB_GENERIC];
    assert!(MODULES[compile::M_PERTURB_GENERIC].defines.is_empty());
    assert!(generic.ptx.contains(two_pi) && generic.ptx.contains(sqrt3) && generic.ptx.contains(".entry fj_noise("));
}

#[test]
fn the_capped_solver_is_a_single_block_kernel_without_fma() {
    // fj_capped_solve reduces over all tokens inside one block (launched with 1 block): its
    // reductions use __syncthreads, never grid-wide atomics, and --fmad=false keeps its f64
    // sums free of contractions (no fma.rn.f64 anywhere in the file).
    let c =
        compile::compile("step_alloc.cu", compile::KERNELS.iter().find(|(n, _)| *n == "step_alloc.cu").unwrap().1, "compute_90").unwrap();
    assert!(c.ptx.contains(".entry fj_capped_solve("));
    assert!(!c.ptx.contains("fma.rn.f64") && !c.ptx.contains("fma.rn.f32"), "contracted multiply-add in step_alloc.cu");
}

#[test]
fn fast_math_and_fma_are_off() {
    let o = compile::options("compute_90");
    assert!(o.contains(&"--fmad=false".to_string()));
    assert!(!o.iter().any(|s| s.contains("fast-math") || s.contains("fast_math")));
    assert!(o.contains(&"-lineinfo".to_string()));
}

#[test]
fn nvtx_ranges_are_harmless_without_the_library() {
    // CI has no libnvToolsExt: ranges must be no-ops, never a panic.
    let r = featjnd_kernels::nvtx::range("featjnd_kernels::test");
    drop(r);
}

#[test]
fn the_batch_kernels_read_their_descriptor_table_in_place() {
    // The tables (FjQuantizeBatchParams, FjPerturbBatchParams: 3-4 KiB) are indexed by the block's
    // item at run time: they must be read from the parameter space, not copied into every
    // thread's local memory. (The perturbation kernels keep a small local frame of their own, for
    // the slow path of sinf/cosf: far below a table's size.)
    let all = ptx90();
    let generic = &all[compile::M_PERTURB_GENERIC].ptx;
    for (ptx, kernel) in all[compile::M_QUANTIZE..compile::M_QUANTIZE + 4]
        .iter()
        .map(|c| (&c.ptx, "fj_quantize_batch"))
        .chain([(generic, "fj_perturb_norms_batch"), (generic, "fj_perturb_apply_batch")])
    {
        for dt in ["f32", "f16", "bf16"] {
            let start = ptx.find(&format!(".entry {kernel}_{dt}(")).unwrap_or_else(|| panic!("no {kernel}_{dt}"));
            let body = &ptx[start..];
            let body = &body[..body[1..].find(".entry ").map_or(body.len(), |e| e + 1)];
            // `.local .align A .b8 __local_depotN[BYTES];`
            let frame: usize = body
                .lines()
                .filter(|l| l.contains("__local_depot") && l.contains('['))
                .filter_map(|l| l.split('[').nth(1)?.split(']').next()?.parse().ok())
                .max()
                .unwrap_or(0);
            assert!(frame < 256, "{kernel}_{dt} has a local frame of {frame} bytes: its table is copied to local memory");
        }
    }
}

#[test]
fn the_ptx_cache_returns_what_nvrtc_made_and_survives_a_bad_file() {
    let dir = std::env::temp_dir().join(format!("featjnd-kernel-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = &MODULES[compile::M_STEP_ALLOC];
    let fresh = compile::compile_module_in(m, "compute_90", Some(&dir)).unwrap();
    assert!(!fresh.cached);
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "one file per module and architecture: {files:?}");
    let again = compile::compile_module_in(m, "compute_90", Some(&dir)).unwrap();
    assert!(again.cached && again.ptx == fresh.ptx, "the cached PTX is the compiled PTX");
    // Another architecture or specialisation is another key.
    assert_ne!(compile::cache_key(m, "compute_80"), compile::cache_key(m, "compute_90"));
    assert_ne!(
        compile::cache_key(&MODULES[compile::M_QUANTIZE], "compute_90"),
        compile::cache_key(&MODULES[compile::M_QUANTIZE + 1], "compute_90")
    );
    // A truncated or foreign file is not trusted: recompiled and rewritten.
    for junk in ["", "// featjnd kernel cache 0000000000000000\n.entry x(", "garbage"] {
        std::fs::write(&files[0], junk).unwrap();
        let c = compile::compile_module_in(m, "compute_90", Some(&dir)).unwrap();
        assert!(!c.cached && c.ptx == fresh.ptx, "after {junk:?}");
        assert!(compile::compile_module_in(m, "compute_90", Some(&dir)).unwrap().cached, "rewritten after {junk:?}");
    }
    // An unwritable cache only costs the time: the compile still succeeds.
    let blocked = dir.join("a-file-not-a-dir");
    std::fs::write(&blocked, "x").unwrap();
    let c = compile::compile_module_in(m, "compute_90", Some(&blocked)).unwrap();
    assert!(!c.cached && c.ptx == fresh.ptx);
    std::fs::remove_dir_all(&dir).unwrap();
}
