//! Every kernel in kernels/ compiles to PTX through NVRTC (no GPU needed) for sm_80 and sm_90,
//! with an empty log: any NVRTC error or warning fails the test.
use featjnd_kernels::cuda::compile;

#[test]
fn every_kernel_compiles_cleanly_for_sm80_and_sm90() {
    assert!(compile::nvrtc_present(), "libnvrtc not found: run scripts/setup.sh (CI installs it)");
    for arch in ["compute_80", "compute_90"] {
        for c in compile::compile_all(arch).unwrap_or_else(|e| panic!("{arch}: {e}")) {
            assert!(c.log.is_empty(), "{} for {arch}: NVRTC said:\n{}", c.name, c.log);
            assert!(c.ptx.contains(".entry"), "{} for {arch}: no kernel entry in the PTX", c.name);
            // -lineinfo must reach the PTX (Nsight source view).
            assert!(c.ptx.contains(".loc"), "{} for {arch}: no line info", c.name);
        }
    }
}

#[test]
fn kernel_names_match_what_the_launchers_ask_for() {
    let all = compile::compile_all("compute_90").unwrap();
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
fn every_launched_kernel_is_in_its_file() {
    // The launchers' own table (raw::kernel_names), file by file, against the PTX of that file.
    let all = compile::compile_all("compute_80").unwrap();
    for (file, name) in featjnd_kernels::cuda::raw::kernel_names() {
        let c = all.iter().find(|c| c.name == file).unwrap_or_else(|| panic!("no kernel file {file}"));
        assert!(c.ptx.contains(&format!(".entry {name}(")), "{file} has no kernel {name}");
    }
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
    let all = compile::compile_all("compute_90").unwrap();
    for (file, kernel) in
        [("quantize.cu", "fj_quantize_batch"), ("perturb.cu", "fj_perturb_norms_batch"), ("perturb.cu", "fj_perturb_apply_batch")]
    {
        let ptx = &all.iter().find(|c| c.name == file).unwrap().ptx;
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
