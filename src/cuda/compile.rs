//! NVRTC compilation of the kernels in `kernels/`. Each `.cu` is compiled with the parameter header
//! and `common.cuh` pasted in front (the kernels need no include path and no CUDA headers), without
//! fast-math, with `--fmad=false` (bit-identity with the CPU) and `-lineinfo` (Nsight).
//!
//! A [`Module`] is one kernel file with a fixed set of `-D` specialisations ([`MODULES`]): the
//! quantizer per (bits, histogram), the single perturbation per (noise, J given), so the hot loops
//! carry no run-time branch on those. A device compiles a module on its first use.
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

/// Every module the launchers use; a module's slot is its position here, and the `M_*` slots
/// below are found in this list (at compile time), not numbered by hand.
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

pub const M_TOKEN_STATS: usize = slot("token_stats.cu", &[]);
pub const M_STEP_ALLOC: usize = slot("step_alloc.cu", &[]);
/// `quantize.cu` for (8 bits, no histogram), (8, histogram), (16, none), (16, histogram): slot
/// `M_QUANTIZE + 2 * (bits == 16) + histogram` (`kernels::quantize_module`).
pub const M_QUANTIZE: usize = slot("quantize.cu", &["FJ_Q_BITS=8", "FJ_Q_HIST=0"]);
/// `perturb.cu` for (Gaussian, J == 1), (Gaussian, J), (uniform, J == 1), (uniform, J): slot
/// `M_PERTURB + 2 * noise code + J given` (`kernels::perturb_module`).
pub const M_PERTURB: usize = slot("perturb.cu", &["FJ_P_NOISE=0", "FJ_P_JND=0"]);
/// `perturb.cu` unspecialised: the batch kernels and `fj_noise`.
pub const M_PERTURB_GENERIC: usize = slot("perturb.cu", &[]);

// The slot arithmetic of the specialised groups, checked against the list.
const _: () = {
    let q =
        [["FJ_Q_BITS=8", "FJ_Q_HIST=0"], ["FJ_Q_BITS=8", "FJ_Q_HIST=1"], ["FJ_Q_BITS=16", "FJ_Q_HIST=0"], ["FJ_Q_BITS=16", "FJ_Q_HIST=1"]];
    let p =
        [["FJ_P_NOISE=0", "FJ_P_JND=0"], ["FJ_P_NOISE=0", "FJ_P_JND=1"], ["FJ_P_NOISE=1", "FJ_P_JND=0"], ["FJ_P_NOISE=1", "FJ_P_JND=1"]];
    let mut i = 0;
    while i < 4 {
        assert!(slot("quantize.cu", &q[i]) == M_QUANTIZE + i && slot("perturb.cu", &p[i]) == M_PERTURB + i);
        i += 1;
    }
};
// The perturb slot arithmetic relies on the header's codes.
const _: () = assert!(crate::params::FJ_NOISE_GAUSSIAN == 0 && crate::params::FJ_NOISE_UNIFORM == 1);

/// The position in [`MODULES`] of `file` with exactly `defines` (a compile error when absent).
const fn slot(file: &str, defines: &[&str]) -> usize {
    let mut i = 0;
    while i < MODULES.len() {
        let m = &MODULES[i];
        if str_eq(m.file, file) && m.defines.len() == defines.len() {
            let mut j = 0;
            while j < defines.len() && str_eq(m.defines[j], defines[j]) {
                j += 1;
            }
            if j == defines.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("no such module in MODULES")
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// One compiled module.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub name: &'static str,
    /// Its `-D` definitions.
    pub defines: &'static [&'static str],
    pub ptx: String,
    /// The NVRTC log (empty when clean; warnings land here).
    pub log: String,
    /// Read from the on-disk PTX cache instead of compiled ([`compile_module_cached`]).
    pub cached: bool,
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
        Ok(()) => unsafe { nv::get_ptx(prog) }.map_err(|e| Error::Nvrtc { kernel: name.into(), log: format!("{e:?}") }).map(|raw| {
            // SAFETY: NVRTC returns the PTX NUL-terminated in the owned buffer `raw`.
            let ptx = unsafe { CStr::from_ptr(raw.as_ptr()) }.to_string_lossy().into_owned();
            Compiled { name, defines, ptx, log, cached: false }
        }),
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

// ---- the on-disk PTX cache ----
//
// NVRTC takes 0.1-1.1 s per module (BENCHMARKS.md), which every process paid again on its first
// call of each kind. The PTX of a module depends only on the translation unit, the options, the
// architecture and the NVRTC version, so it is kept on disk under a key made of exactly those
// (FNV-1a 64 over them: stable across builds and Rust versions). A file that does not start with
// its own key line or holds no kernel is ignored and rewritten; writes go to a temporary file
// renamed into place, so concurrent processes never read half a file. (The driver keeps its own
// cache of the PTX-to-SASS step in ~/.nv/ComputeCache.)

/// Where [`compile_module_cached`] keeps PTX: `FEATJND_KERNEL_CACHE` (a directory; `off` or empty
/// turns the cache off), else `$XDG_CACHE_HOME/featjnd/kernels`, else `$HOME/.cache/featjnd/kernels`.
pub fn cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    match std::env::var_os("FEATJND_KERNEL_CACHE") {
        Some(v) if v.is_empty() || v == "off" || v == "0" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("featjnd").join("kernels")),
    }
}

/// The NVRTC version (major, minor), part of the cache key.
fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers; only called once NVRTC is known to be loadable.
    let _ = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (major, minor)
}

/// FNV-1a, 64 bits, over `parts` separated by a 0 byte.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The cache key of a module for `arch`: what its PTX depends on.
pub fn cache_key(m: &Module, arch: &str) -> String {
    let (major, minor) = nvrtc_version();
    let mut opts = options(arch);
    opts.extend(m.defines.iter().map(|d| format!("-D{d}")));
    let nv = format!("nvrtc {major}.{minor}");
    let tu = translation_unit(m.source());
    let mut parts: Vec<&[u8]> = vec![tu.as_bytes(), nv.as_bytes(), arch.as_bytes()];
    parts.extend(opts.iter().map(|o| o.as_bytes()));
    format!("{:016x}", fnv1a(&parts))
}

/// [`compile_module`] through the PTX cache in `dir` (`None`: no cache). A cache that cannot be
/// read or written is skipped silently: the cache only saves time, it never fails a compile.
pub fn compile_module_in(m: &Module, arch: &str, dir: Option<&std::path::Path>) -> Result<Compiled> {
    let Some(dir) = dir else { return compile_module(m, arch) };
    if !nvrtc_present() {
        return compile_module(m, arch); // the error names what is missing
    }
    let key = cache_key(m, arch);
    let stem = m.file.trim_end_matches(".cu");
    let path = dir.join(format!("{stem}-{arch}-{key}.ptx"));
    let head = format!("// featjnd kernel cache {key}\n");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Some(ptx) = text.strip_prefix(&head).filter(|p| p.contains(".entry")) {
            return Ok(Compiled { name: m.file, defines: m.defines, ptx: ptx.to_string(), log: String::new(), cached: true });
        }
    }
    let c = compile_module(m, arch)?;
    if c.log.is_empty() && std::fs::create_dir_all(dir).is_ok() {
        let tmp = dir.join(format!(".{stem}-{key}-{}.tmp", std::process::id()));
        if std::fs::write(&tmp, format!("{head}{}", c.ptx)).is_ok() && std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(c)
}

/// [`compile_module_in`] the [`cache_dir`] (what a device uses on a module's first launch).
pub fn compile_module_cached(m: &Module, arch: &str) -> Result<Compiled> {
    compile_module_in(m, arch, cache_dir().as_deref())
}
