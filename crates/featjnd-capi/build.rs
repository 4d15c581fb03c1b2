//! Only with the `torch-tests` feature: an rpath to the pinned libtorch (`$LIBTORCH/lib`, which
//! `.cargo/config.toml` points at `.deps/torch`) for this crate's test binaries, so tests/gpu.rs
//! loads the libtorch it was linked against and not another one the system may have (Debian's
//! python3-torch puts libtorch_cpu.so 1.13 into the default library path). The libraries
//! themselves (libfeatjnd.so / .a) never get an rpath and never link libtorch.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if env::var_os("CARGO_FEATURE_TORCH_TESTS").is_none() {
        return;
    }
    if let Ok(lt) = env::var("LIBTORCH") {
        let lib = PathBuf::from(lt).join("lib");
        let lib = lib.canonicalize().unwrap_or(lib);
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{}", lib.display());
    }
}
