//! NVRTC compilation of the kernels in `kernels/`. Each `.cu` is compiled with the parameter header
//! and `common.cuh` pasted in front (the kernels need no include path and no CUDA headers), without
//! fast-math, with `--fmad=false` (bit-identity with the CPU) and `-lineinfo` (Nsight).
//!
//! A [`Module`] is one kernel file with a fixed set of `-D` specialisations ([`MODULES`]): the
//! quantizer per (bits, histogram), the single perturbation per (noise, J given), so the hot loops
//! carry no run-time branch on those (issue 15 §2). A device compiles a module on its first use.
use std::ffi::{CStr, CString};

use crate::error::{Error, Result};

/// The header every kernel (and bindgen) reads.
pub const PARAMS_H: &str = include_str!("../../kernels/featjnd_params.h");
/// Shared device helpers.
pub const COMMON_CUH: &str = include_str!("../../kernels/common.cuh");
/// The kernel files: (name, source).
pub const KERNELS: &[(&str, &str)] = &[
    ("token_stats.cu", include_str!("../../kernels/token_stats.cu")),
    ("step_alloc.cu", include_str!("../../kernels/step_alloc.cu")),
    ("quantize.cu", include_str!("../../kernels/quantize.cu")),
    ("perturb.cu", include_str!("../../kernels/perturb.cu")),
];

/// One unit NVRTC compiles: a kernel file and the `-D` definitions that specialise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module {
    pub file: &'static str,
    /// `NAME=VALUE` pairs, passed as `-DNAME=VALUE`.
    pub defines: &'static [&'static str],
}

impl Module {
    /// The file's source.
    pub fn source(&self) -> &'static str {
        KERNELS.iter().find(|(n, _)| *n == self.file).map(|(_, s)| *s).expect("every module names a file of KERNELS")
    }
    /// `file[DEF,DEF]`, for messages and test output.
    pub fn label(&self) -> String {
        if self.defines.is_empty() {
            self.file.to_string()
        } else {
            format!("{}[{}]", self.file, self.defines.join(","))
        }
    }
}

/// Slots of [`MODULES`] (the launchers in `raw` pick kernels by slot).
pub const M_TOKEN_STATS: usize = 0;
pub const M_STEP_ALLOC: usize = 1;
/// `quantize.cu` for (8 bits, no histogram), (8, histogram), (16, none), (16, histogram): slot
/// `M_QUANTIZE + 2 * (bits == 16) + histogram`.
pub const M_QUANTIZE: usize = 2;
/// `perturb.cu` for (Gaussian, J == 1), (Gaussian, J), (uniform, J == 1), (uniform, J): slot
/// `M_PERTURB + 2 * noise code + J given`.
pub const M_PERTURB: usize = 6;
/// `perturb.cu` unspecialised: the batch kernels and `fj_noise`.
pub const M_PERTURB_GENERIC: usize = 10;

/// Every module the launchers use, by slot.
pub const MODULES: [Module; 11] = [
    Module { file: "token_stats.cu", defines: &[] },
    Module { file: "step_alloc.cu", defines: &[] },
    Module { file: "quantize.cu", defines: &["FJ_Q_BITS=8", "FJ_Q_HIST=0"] },
    Module { file: "quantize.cu", defines: &["FJ_Q_BITS=8", "FJ_Q_HIST=1"] },
    Module { file: "quantize.cu", defines: &["FJ_Q_BITS=16", "FJ_Q_HIST=0"] },
    Module { file: "quantize.cu", defines: &["FJ_Q_BITS=16", "FJ_Q_HIST=1"] },
    Module { file: "perturb.cu", defines: &["FJ_P_NOISE=0", "FJ_P_JND=0"] },
    Module { file: "perturb.cu", defines: &["FJ_P_NOISE=0", "FJ_P_JND=1"] },
    Module { file: "perturb.cu", defines: &["FJ_P_NOISE=1", "FJ_P_JND=0"] },
    Module { file: "perturb.cu", defines: &["FJ_P_NOISE=1", "FJ_P_JND=1"] },
    Module { file: "perturb.cu", defines: &[] },
];
// The slot arithmetic above relies on the header's codes.
const _: () = assert!(crate::params::FJ_NOISE_GAUSSIAN == 0 && crate::params::FJ_NOISE_UNIFORM == 1);

/// One compiled module.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub name: &'static str,
    /// Its `-D` definitions.
    pub defines: &'static [&'static str],
    pub ptx: String,
    /// The NVRTC log (empty when clean; warnings land here).
    pub log: String,
}

/// The full translation unit NVRTC sees for one kernel file.
pub fn translation_unit(src: &str) -> String {
    let common = COMMON_CUH.replace("#pragma once", "");
    format!("{PARAMS_H}\n{common}\n{src}\n")
}

/// Options: no fast-math, no FMA contraction, line info for Nsight.
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--fmad=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--ftz=false".into(),
        "-lineinfo".into(),
        "--std=c++17".into(),
    ]
}

/// Is NVRTC loadable here? (cudarc panics on first use otherwise.)
pub fn nvrtc_present() -> bool {
    // libnvrtc dlopens its builtins by soname with its own (empty) search path; load them first
    // through ours (the rpath to .deps), so a plain `cargo test` needs no LD_LIBRARY_PATH.
    for name in ["libnvrtc-builtins.so.13.0", "libnvrtc-builtins.so.13.1", "libnvrtc-builtins.so"] {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: `c` is NUL-terminated and outlives the call; loading the builtins runs no code
        // of ours.
        if !unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.is_null() {
            break;
        }
    }
    // SAFETY: only tries to load libnvrtc (dlopen); nothing is called when it is missing.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles one module to PTX for `arch` (e.g. `compute_90`).
pub fn compile_module(m: &Module, arch: &str) -> Result<Compiled> {
    compile_with(m.file, m.source(), arch, m.defines)
}

/// Compiles one kernel file without definitions to PTX for `arch` (files that need a
/// specialisation refuse this with an NVRTC error naming the `-D` they need).
pub fn compile(name: &'static str, src: &str, arch: &str) -> Result<Compiled> {
    compile_with(name, src, arch, &[])
}

fn compile_with(name: &'static str, src: &str, arch: &str, defines: &'static [&'static str]) -> Result<Compiled> {
    use cudarc::nvrtc::result as nv;
    if !nvrtc_present() {
        return Err(Error::CudaUnavailable(
            "libnvrtc.so not found (install it: scripts/setup.sh puts NVRTC 13.0 under .deps/; or set LD_LIBRARY_PATH)".into(),
        ));
    }
    let tu = CString::new(translation_unit(src)).map_err(|e| Error::Nvrtc { kernel: name.into(), log: e.to_string() })?;
    let cname = CString::new(name).unwrap();
    let prog = nv::create_program(&tu, Some(&cname)).map_err(|e| Error::Nvrtc { kernel: name.into(), log: format!("{e:?}") })?;
    let mut opts = options(arch);
    opts.extend(defines.iter().map(|d| format!("-D{d}")));
    // SAFETY: (this and the calls below) `prog` is the live program created above, destroyed once
    // at the end and used by this thread only.
    let res = unsafe { nv::compile_program(prog, &opts) };
    // SAFETY: see above.
    let log = unsafe { nv::get_program_log(prog) }
        // SAFETY: NVRTC returns the log NUL-terminated in the owned buffer `raw`.
        .map(|raw| unsafe { CStr::from_ptr(raw.as_ptr()) }.to_string_lossy().trim().to_string())
        .unwrap_or_default();
    let out = match res {
        Err(e) => Err(Error::Nvrtc { kernel: name.into(), log: format!("{e:?} with {opts:?}:\n{log}") }),
        // SAFETY: see above; the program compiled.
        Ok(()) => unsafe { nv::get_ptx(prog) }
            .map_err(|e| Error::Nvrtc { kernel: name.into(), log: format!("{e:?}") })
            // SAFETY: NVRTC returns the PTX NUL-terminated in the owned buffer `raw`.
            .map(|raw| Compiled { name, defines, ptx: unsafe { CStr::from_ptr(raw.as_ptr()) }.to_string_lossy().into_owned(), log }),
    };
    // SAFETY: see above; `prog` is not used after this.
    unsafe {
        let _ = nv::destroy_program(prog);
    }
    out
}

/// Compiles every module for `arch`, in [`MODULES`] order.
pub fn compile_all(arch: &str) -> Result<Vec<Compiled>> {
    MODULES.iter().map(|m| compile_module(m, arch)).collect()
}
