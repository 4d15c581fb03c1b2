//! Compiles the kernels of `kernels/` as C++ for the CPU emulation tier: one translation unit per
//! NVRTC module (`featjnd_kernels::cuda::compile::MODULES`, mirrored below and checked against it
//! by the tests), each in its own namespace with the module's `-D` specialisations, plus a few
//! deliberately broken copies (`MUTANTS`) that the tests must catch.
//!
//! The one change to the sources: `extern "C"` is dropped from the kernel definitions, because the
//! 11 modules define the same kernel names (as the GPU's 11 modules do) and one link needs them in
//! separate namespaces. `#line` keeps compiler messages and `__LINE__` on the original files.
use std::{env, fmt::Write as _, fs, path::PathBuf};

/// (file, defines) per slot, as `compile::MODULES`.
const MODULES: &[(&str, &[&str])] = &[
    ("token_stats.cu", &[]),
    ("step_alloc.cu", &[]),
    ("quantize.cu", &["FJ_Q_BITS=8", "FJ_Q_HIST=0"]),
    ("quantize.cu", &["FJ_Q_BITS=8", "FJ_Q_HIST=1"]),
    ("quantize.cu", &["FJ_Q_BITS=16", "FJ_Q_HIST=0"]),
    ("quantize.cu", &["FJ_Q_BITS=16", "FJ_Q_HIST=1"]),
    ("perturb.cu", &["FJ_P_NOISE=0", "FJ_P_JND=0"]),
    ("perturb.cu", &["FJ_P_NOISE=0", "FJ_P_JND=1"]),
    ("perturb.cu", &["FJ_P_NOISE=1", "FJ_P_JND=0"]),
    ("perturb.cu", &["FJ_P_NOISE=1", "FJ_P_JND=1"]),
    ("perturb.cu", &[]),
];

/// Broken copies of a module: (name, module slot, text to find (exactly once), replacement).
const MUTANTS: &[(&str, usize, &str, &str)] = &[
    // An off-by-one in a tail loop: the NTC token row runs one element past its end.
    ("ntc_tail_off_by_one", 0, "for (u32 e = lane; e < g.k; e += 32) acc_elem", "for (u32 e = lane; e <= g.k; e += 32) acc_elem"),
    // The barrier between the warps' partial sums and warp 0 reading them, gone.
    ("nchw_missing_syncthreads", 0, "    part[warp][lane] = a;\n    __syncthreads();", "    part[warp][lane] = a;"),
    // The chain's per-block first bad index written one slot low (over the last sum partial).
    (
        "chain_wrong_partial_index",
        0,
        "((u64*)p.partials)[gridDim.x + blockIdx.x] = b;",
        "((u64*)p.partials)[gridDim.x - 1 + blockIdx.x] = b;",
    ),
    // The warp-aggregated histogram counting one per leader instead of its peers.
    ("histogram_one_per_leader", 3, "atomicAdd(&sh[bin], (u32)__popc(peers));", "atomicAdd(&sh[bin], 1u);"),
    // The scalar NTC quantizer's tail loop one element too far (writes into the next token).
    (
        "quantize_tail_off_by_one",
        2,
        "for (e = lane; e < g.k; e += 32)\n                quant_elem",
        "for (e = lane; e <= g.k; e += 32)\n                quant_elem",
    ),
    // A barrier inside a branch only warp 0 takes: it meets the other warps' next barrier.
    (
        "nchw_barrier_in_a_branch",
        0,
        "    if (warp == 0) {\n        a = part[0][lane];",
        "    if (warp == 0) {\n        __syncthreads();\n        a = part[0][lane];",
    ),
    // The solver's uniform early return made per thread: a thread that saw a bad token leaves
    // while the others enter the block reductions (a warp shuffle then waits for an exited lane).
    (
        "capped_divergent_return",
        1,
        "if (block_all_sum(bad_j != ~0ull || bad_c != ~0ull ? 1.0 : 0.0) > 0.0) {",
        "if (bad_j != ~0ull || bad_c != ~0ull) {",
    ),
];

const DTYPES: [&str; 3] = ["f32", "f16", "bf16"];

/// The kernels a module defines: (name, parameter struct).
fn kernels(file: &str, defines: &[&str]) -> Vec<(String, &'static str)> {
    let per_dtype = |names: &[(&str, &'static str)]| -> Vec<(String, &'static str)> {
        names.iter().flat_map(|(n, t)| DTYPES.iter().map(move |d| (format!("{n}_{d}"), *t))).collect()
    };
    match file {
        "token_stats.cu" => per_dtype(&[("fj_token_stats_nchw", "FjTokenStatsParams"), ("fj_token_stats_ntc", "FjTokenStatsParams")]),
        "step_alloc.cu" => vec![
            ("fj_step_alloc".into(), "FjStepAllocParams"),
            ("fj_max_pos".into(), "FjCappedParams"),
            ("fj_caps".into(), "FjCappedParams"),
            ("fj_capped_solve".into(), "FjCappedParams"),
            ("fj_capped_steps".into(), "FjCappedParams"),
        ],
        "quantize.cu" => per_dtype(&[
            ("fj_quantize_nchw", "FjQuantizeParams"),
            ("fj_quantize_ntc", "FjQuantizeParams"),
            ("fj_quantize_batch", "FjQuantizeBatchParams"),
            ("fj_quantize_chain_nchw", "FjQuantizeChainParams"),
            ("fj_quantize_chain_ntc", "FjQuantizeChainParams"),
        ]),
        "perturb.cu" if !defines.is_empty() => {
            per_dtype(&[("fj_perturb_norms", "FjPerturbParams"), ("fj_perturb_apply", "FjPerturbParams")])
        }
        "perturb.cu" => {
            let mut v =
                per_dtype(&[("fj_perturb_norms_batch", "FjPerturbBatchParams"), ("fj_perturb_apply_batch", "FjPerturbBatchParams")]);
            v.push(("fj_noise".into(), "FjNoiseParams"));
            v
        }
        other => panic!("no kernel list for {other}"),
    }
}

/// One translation unit: the module `slot`'s source (with `edit` applied) in namespace `ns`, its
/// thunks, and its table `table`.
fn unit(kdir: &str, out: &std::path::Path, ns: &str, table: &str, slot: usize, edit: Option<(&str, &str)>) -> PathBuf {
    let (file, defines) = MODULES[slot];
    let mut src = fs::read_to_string(format!("{kdir}/{file}")).unwrap_or_else(|e| panic!("{kdir}/{file}: {e}"));
    if let Some((find, repl)) = edit {
        assert_eq!(src.matches(find).count(), 1, "mutant of {file}: {find:?} must occur exactly once (update build.rs)");
        src = src.replace(find, repl);
    }
    assert!(src.contains("extern \"C\" __global__"), "{file}: kernels are no longer `extern \"C\" __global__` (update build.rs)");
    let src = src.replace("extern \"C\" __global__", "__global__");
    let body = out.join(format!("{ns}_{file}"));
    fs::write(&body, format!("#line 1 \"{kdir}/{file}\"\n{src}")).unwrap();
    let mut tu = String::from("// generated by crates/featjnd-emu/build.rs\n#include \"fj_emu.h\"\n#include \"featjnd_params.h\"\n");
    writeln!(tu, "namespace {ns} {{").unwrap();
    for d in defines {
        let (k, v) = d.split_once('=').unwrap();
        writeln!(tu, "#define {k} {v}").unwrap();
    }
    writeln!(tu, "#include \"common.cuh\"\n#include \"{}\"\n}}", body.display()).unwrap();
    let ks = kernels(file, defines);
    for (name, ty) in &ks {
        writeln!(tu, "static void t_{name}(const void* p) {{ {ns}::{name}(*(const {ty}*)p); }}").unwrap();
    }
    writeln!(tu, "extern \"C\" const FjEmuKernel {table}[] = {{").unwrap();
    for (name, ty) in &ks {
        writeln!(tu, "    {{\"{name}\", sizeof({ty}), t_{name}}},").unwrap();
    }
    writeln!(tu, "    {{nullptr, 0, nullptr}}}};").unwrap();
    let path = out.join(format!("{ns}.cpp"));
    fs::write(&path, tu).unwrap();
    path
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let kdir = manifest.join("../../kernels").canonicalize().expect("kernels/ beside the workspace root");
    let kdir = kdir.to_str().unwrap();
    let emu = manifest.join("emu");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={kdir}");
    println!("cargo:rerun-if-changed=emu");

    let mut files = vec![emu.join("fj_emu.cpp")];
    let mut reg = String::from("// generated by crates/featjnd-emu/build.rs\n#include \"fj_emu.h\"\n");
    for (slot, (file, defines)) in MODULES.iter().enumerate() {
        files.push(unit(kdir, &out, &format!("fjm{slot}"), &format!("fj_emu_m{slot}"), slot, None));
        writeln!(reg, "extern \"C\" const FjEmuKernel fj_emu_m{slot}[];").unwrap();
        let label = if defines.is_empty() { file.to_string() } else { format!("{file}[{}]", defines.join(",")) };
        writeln!(reg, "static const char* const label_m{slot} = \"{label}\";").unwrap();
    }
    for (k, (name, slot, find, repl)) in MUTANTS.iter().enumerate() {
        files.push(unit(kdir, &out, &format!("fjx{k}"), &format!("fj_emu_x{k}"), *slot, Some((find, repl))));
        writeln!(reg, "extern \"C\" const FjEmuKernel fj_emu_x{k}[];").unwrap();
        writeln!(reg, "static const char* const label_x{k} = \"{name}\";").unwrap();
    }
    // fj_emu_table(kind, i, &label): kind 0 = module slot i, 1 = mutant i; null past the end.
    reg += "extern \"C\" const FjEmuKernel* fj_emu_table(int kind, int i, const char** label) {\n";
    for slot in 0..MODULES.len() {
        writeln!(reg, "    if (kind == 0 && i == {slot}) {{ *label = label_m{slot}; return fj_emu_m{slot}; }}").unwrap();
    }
    for k in 0..MUTANTS.len() {
        writeln!(reg, "    if (kind == 1 && i == {k}) {{ *label = label_x{k}; return fj_emu_x{k}; }}").unwrap();
    }
    reg += "    return nullptr;\n}\n";
    let regp = out.join("registry.cpp");
    fs::write(&regp, reg).unwrap();
    files.push(regp);

    let mut b = cc::Build::new();
    b.cpp(true)
        .files(&files)
        .include(&emu)
        .include(kdir)
        .warnings(false)
        .extra_warnings(false)
        // The bit-exactness rule (see fj_emu.h): IEEE f32/f64 with no contraction, as NVRTC's
        // --fmad=false; strict aliasing off for the kernels' vector loads (uint2 over f16 bits).
        .flag("-std=c++17")
        .flag("-ffp-contract=off")
        .flag("-fno-fast-math")
        .flag("-fno-strict-aliasing")
        .flag("-Wall")
        .flag("-Wno-unknown-pragmas")
        .flag("-Wno-unused-function")
        .flag("-Wno-unused-variable");
    b.compile("featjnd_emu");
}
