//! The C ABI: the checked-in header is current, the C example builds and runs with the system C
//! compiler against the shared and the static library (neither needs libtorch), bad arguments and
//! overlapping buffers give a status and a message with nothing written, and contexts work from
//! several threads (each its own, and one shared).
//!
//! Every `unsafe` block here calls the C entry points with pointers to live Rust buffers of the
//! sizes the call documents (or deliberately null/misaligned/overlapping ones, which the entry
//! points must refuse before touching memory).
use featjnd::*;
use std::ffi::CStr;
use std::path::PathBuf;
use std::ptr::{null, null_mut};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn header_is_current() {
    let cfg = cbindgen::Config::from_file(manifest().join("cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    // Only this crate's C ABI is parsed: nothing of the kernel library leaks into the header.
    cbindgen::Builder::new().with_src(manifest().join("src/lib.rs")).with_config(cfg).generate().expect("cbindgen").write(&mut out);
    let path = manifest().join("include/featjnd.h");
    if std::env::var_os("FEATJND_BLESS").is_some() {
        std::fs::write(&path, &out).unwrap();
    }
    let have = std::fs::read(&path).unwrap_or_default();
    assert!(have == out, "include/featjnd.h is stale: run `FEATJND_BLESS=1 cargo test -p featjnd-capi --test capi header_is_current`");
}

/// The directory holding libfeatjnd.so (next to target/<profile>/deps/<this test>).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Builds this crate's library (`cargo test` links the tests against the rlib only) with the test
/// profile and no features, as it ships, so a fresh clone and a stale .so/.a both work; cheap,
/// everything else is already compiled.
fn build_lib() -> PathBuf {
    let st = std::process::Command::new(env!("CARGO"))
        .args(["build", "--lib", "--profile", "test", "-p", "featjnd-capi", "--manifest-path"])
        .arg(manifest().join("Cargo.toml"))
        .status()
        .expect("running cargo");
    assert!(st.success(), "cargo build -p featjnd-capi --lib failed");
    lib_dir()
}

/// Compiles examples/c/`name`.c with `-std=c99 -Wall -Werror` and the `link` arguments, runs it
/// with `args` and returns its standard output (the run must succeed).
fn build_and_run(name: &str, link: &[String], args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let src = format!("examples/c/{name}.c");
    let st = std::process::Command::new(&cc)
        .arg(manifest().join(&src))
        .args(["-std=c99", "-Wall", "-Werror"])
        .arg(format!("-I{}", manifest().join("include").display()))
        .args(link)
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("running the C compiler");
    assert!(st.success(), "{cc} failed to build {src} with {link:?} (if FEATJND_BLESS was set, the header was being rewritten: run again)");
    let out = std::process::Command::new(&exe).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{src} failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Builds and runs the C examples with `link` arguments and checks their output: quantize.c (the
/// op calls) and codec.c (fj_quantize → fj_encode → fj_decode bit for bit, over dtypes, layouts,
/// odd sizes, widths and step modes, and the codec's errors).
fn build_and_run_example(link: &[String]) {
    let text = build_and_run("quantize", link, &["0.02"]);
    assert!(text.contains(" 0 mismatches"), "{text}");
    assert!(text.contains("batch: 2 items ok, 0 batch mismatches"), "{text}");
    assert!(text.contains("null feature -> status 1: x is null"), "{text}");
    let text = build_and_run("codec", link, &[]);
    assert!(text.contains("codec: 360 cases, 0 mismatches"), "{text}");
    assert!(text.contains(&format!("flipped byte -> status {FJ_ERR_FORMAT}: fjq: chunk 16 of 17")), "{text}");
}

/// Libraries that must never be needed by the C ABI: libtorch and what the research crate pulls in.
const FORBIDDEN: [&str; 6] = ["torch", "c10", "fontconfig", "freetype", "gomp", "stdc++"];

#[test]
fn c_example_builds_and_runs() {
    let dir = build_lib();
    let so = dir.join("libfeatjnd.so");
    assert!(so.exists(), "no libfeatjnd.so in {}", so.display());
    // The shared library needs no libtorch: its dynamic section names the C runtime only (CUDA is
    // loaded at run time, where it exists).
    let out = std::process::Command::new("readelf").arg("-d").arg(&so).output().expect("running readelf (binutils)");
    assert!(out.status.success(), "readelf -d {} failed", so.display());
    let dynamic = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(!needed.is_empty(), "no NEEDED entries in {}:\n{dynamic}", so.display());
    for l in &needed {
        assert!(!FORBIDDEN.iter().any(|f| l.contains(&format!("lib{f}"))), "libfeatjnd.so needs {l}");
    }
    assert!(!dynamic.contains("RPATH") && !dynamic.contains("RUNPATH"), "libfeatjnd.so carries an rpath:\n{dynamic}");
    // Linked with the C runtime alone: no libtorch search path or rpath.
    build_and_run_example(&[format!("-L{}", dir.display()), "-lfeatjnd".into(), "-lm".into(), format!("-Wl,-rpath,{}", dir.display())]);
}

/// What `cargo rustc -p featjnd-capi --crate-type staticlib -- --print native-static-libs` prints
/// for the archive: the C runtime and nothing else.
const NATIVE_STATIC_LIBS: &str = "-ldl -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc";

#[test]
fn c_example_links_the_static_library() {
    let dir = build_lib();
    let a = dir.join("libfeatjnd.a");
    assert!(a.exists(), "no libfeatjnd.a in {}", dir.display());
    assert!(!FORBIDDEN.iter().any(|f| NATIVE_STATIC_LIBS.contains(&format!("-l{f}"))));
    let mut link = vec![a.display().to_string()];
    link.extend(NATIVE_STATIC_LIBS.split(' ').map(String::from));
    build_and_run_example(&link);
}

fn err() -> String {
    // SAFETY: fj_last_error returns this thread's NUL-terminated message, valid until the next call.
    unsafe { CStr::from_ptr(fj_last_error()) }.to_string_lossy().into_owned()
}

fn ctx(threads: u32) -> *mut FjContext {
    let o = FjContextOptions {
        size: std::mem::size_of::<FjContextOptions>() as u32,
        device: -1,
        num_threads: threads,
        pointer_checks: FJ_POINTERS_CHECKED,
    };
    let mut c = null_mut();
    // SAFETY: `o` is a full options struct and `c` a writable out-pointer.
    assert_eq!(unsafe { fj_context_create(&o, &mut c) }, FJ_OK, "{}", err());
    c
}

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    featjnd_kernels::philox::fill(&mut v, 0, seed as u64, 0, featjnd_kernels::NoiseKind::Gaussian);
    v
}

fn feat(v: &[f32], dims: [u64; 4]) -> FjFeature {
    FjFeature { dtype: FJ_F32, layout: FJ_NCHW, dims, data: v.as_ptr() as *const _ }
}

/// Runs the whole chain on host memory and returns (symbols, recon, mse).
fn chain(c: *const FjContext, x: &[f32], j: &[f32], dims: [u64; 4]) -> (Vec<i8>, Vec<f32>, f64) {
    let (fx, fj) = (feat(x, dims), feat(j, dims));
    let mut t = 0u64;
    // SAFETY: live buffers of the documented sizes (see the module doc).
    unsafe {
        assert_eq!(fj_token_count(&fx, 1, &mut t), FJ_OK);
        let mut jt = vec![0.0f32; t as usize];
        let mut st = vec![0.0f32; t as usize];
        assert_eq!(fj_token_tolerance(c, &fj, 1, FJ_MEAN, jt.as_mut_ptr(), t, null_mut()), FJ_OK, "{}", err());
        assert_eq!(fj_allocate_steps(c, jt.as_ptr(), t, 0.01, FJ_JND, 0, st.as_mut_ptr()), FJ_OK, "{}", err());
        let mut sym = vec![0i8; x.len()];
        let mut rec = vec![0.0f32; x.len()];
        let o = FjQuantizeOptions {
            size: std::mem::size_of::<FjQuantizeOptions>() as u32,
            bits: 8,
            patch: 1,
            pad0: 0,
            symbols: sym.as_mut_ptr() as *mut _,
            recon: rec.as_mut_ptr() as *mut _,
            token_sse: null_mut(),
            histogram: null_mut(),
        };
        let mut r = FjQuantizeResult::default();
        assert_eq!(fj_quantize(c, &fx, st.as_ptr(), &o, &mut r, null_mut()), FJ_OK, "{}", err());
        (sym, rec, r.mse)
    }
}

#[test]
fn c_abi_matches_the_rust_api() {
    let dims = [2u64, 7, 5, 6];
    let n = 2 * 7 * 5 * 6;
    let (x, j) = (data(n, 1), data(n, 2).iter().map(|v| v.abs() + 0.05).collect::<Vec<_>>());
    let c = ctx(0);
    let (sym, rec, mse) = chain(c, &x, &j, dims);
    let g = featjnd_kernels::TokenGrid::new(featjnd_kernels::FeatureShape::nchw(2, 7, 5, 6), 1).unwrap();
    let jt = featjnd_kernels::cpu::token_tolerance(&j, &g, featjnd_kernels::Reduce::Mean).unwrap();
    let st = featjnd_kernels::steps::allocate(&jt, 0.01, featjnd_kernels::Strategy::Jnd).unwrap();
    let r = featjnd_kernels::reference::quantize(&x, &g, &st, featjnd_kernels::Bits::B8);
    assert_eq!(sym.iter().map(|&v| v as i32).collect::<Vec<_>>(), r.symbols);
    assert_eq!(rec, r.recon);
    assert!((mse - r.token_sse.iter().sum::<f64>() / n as f64).abs() < 1e-6 * mse);
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}

#[test]
fn bad_arguments_give_a_status_a_message_and_write_nothing() {
    let c = ctx(0);
    let x = data(64, 3);
    let mut out = vec![7.0f32; 16];
    let fx = feat(&x, [1, 4, 4, 4]);
    // SAFETY: live buffers of the documented sizes (see the module doc).
    unsafe {
        // Null pointers.
        assert_eq!(fj_token_tolerance(null(), &fx, 1, FJ_MEAN, out.as_mut_ptr(), 16, null_mut()), FJ_ERR_NULL);
        assert!(err().contains("ctx is null"));
        assert_eq!(fj_token_tolerance(c, null(), 1, FJ_MEAN, out.as_mut_ptr(), 16, null_mut()), FJ_ERR_NULL);
        assert_eq!(fj_token_tolerance(c, &fx, 1, FJ_MEAN, null_mut(), 16, null_mut()), FJ_ERR_NULL);
        // Zero sizes, bad shapes, bad enums, bad dtype.
        let empty = feat(&x, [1, 0, 4, 4]);
        assert_eq!(fj_token_tolerance(c, &empty, 1, FJ_MEAN, out.as_mut_ptr(), 16, null_mut()), FJ_ERR_SHAPE);
        assert_eq!(fj_token_tolerance(c, &fx, 1, FJ_MEAN, out.as_mut_ptr(), 15, null_mut()), FJ_ERR_SHAPE);
        assert!(err().contains("16 tokens"), "{}", err());
        assert_eq!(fj_token_tolerance(c, &fx, 3, FJ_MEAN, out.as_mut_ptr(), 16, null_mut()), FJ_ERR_SHAPE);
        assert_eq!(fj_token_tolerance(c, &fx, 1, 9, out.as_mut_ptr(), 16, null_mut()), FJ_ERR_ARG);
        let bad_dtype = FjFeature { dtype: 7, ..feat(&x, [1, 4, 4, 4]) };
        assert_eq!(fj_token_tolerance(c, &bad_dtype, 1, FJ_MEAN, out.as_mut_ptr(), 16, null_mut()), FJ_ERR_DTYPE);
        // Dims whose product overflows.
        let huge = feat(&x, [u64::MAX / 2, 4, 4, 4]);
        assert_eq!(fj_token_tolerance(c, &huge, 1, FJ_MEAN, out.as_mut_ptr(), 16, null_mut()), FJ_ERR_SHAPE);
        assert!(err().contains("overflow"), "{}", err());
        // Misaligned pointer.
        let bytes = vec![0u8; 64 * 4 + 4];
        let mis = FjFeature { dtype: FJ_F32, layout: FJ_NCHW, dims: [1, 4, 4, 4], data: bytes.as_ptr().add(1) as *const _ };
        assert_eq!(fj_token_tolerance(c, &mis, 1, FJ_MEAN, out.as_mut_ptr(), 16, null_mut()), FJ_ERR_ALIGN);
        // A CUDA stream for a CPU context.
        assert_eq!(fj_token_tolerance(c, &fx, 1, FJ_MEAN, out.as_mut_ptr(), 16, 8 as *mut _), FJ_ERR_ARG);
        assert!(err().contains("CPU context"), "{}", err());
        // Non-positive J names its index.
        assert_eq!(fj_token_tolerance(c, &fx, 1, FJ_MEAN, out.as_mut_ptr(), 16, null_mut()), FJ_ERR_JND);
        assert!(err().contains("J["), "{}", err());
        assert!(out.iter().all(|&v| v == 7.0), "an error wrote to the output");
        // Option struct with an impossible size; budget out of range.
        let q = FjQuantizeOptions {
            size: 2,
            bits: 8,
            patch: 1,
            pad0: 0,
            symbols: null_mut(),
            recon: null_mut(),
            token_sse: null_mut(),
            histogram: null_mut(),
        };
        assert_eq!(fj_quantize(c, &fx, out.as_ptr(), &q, null_mut(), null_mut()), FJ_ERR_ARG);
        let jt = [1.0f32; 16];
        assert_eq!(fj_allocate_steps(c, jt.as_ptr(), 16, -1.0, FJ_JND, 0, out.as_mut_ptr()), FJ_ERR_BUDGET);
        assert_eq!(fj_allocate_steps(c, jt.as_ptr(), 0, 1.0, FJ_JND, 0, out.as_mut_ptr()), FJ_ERR_SHAPE);
        assert!(out.iter().all(|&v| v == 7.0), "an error wrote to the output");
        // A device context without a GPU is refused clearly (tests/gpu.rs covers it with one);
        // a device ordinal below -1 is an argument error.
        let mut o = FjContextOptions {
            size: std::mem::size_of::<FjContextOptions>() as u32,
            device: 0,
            num_threads: 0,
            pointer_checks: FJ_POINTERS_CHECKED,
        };
        let mut d = null_mut();
        if let Err(why) = featjnd_kernels::cuda::available() {
            assert_eq!(fj_context_create(&o, &mut d), FJ_ERR_DEVICE);
            assert!(err().contains(&why.to_string()), "{} / {why}", err());
            assert!(d.is_null());
        }
        o.device = -2;
        assert_eq!(fj_context_create(&o, &mut d), FJ_ERR_ARG);
        assert!(d.is_null());
        // The pointer policy: the two named values (a CPU context has no device pointers to ask
        // about, so it takes either), anything else refused, an older struct without the field
        // reads as FJ_POINTERS_CHECKED.
        o.device = -1;
        for (checks, want) in [(FJ_POINTERS_CHECKED, FJ_OK), (FJ_POINTERS_TRUSTED, FJ_OK), (2, FJ_ERR_ARG), (u32::MAX, FJ_ERR_ARG)] {
            o.pointer_checks = checks;
            let mut d = null_mut();
            assert_eq!(fj_context_create(&o, &mut d), want, "pointer_checks {checks}: {}", err());
            assert_eq!(d.is_null(), want != FJ_OK);
            if want != FJ_OK {
                assert!(err().contains("pointer_checks"), "{}", err());
            }
            fj_context_destroy(d);
        }
        o.pointer_checks = 7;
        o.size = std::mem::offset_of!(FjContextOptions, pointer_checks) as u32;
        let mut d = null_mut();
        assert_eq!(fj_context_create(&o, &mut d), FJ_OK, "an older struct stops before pointer_checks: {}", err());
        fj_context_destroy(d);
        // Success clears the message.
        let mut t = 0;
        assert_eq!(fj_token_count(&fx, 1, &mut t), FJ_OK);
        assert_eq!(err(), "");
        fj_context_destroy(c);
        fj_context_destroy(null_mut());
    }
}

#[test]
fn non_finite_x_in_quantize_and_perturb() {
    let c = ctx(0);
    let mut x = data(64, 4);
    x[37] = f32::NAN;
    let fx = feat(&x, [1, 4, 4, 4]);
    let st = [0.5f32; 16];
    let q = FjQuantizeOptions {
        size: std::mem::size_of::<FjQuantizeOptions>() as u32,
        bits: 8,
        patch: 1,
        pad0: 0,
        symbols: null_mut(),
        recon: null_mut(),
        token_sse: null_mut(),
        histogram: null_mut(),
    };
    // SAFETY: live buffers of the documented sizes (see the module doc).
    unsafe {
        assert_eq!(fj_quantize(c, &fx, st.as_ptr(), &q, null_mut(), null_mut()), FJ_ERR_NONFINITE);
        assert!(err().contains("x[37]"), "{}", err());
        let mut o = vec![0.0f32; 64];
        assert_eq!(fj_perturb(c, &fx, null(), 0.1, null(), o.as_mut_ptr() as *mut _, null_mut()), FJ_ERR_NONFINITE);
        // In place: nothing written.
        let before = x.clone();
        assert_eq!(fj_perturb(c, &fx, null(), 0.1, null(), x.as_mut_ptr() as *mut _, null_mut()), FJ_ERR_NONFINITE);
        assert!(x.iter().zip(&before).all(|(a, b)| a.to_bits() == b.to_bits()));
        fj_context_destroy(c);
    }
}

#[test]
fn perturb_matches_the_requested_nrmse() {
    let c = ctx(1);
    let x = data(3 * 100, 5);
    let fx = FjFeature { dtype: FJ_F32, layout: FJ_NTC, dims: [3, 10, 10, 0], data: x.as_ptr() as *const _ };
    let mut out = vec![0.0f32; 300];
    let mut scales = [0.0f32; 3];
    let o = FjPerturbOptions {
        size: std::mem::size_of::<FjPerturbOptions>() as u32,
        noise: FJ_UNIFORM_NOISE,
        seed: 9,
        subsequence: 1,
        pad0: 0,
        scales: scales.as_mut_ptr(),
    };
    // SAFETY: live buffers of the documented sizes (see the module doc).
    unsafe {
        assert_eq!(fj_perturb(c, &fx, null(), 0.25, &o, out.as_mut_ptr() as *mut _, null_mut()), FJ_OK, "{}", err());
        fj_context_destroy(c);
    }
    for (s, &scale) in scales.iter().enumerate() {
        let r = s * 100..(s + 1) * 100;
        let d: f64 = r.clone().map(|i| ((out[i] - x[i]) as f64).powi(2)).sum::<f64>().sqrt();
        let e: f64 = r.map(|i| (x[i] as f64).powi(2)).sum::<f64>().sqrt();
        assert!((d / e / 0.25 - 1.0).abs() < 1e-5, "sample {s}: {}", d / e);
        assert!(scale > 0.0);
    }
}

#[test]
fn contexts_are_thread_safe() {
    let dims = [4u64, 16, 8, 8];
    let n = 4 * 16 * 8 * 8;
    let (x, j) = (data(n, 6), data(n, 7).iter().map(|v| v.abs() + 0.1).collect::<Vec<_>>());
    let want = chain(ctx(1), &x, &j, dims);
    struct Shared(*mut FjContext);
    // SAFETY: the handle is only used through the C ABI, whose contexts are thread-safe.
    unsafe impl Send for Shared {}
    // SAFETY: the handle is only used through the C ABI, whose contexts are thread-safe.
    unsafe impl Sync for Shared {}
    let shared = Shared(ctx(2));
    std::thread::scope(|s| {
        for t in 0..6 {
            let (x, j, want, shared) = (&x, &j, &want, &shared);
            s.spawn(move || {
                for _ in 0..5 {
                    // Half the threads bring their own context, half share one.
                    let own = (t % 2 == 0).then(|| ctx(1));
                    let c = own.unwrap_or(shared.0);
                    let got = chain(c, x, j, dims);
                    assert_eq!(got.0, want.0);
                    assert_eq!(got.1, want.1);
                    if let Some(o) = own {
                        // SAFETY: a live context made by `ctx`, used by no one after this.
                        unsafe { fj_context_destroy(o) };
                    }
                }
            });
        }
    });
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(shared.0) };
}

fn qopts(
    bits: u32,
    symbols: *mut std::ffi::c_void,
    recon: *mut std::ffi::c_void,
    token_sse: *mut f32,
    histogram: *mut u64,
) -> FjQuantizeOptions {
    FjQuantizeOptions {
        size: std::mem::size_of::<FjQuantizeOptions>() as u32,
        bits,
        patch: 1,
        pad0: 0,
        symbols,
        recon,
        token_sse,
        histogram,
    }
}

/// Outputs may not overlap inputs or each other; only the reconstruction may be `x` itself (and
/// the perturbed output). Every refusal is FJ_ERR_ARG with a message and nothing written.
#[test]
fn overlapping_buffers_are_refused_before_anything_is_written() {
    let c = ctx(0);
    let n = 64; // dims [1, 4, 4, 4]: 16 tokens of 4
    let dims = [1u64, 4, 4, 4];
    // One arena holds x and the outputs, so that they can be made to overlap on purpose.
    let x = data(n, 11);
    let mut arena = vec![0.0f32; 4 * n];
    arena[..n].copy_from_slice(&x);
    let snapshot = arena.clone();
    let base = arena.as_mut_ptr();
    let fx = FjFeature { dtype: FJ_F32, layout: FJ_NCHW, dims, data: base as *const _ };
    let steps = [0.05f32; 16];
    let mut hist = vec![0u64; 255];
    let mut res = FjQuantizeResult::default();
    // SAFETY: every pointer lies inside `arena` (4·64 floats) or the other live buffers, with
    // room for what the call would write; the entry points must refuse the overlaps untouched.
    unsafe {
        let at = |i: usize| base.add(i);
        let refused = |st: i32, what: &str, arena: &[f32]| {
            assert_eq!(st, FJ_ERR_ARG, "{what}: {}", err());
            assert!(err().contains("overlaps"), "{what}: {}", err());
            assert!(arena.iter().zip(&snapshot).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: something was written");
        };
        // Symbols over x (i8 symbols: 64 bytes = 16 floats, starting inside x).
        let o = qopts(8, at(40) as *mut _, at(n) as *mut _, null_mut(), null_mut());
        refused(fj_quantize(c, &fx, steps.as_ptr(), &o, &mut res, null_mut()), "symbols over x", &arena);
        // A reconstruction that overlaps x without being x.
        let o = qopts(8, null_mut(), at(1) as *mut _, null_mut(), null_mut());
        refused(fj_quantize(c, &fx, steps.as_ptr(), &o, &mut res, null_mut()), "recon at x + 1", &arena);
        assert!(err().contains("only opts->recon may be x->data itself"), "{}", err());
        // Token errors over the steps (an output over the other input).
        let o = qopts(8, null_mut(), at(n) as *mut _, steps.as_ptr().add(4) as *mut f32, null_mut());
        refused(fj_quantize(c, &fx, steps.as_ptr(), &o, &mut res, null_mut()), "token errors over steps", &arena);
        // Two outputs over each other: token errors inside the reconstruction; 16-bit symbols
        // (128 bytes) over the histogram is checked the other way round.
        let o = qopts(8, null_mut(), at(n) as *mut _, at(n + 10), null_mut());
        refused(fj_quantize(c, &fx, steps.as_ptr(), &o, &mut res, null_mut()), "token errors inside recon", &arena);
        let o = qopts(16, at(2 * n) as *mut _, null_mut(), null_mut(), at(2 * n + 8) as *mut u64);
        refused(fj_quantize(c, &fx, steps.as_ptr(), &o, &mut res, null_mut()), "histogram over symbols", &arena);
        // The result struct over x.
        let o = qopts(8, null_mut(), at(n) as *mut _, null_mut(), null_mut());
        refused(fj_quantize(c, &fx, steps.as_ptr(), &o, at(4) as *mut FjQuantizeResult, null_mut()), "result over x", &arena);

        // Token tolerances over J; steps over their token tolerances (even exactly).
        refused(fj_token_tolerance(c, &fx, 1, FJ_MEAN, at(60), 16, null_mut()), "j_t over J", &arena);
        let jt = vec![0.5f32; 16];
        let mut jt2 = jt.clone();
        assert_eq!(fj_allocate_steps(c, jt2.as_ptr(), 16, 0.01, FJ_JND, 0, jt2.as_mut_ptr()), FJ_ERR_ARG);
        assert!(err().contains("steps_out overlaps token_tol"), "{}", err());
        assert_eq!(jt2, jt);

        // Perturbation: an output that overlaps x without being x, one over J, scales over out.
        let fj = FjFeature { dtype: FJ_F32, layout: FJ_NCHW, dims, data: at(2 * n) as *const _ };
        refused(fj_perturb(c, &fx, null(), 0.1, null(), at(n / 2) as *mut _, null_mut()), "perturb out over half of x", &arena);
        refused(fj_perturb(c, &fx, &fj, 0.1, null(), at(2 * n + 3) as *mut _, null_mut()), "perturb out over J", &arena);
        refused(fj_perturb(c, &fx, &fj, 0.1, null(), at(2 * n) as *mut _, null_mut()), "perturb out == J", &arena);
        let po = FjPerturbOptions {
            size: std::mem::size_of::<FjPerturbOptions>() as u32,
            noise: FJ_GAUSSIAN,
            seed: 1,
            subsequence: 0,
            pad0: 0,
            scales: at(n),
        };
        refused(fj_perturb(c, &fx, null(), 0.1, &po, at(n) as *mut _, null_mut()), "scales over out", &arena);
        let po = FjPerturbOptions { scales: at(5), ..po };
        refused(fj_perturb(c, &fx, null(), 0.1, &po, at(n) as *mut _, null_mut()), "scales over x", &arena);

        // What the contract allows: the reconstruction is x itself (in place), and it equals the
        // out-of-place reconstruction; out == x for the perturbation.
        let mut sym = vec![0i8; n];
        let mut rec = vec![0.0f32; n];
        let o = qopts(8, sym.as_mut_ptr() as *mut _, rec.as_mut_ptr() as *mut _, null_mut(), hist.as_mut_ptr());
        assert_eq!(fj_quantize(c, &fx, steps.as_ptr(), &o, &mut res, null_mut()), FJ_OK, "{}", err());
        let o = qopts(8, sym.as_mut_ptr() as *mut _, base as *mut _, null_mut(), hist.as_mut_ptr());
        assert_eq!(fj_quantize(c, &fx, steps.as_ptr(), &o, &mut res, null_mut()), FJ_OK, "{}", err());
        assert!(arena[..n].iter().zip(&rec).all(|(a, b)| a.to_bits() == b.to_bits()), "in place differs from out of place");
        let j = vec![0.5f32; n];
        let fj = FjFeature { dtype: FJ_F32, layout: FJ_NCHW, dims, data: j.as_ptr() as *const _ };
        assert_eq!(fj_perturb(c, &fx, &fj, 0.1, null(), base as *mut _, null_mut()), FJ_OK, "{}", err());
        assert!(arena[..n].iter().zip(&rec).any(|(a, b)| a != b), "perturbation in place wrote nothing");
        fj_context_destroy(c);
    }
}

#[test]
fn capped_allocation_matches_the_rust_api() {
    use featjnd_kernels::{cpu, steps, FeatureShape, TokenGrid};
    let c = ctx(0);
    let dims = [2u64, 7, 6, 4];
    let n = 2 * 7 * 6 * 4;
    let (x, j) = (data(n, 11), data(n, 12).iter().map(|v| v.abs() + 0.05).collect::<Vec<_>>());
    let (fx, fj) = (feat(&x, dims), feat(&j, dims));
    let g = TokenGrid::new(FeatureShape::nchw(2, 7, 6, 4), 2).unwrap();
    let t = g.tokens();
    let (mut rms, mut caps, mut jt, mut st) = (vec![0f32; t], vec![0f32; t], vec![0f32; t], vec![0f32; t]);
    // SAFETY: live buffers of the documented sizes (see the module doc).
    unsafe {
        assert_eq!(fj_token_rms(c, &fx, 2, rms.as_mut_ptr(), t as u64, null_mut()), FJ_OK, "{}", err());
        assert_eq!(fj_caps_from_rms(c, rms.as_ptr(), t as u64, 2.0, caps.as_mut_ptr(), null_mut()), FJ_OK, "{}", err());
        assert_eq!(fj_token_tolerance(c, &fj, 2, FJ_MEAN, jt.as_mut_ptr(), t as u64, null_mut()), FJ_OK, "{}", err());
        for budget in [0.05, 0.5, 1e3] {
            assert_eq!(
                fj_allocate_steps_capped(c, jt.as_ptr(), caps.as_ptr(), t as u64, budget, st.as_mut_ptr(), null_mut()),
                FJ_OK,
                "{}",
                err()
            );
            let want_caps = steps::caps_from_rms(&cpu::token_rms(&x, &g).unwrap(), 2.0).unwrap();
            assert_eq!(caps, want_caps);
            assert_eq!(st, steps::allocate_capped(&jt, &want_caps, budget).unwrap(), "D={budget}");
        }
    }
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}

#[test]
fn capped_allocation_refuses_bad_arguments() {
    let c = ctx(0);
    let mut x = data(64, 13);
    let fx = feat(&x, [1, 4, 4, 4]);
    let jt = vec![1.0f32; 16];
    let caps = vec![2.0f32; 16];
    let mut out = vec![7.0f32; 16];
    // SAFETY: live buffers of the documented sizes (see the module doc); the overlapping and null
    // ones are refused before any access.
    unsafe {
        // Token RMS: sizes, nulls, a CUDA stream on a CPU context.
        assert_eq!(fj_token_rms(c, &fx, 1, out.as_mut_ptr(), 15, null_mut()), FJ_ERR_SHAPE);
        assert_eq!(fj_token_rms(c, &fx, 1, null_mut(), 16, null_mut()), FJ_ERR_NULL);
        assert_eq!(fj_token_rms(c, &fx, 1, out.as_mut_ptr(), 16, 8 as *mut _), FJ_ERR_ARG);
        assert_eq!(fj_token_rms(c, &fx, 1, x.as_mut_ptr(), 16, null_mut()), FJ_ERR_ARG);
        assert!(err().contains("overlaps"), "{}", err());
        // A non-finite x names its first index.
        x[37] = f32::NAN;
        x[50] = f32::INFINITY;
        let fx = feat(&x, [1, 4, 4, 4]);
        assert_eq!(fj_token_rms(c, &fx, 1, out.as_mut_ptr(), 16, null_mut()), FJ_ERR_NONFINITE);
        assert!(err().contains("37"), "{}", err());
        // Caps: kappa, a zero feature, sizes.
        let zeros = [0.0f32; 16];
        assert_eq!(fj_caps_from_rms(c, caps.as_ptr(), 16, 0.0, out.as_mut_ptr(), null_mut()), FJ_ERR_ARG);
        assert_eq!(fj_caps_from_rms(c, caps.as_ptr(), 16, f32::NAN, out.as_mut_ptr(), null_mut()), FJ_ERR_ARG);
        assert_eq!(fj_caps_from_rms(c, zeros.as_ptr(), 16, 2.0, out.as_mut_ptr(), null_mut()), FJ_ERR_ARG);
        assert!(err().contains("zero"), "{}", err());
        assert_eq!(fj_caps_from_rms(c, caps.as_ptr(), 0, 2.0, out.as_mut_ptr(), null_mut()), FJ_ERR_SHAPE);
        // Steps: budget, bad j_t, bad caps, overlap, nulls, misalignment.
        assert!(out.iter().all(|&v| v == 7.0), "a refused call wrote its output");
        assert_eq!(fj_allocate_steps_capped(c, jt.as_ptr(), caps.as_ptr(), 16, -1.0, out.as_mut_ptr(), null_mut()), FJ_ERR_BUDGET);
        let mut bad_j = jt.clone();
        bad_j[9] = 0.0;
        assert_eq!(fj_allocate_steps_capped(c, bad_j.as_ptr(), caps.as_ptr(), 16, 0.1, out.as_mut_ptr(), null_mut()), FJ_ERR_JND);
        let mut bad_c = caps.clone();
        bad_c[4] = f32::INFINITY;
        assert_eq!(fj_allocate_steps_capped(c, jt.as_ptr(), bad_c.as_ptr(), 16, 0.1, out.as_mut_ptr(), null_mut()), FJ_ERR_ARG);
        assert!(err().contains("c[4]"), "{}", err());
        assert!(out.iter().all(|&v| v == 7.0), "a refused call wrote its output");
        let mut both = [1.0f32; 32];
        let p = both.as_mut_ptr();
        assert_eq!(fj_allocate_steps_capped(c, p, caps.as_ptr(), 16, 0.1, p.add(8), null_mut()), FJ_ERR_ARG);
        assert!(err().contains("overlaps"), "{}", err());
        assert_eq!(fj_allocate_steps_capped(c, jt.as_ptr(), null(), 16, 0.1, out.as_mut_ptr(), null_mut()), FJ_ERR_NULL);
        // One byte into a 4-aligned array: misaligned for f32 (refused before any read).
        let mis = (caps.as_ptr() as *const u8).add(1) as *const f32;
        assert_eq!(fj_allocate_steps_capped(c, mis, caps.as_ptr(), 16, 0.1, out.as_mut_ptr(), null_mut()), FJ_ERR_ALIGN);
        assert_eq!(fj_allocate_steps_capped(c, jt.as_ptr(), caps.as_ptr(), 16, 0.1, out.as_mut_ptr(), 8 as *mut _), FJ_ERR_ARG);
        assert_eq!(fj_allocate_steps_capped(c, jt.as_ptr(), caps.as_ptr(), 16, 0.1, out.as_mut_ptr(), null_mut()), FJ_OK, "{}", err());
    }
    // SAFETY: a live context made by `ctx`, used by no one after this.
    unsafe { fj_context_destroy(c) };
}
