//! Generates the Rust kernel-parameter structs from kernels/featjnd_params.h (bindgen), so each
//! struct exists exactly once, and (with the `torch` feature) sets an rpath to libtorch so tests and
//! benches run without LD_LIBRARY_PATH.
use std::{env, path::PathBuf};

fn main() {
    let header = "kernels/featjnd_params.h";
    println!("cargo:rerun-if-changed={header}");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_type("Fj.*")
        .allowlist_var("FJ_.*")
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(true)
        .generate()
        .expect("bindgen failed on kernels/featjnd_params.h (is libclang-dev installed? run scripts/setup.sh)");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("params.rs");
    bindings.write_to_file(out).expect("writing params.rs");

    // Only with the `torch` feature do this crate's tests and benches link libtorch; the lean
    // build (and the C ABI built on it) gets no rpath into a libtorch it does not use.
    if env::var_os("CARGO_FEATURE_TORCH").is_some() {
        rpath_to_libtorch();
    }
}

/// An rpath to the pinned libtorch (`$LIBTORCH/lib`, set by `.cargo/config.toml`), so tests and
/// benches run without LD_LIBRARY_PATH.
fn rpath_to_libtorch() {
    if let Ok(lt) = env::var("LIBTORCH") {
        let lib = PathBuf::from(lt).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
