//! An rpath to the pinned libtorch (`$LIBTORCH/lib`, which `.cargo/config.toml` points at
//! `.deps/torch`), so the `featjnd` binary, tests and examples run without LD_LIBRARY_PATH. This
//! crate links libtorch through tch; the kernel library's lean build and the C ABI do not.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(lt) = env::var("LIBTORCH") {
        let lib = PathBuf::from(lt).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
