//! Generates the Rust kernel-parameter structs from kernels/featjnd_params.h (bindgen), so each
//! struct exists exactly once, and sets an rpath to libtorch so binaries run without LD_LIBRARY_PATH.
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

    if let Ok(lt) = env::var("LIBTORCH") {
        let lib = PathBuf::from(lt).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
